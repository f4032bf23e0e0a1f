"""Reading the Grafana dashboard's queries, shared by the structural test and the
end-to-end Prometheus test (which runs every one of them)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from tests.support.paths import ROOT

DASHBOARD = ROOT / "dashboards" / "otel-budget.json"


@dataclass(frozen=True)
class PanelQuery:
    panel_id: int
    panel_title: str
    panel_type: str
    unit: str
    ref_id: str
    expr: str
    instant: bool


def load_dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        # A collapsed row keeps its panels inside it.
        yield from panel.get("panels", [])


def panel_queries(dashboard: Mapping[str, Any]) -> list[PanelQuery]:
    queries = []
    for panel in iter_panels(dashboard):
        if panel["type"] == "row":
            continue
        for target in panel.get("targets", []):
            queries.append(PanelQuery(
                panel_id=panel["id"],
                panel_title=panel["title"],
                panel_type=panel["type"],
                unit=panel["fieldConfig"]["defaults"].get("unit", ""),
                ref_id=target["refId"],
                expr=target["expr"],
                instant=bool(target.get("instant")),
            ))
    return queries


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """Replace $var / ${var} as Grafana would; an unknown variable is an error."""
    def repl(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise KeyError(f"no value for dashboard variable ${name} in {expr!r}")
        return variables[name]
    return _VARIABLE.sub(repl, expr)


def template_variables(dashboard: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}
