"""The `otel-budget` command line. Each command lives in its own module with a
`register(subparsers)` function; errors print one line and exit 2."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from . import ledger
from .config import BudgetConfig
from .errors import BudgetError, ConfigError
from .stores.base import PatchStore, open_store
from .stores.sqlite import sqlite_path

_COMMAND_MODULES: tuple[str, ...] = (
    "otel_budget.cli_demo",
    "otel_budget.cli_bench",
    "otel_budget.cli_report",
    "otel_budget.cli_prices",
    "otel_budget.cli_serve",
    "otel_budget.cli_migrate",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.func(args)
    except BudgetError as exc:
        print(f"otel-budget {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `otel-budget status | head`
        sys.stderr.close()
        return 0
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otel-budget", description="Keep LLM spend honest: a daily budget on OpenTelemetry."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _register_status(subparsers)
    for module_name in _COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


# --- status -------------------------------------------------------------------------

def _register_status(subparsers: Any) -> None:
    p = subparsers.add_parser("status", help="show a day's budget document from any store")
    p.add_argument("--store", help="store URL (default: $OTEL_BUDGET_STORE or sqlite:///otel_budget.db)")
    p.add_argument("--date", help="YYYY-MM-DD (default: today in --timezone)")
    p.add_argument("--timezone", help="IANA zone for 'today' (default: $OTEL_BUDGET_TIMEZONE or UTC)")
    p.add_argument("--ratios", help="alert ratios to look up, e.g. 0.8,0.95 (default: configured)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_status)


def open_existing_store(url: str) -> PatchStore:
    """Open a store for reading without creating an empty SQLite file by mistake."""
    if url.startswith("sqlite:"):
        path = Path(sqlite_path(url))
        if not path.exists():
            raise ConfigError(f"no SQLite store at {str(path)!r}")
    return open_store(url)


def _cmd_status(args: argparse.Namespace) -> int:
    env = os.environ
    url = args.store or env.get("OTEL_BUDGET_STORE") or BudgetConfig.__dataclass_fields__[
        "store_url"].default
    tz_name = args.timezone or env.get("OTEL_BUDGET_TIMEZONE") or "UTC"
    ratios_raw = args.ratios or env.get("OTEL_BUDGET_ALERT_RATIOS") or "0.8"
    # Validate through BudgetConfig so status and the meter agree on what is valid.
    config = BudgetConfig(
        daily_cap_usd=1.0, timezone=tz_name, store_url=str(url),
        alert_ratios=tuple(_parse_ratios(ratios_raw)),
    )
    if args.date:
        try:
            day = date.fromisoformat(args.date)
        except ValueError:
            raise ConfigError(f"--date must be YYYY-MM-DD, got {args.date!r}") from None
    else:
        day = ledger.day_of(datetime.now(timezone.utc), config.tzinfo)
    store = open_existing_store(config.store_url)
    try:
        report = status_report(store, day, config.alert_ratios)
    finally:
        store.close()
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(format_status(report))
    return 0


def _parse_ratios(raw: str) -> list[float]:
    try:
        return [float(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"ratios must be comma-separated numbers, got {raw!r}") from None


def status_report(store: PatchStore, day: date, ratios: Sequence[float]) -> dict[str, Any]:
    name = ledger.budget_name(day)
    doc = store.get(ledger.BUDGET_TYPE, name)
    if doc is not None:
        ledger.validate_budget_document(doc, name=name)
    nudges = []
    for ratio in ratios:
        nudge = store.get(ledger.NUDGE_TYPE, ledger.nudge_name(day, ratio))
        if nudge is not None:
            nudges.append(nudge)
    doc = doc or {}
    total = ledger.document_total(doc)
    cap = doc.get("daily_cap_usd")
    instances = doc.get("instances", {})
    by_attributes: dict[ledger.AttributesKey, float] = {}
    for entry in instances.values():
        by_attributes = ledger.add_maps(
            by_attributes, ledger.by_attributes_to_map(entry.get("by_attributes", []))
        )
    return {
        "date": day.isoformat(),
        "document": name,
        "found": bool(doc),
        "total_usd": total,
        "daily_cap_usd": cap,
        "utilization": ledger.utilization(total, cap) if cap else None,
        "instances": {
            key: {"spend_usd": e["spend_usd"], "seq": e["seq"], "updated_at": e.get("updated_at")}
            for key, e in sorted(instances.items())
        },
        "by_attributes": ledger.map_to_by_attributes(by_attributes),
        "nudges": nudges,
    }


def format_status(report: dict[str, Any]) -> str:
    if not report["found"]:
        return f"{report['date']}: no budget document ({report['document']}) yet"
    cap = report["daily_cap_usd"]
    lines = [
        f"{report['date']}: ${report['total_usd']:.6f} of ${cap:.2f} "
        f"({report['utilization'] * 100:.1f}%)" if cap else
        f"{report['date']}: ${report['total_usd']:.6f} (no cap recorded)",
        "instances:",
    ]
    for key, entry in report["instances"].items():
        lines.append(f"  {key:<32} ${entry['spend_usd']:>14.6f}  seq {entry['seq']}")
    lines.append("by attributes:")
    for row in report["by_attributes"][:20]:
        attrs = ", ".join(f"{k}={v}" for k, v in sorted(row["attributes"].items())) or "(none)"
        lines.append(f"  ${row['spend_usd']:>14.6f}  {attrs}")
    if len(report["by_attributes"]) > 20:
        lines.append(f"  ... {len(report['by_attributes']) - 20} more (use --json)")
    if report["nudges"]:
        for nudge in report["nudges"]:
            lines.append(
                f"nudge: {format(round(nudge['ratio'] * 100, 2), 'g')}% -> {nudge['to']} "
                f"by {nudge['instance_id']} at {nudge['created_at']}"
            )
    else:
        lines.append("nudges: none")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
