"""One place for the row layout (otel_budget/stores/layout.py): no other module of the
package spells a row type, and the SQL of schema.sql names only types it defines."""

from __future__ import annotations

import ast
import re
from datetime import date
from pathlib import Path

import pytest

from otel_budget import ledger
from otel_budget.stores import entries, layout, legacy

PACKAGE = Path(layout.__file__).resolve().parent.parent
#: The row types specific enough to find in code (LEGACY_TYPE, "budget", is not).
SPELLED = (layout.WRITER_TYPE, layout.SUMMARY_TYPE, layout.NUDGE_TYPE, layout.LEASE_TYPE,
           layout.SHARE_TYPE, layout.FIGURES_TYPE)


def _strings(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_no_module_but_layout_spells_a_row_type() -> None:
    pattern = re.compile("|".join(rf"(^{t}$)|('{t}')" for t in SPELLED))
    found = [f"{path.relative_to(PACKAGE)}:{line}: {text.strip()[:80]!r}"
             for path in sorted(PACKAGE.rglob("*.py")) if path.name != "layout.py"
             for line, text in _strings(path) if pattern.search(text)]
    assert found == [], "row types spelled outside stores/layout.py:\n" + "\n".join(found)


def test_the_check_above_finds_a_spelled_type(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('X = "sibling_nudge"\nQ = "where patch_type = \'budget_writer\'"\n')
    assert [text for _, text in _strings(sample)
            if any(text == t or f"'{t}'" in text for t in SPELLED)] == [
        "sibling_nudge", "where patch_type = 'budget_writer'"]


def test_schema_sql_names_only_the_layouts_row_types() -> None:
    sql = (PACKAGE / "stores" / "schema.sql").read_text(encoding="utf-8")
    named = set(re.findall(r"patch_type\s*(?:=|<>)\s*'([a-z_]+)'", sql))
    known = {layout.WRITER_TYPE, layout.SUMMARY_TYPE, layout.LEGACY_TYPE, layout.NUDGE_TYPE,
             layout.LEASE_TYPE, layout.SHARE_TYPE, layout.FIGURES_TYPE}
    assert named and named <= known, named - known


@pytest.mark.parametrize(("ratio", "pct"), [(0.8, "80"), (0.825, "82.5"), (1.0, "100")])
def test_row_names(ratio: float, pct: str) -> None:
    assert layout.writer_row_name("2026-11-25", "w") == "budget_2026-11-25/w"
    assert layout.summary_row_name("2026-11-25") == "budget_2026-11-25"
    assert legacy.document_name(date(2026, 11, 25)) == "budget_2026-11-25"
    assert layout.lease_row_name("team", "2026-W48") == "lease_team_2026-W48"
    assert layout.share_row_name("2026-11-25", "k") == "share_2026-11-25_k"
    assert layout.figures_row_name("2026-11-25", "w", "k") == "figures_2026-11-25/w/k"
    assert layout.nudge_row_name("daily", "2026-11-25", ratio) == f"budget_alert_2026-11-25_{pct}"
    assert layout.nudge_row_name("team", "2026-W48", ratio) == f"budget_alert_team_2026-W48_{pct}"


def test_the_old_names_still_import() -> None:
    """Callers import the row names from entries too; the ledger holds no row names
    (it is budget arithmetic, and imports nothing of the stores)."""
    assert entries.WRITER_TYPE == layout.WRITER_TYPE
    assert entries.SUMMARY_TYPE == layout.SUMMARY_TYPE
    assert entries.LEGACY_TYPE == layout.LEGACY_TYPE
    assert entries.writer_row_name is layout.writer_row_name
    assert not hasattr(ledger, "NUDGE_TYPE") and not hasattr(ledger, "budget_name")
    assert "stores" not in Path(ledger.__file__).read_text()
