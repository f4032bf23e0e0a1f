"""`otel-budget report`: the picture drawn from the store, on a real SQLite store
holding version 1 day documents and version 2 writer rows."""

from __future__ import annotations

import struct
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from otel_budget import Budget, money
from otel_budget.cli import main
from otel_budget.errors import BudgetError, ConfigError
from otel_budget.report import breakdown, load_report, render_png
from otel_budget.stores import legacy
from otel_budget.stores.sqlite import SQLiteStore

TODAY = date(2026, 11, 25)
SONNET = "claude-sonnet-4-20250514"
HAIKU = "claude-3-5-haiku-20241022"


def _entry(seq: int, items: list[tuple[dict[str, str], float]]) -> dict[str, Any]:
    return {
        "spend_usd": money.round_usd(sum(v for _, v in items)),
        "seq": seq,
        "updated_at": "2026-11-25T10:00:00+00:00",
        "by_attributes": [{"attributes": a, "spend_usd": v} for a, v in items],
    }


def _writer(day: date, writer: str, instance: str, seq: int,
            items: list[tuple[dict[str, str], float]]) -> dict[str, Any]:
    entry = _entry(seq, items)
    coder = sum(v for a, v in items if a.get("agent") == "ag_lu")
    return {**entry, "date": day.isoformat(), "writer_id": writer, "instance_id": instance,
            "by_budget": {"daily": entry["spend_usd"], "ag_lu": money.round_usd(coder)}}


def _fill(store: SQLiteStore, today: date) -> None:
    """Three weeks of history with gaps and a day over the cap, written as version 1
    day documents (what an upgraded store holds), and today written by three writers
    of two instances in version 2 rows (one of them twice, as checkpoints do)."""
    for back in range(1, 21):
        if back in (4, 5, 11):
            continue  # days nobody ran
        day = today - timedelta(days=back)
        spend = 52.5 if back == 3 else 10.0 + (back % 7) * 5.0
        entry = _entry(1, [({"gen_ai.request.model": SONNET, "agent": "cloud_lu"}, spend)])
        assert store.insert_if_absent("budget", legacy.document_name(day), {
            "date": day.isoformat(), "timezone": "UTC", "daily_cap_usd": 50.0,
            "total_usd": spend, "instances": {"host-a-1": entry}})
    store.merge_writer(_writer(today, "w1", "host-a-1", 1, [
        ({"gen_ai.request.model": SONNET, "agent": "cloud_lu"}, 10.0),
    ]))
    store.merge_writer(_writer(today, "w1", "host-a-1", 2, [
        ({"gen_ai.request.model": SONNET, "agent": "cloud_lu"}, 20.0),
        ({"gen_ai.request.model": HAIKU, "agent": "cloud_lu"}, 1.25),
    ]))
    store.merge_writer(_writer(today, "w2", "host-b-2", 7, [
        ({"gen_ai.request.model": SONNET, "agent": "ag_lu"}, 8.0),
        ({"gen_ai.request.model": HAIKU}, 0.75),
    ]))
    store.merge_writer(_writer(today, "w3", "host-b-2", 1, [({"agent": "ag_lu"}, 2.0)]))


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = SQLiteStore(tmp_path / "budget.db")
    yield s
    s.close()


def test_load_report_reads_each_day_by_name(store: SQLiteStore) -> None:
    _fill(store, TODAY)
    report = load_report(store, days=30, cap_usd=99.0, today=TODAY)
    assert len(report.days) == 30
    assert report.days[0].day == TODAY - timedelta(days=29)
    assert report.today.day == TODAY
    assert report.days_with_data == 18  # 20 past days minus 3 gaps, plus today
    by_day = {d.day: d for d in report.days}
    assert by_day[TODAY - timedelta(days=4)].spend_usd is None
    # A budget's cap is configuration, never a stored value.
    assert {d.cap_usd for d in report.days} == {99.0}
    assert by_day[TODAY - timedelta(days=3)].spend_usd == 52.5
    # Today: host-a's newest entry (seq 2) plus host-b's two writers.
    assert report.today.spend_usd == 32.0
    assert report.today.by_model == {SONNET: 28.0, HAIKU: 2.0, "(unset)": 2.0}
    assert report.today.by_agent == {"cloud_lu": 21.25, "ag_lu": 10.0, "(unset)": 0.75}
    assert report.unreadable == ()


def test_breakdown_ignores_zero_and_sums_sets() -> None:
    items = [*_entry(1, [({"agent": "x"}, 1.0), ({"agent": "y"}, 0.0)])["by_attributes"],
             *_entry(1, [({"agent": "x"}, 0.1), ({"agent": "x", "m": "1"}, 0.2)])["by_attributes"]]
    assert breakdown(items, "agent") == {"x": 1.3}
    assert breakdown([], "agent") == {}


def test_a_corrupt_document_is_skipped_and_named(store: SQLiteStore) -> None:
    _fill(store, TODAY)
    bad = legacy.document_name(TODAY - timedelta(days=4))
    assert store.insert_if_absent("budget", bad, {"instances": {"x": {"spend_usd": "lots"}}})
    report = load_report(store, days=7, today=TODAY)
    assert report.unreadable == (bad,)
    assert report.days_with_data == 5


def test_every_budget_is_drawn_against_its_cap_over_its_window(
    store: SQLiteStore, tmp_path: Path
) -> None:
    # A week budget over three days of rows, and a budget one writer's configuration
    # lacked (a rolling deploy): its spend comes from that writer's breakdown.
    monday = date(2026, 11, 23)  # ISO week 2026-W48
    for offset, writer in ((0, "w-mon"), (1, "w-tue")):
        store.merge_writer(_writer(monday + timedelta(days=offset), writer, "i", 1,
                                   [({"agent": "ag_lu"}, 3.0), ({"agent": "cloud_lu"}, 1.0)]))
    old = _writer(TODAY, "w-old", "i", 1, [({"agent": "ag_lu"}, 2.0)])
    old["by_budget"] = {"daily": 2.0}  # no 'ag_lu': its configuration predates it
    store.merge_writer(old)
    budgets = [Budget("ag_lu", 20.0, period="week", match={"agent": "ag_lu"},
                       alert_ratios=(0.5, 0.8)),
               Budget("daily", 5.0, alert_ratios=(0.8,))]
    report = load_report(store, days=7, today=TODAY, budgets=budgets)
    drawn = {b.name: b for b in report.budgets}
    assert drawn["ag_lu"].window == "2026-W48" and drawn["ag_lu"].spend_usd == 8.0
    assert drawn["ag_lu"].cap_usd == 20.0 and drawn["ag_lu"].alert_ratios == (0.5, 0.8)
    assert drawn["daily"].window == "2026-11-25" and drawn["daily"].spend_usd == 2.0
    out = render_png(report, tmp_path / "budgets.png")
    width, height = _png_size(out)
    assert width == 1210 and height > 880


def test_days_must_be_sensible(store: SQLiteStore) -> None:
    for days in (0, -1, 367, True):
        with pytest.raises(ConfigError):
            load_report(store, days=days, today=TODAY)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert data.rstrip(b"\x00")[-8:-4] == b"IEND", "truncated PNG"
    return width, height


def test_render_png_writes_a_plausible_image(store: SQLiteStore, tmp_path: Path) -> None:
    _fill(store, TODAY)
    out = render_png(load_report(store, days=30, today=TODAY), tmp_path / "r.png")
    width, height = _png_size(out)
    assert (width, height) == (1210, 880)
    # A chart with bars, lines and text, not an empty canvas.
    assert 30_000 < out.stat().st_size < 2_000_000


def test_render_png_with_an_empty_store(store: SQLiteStore, tmp_path: Path) -> None:
    out = render_png(load_report(store, days=3, today=TODAY), tmp_path / "empty.png")
    assert _png_size(out) == (1210, 880)


def test_missing_matplotlib_is_a_clear_error(
    store: SQLiteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Boundary stand-in: an environment without the optional extra installed.
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(BudgetError, match=r"otel-budget\[report\]"):
        render_png(load_report(store, days=1, today=TODAY), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_cli_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("OTEL_BUDGET_DAILY_CAP_USD", "OTEL_BUDGET_STORE", "OTEL_BUDGET_TIMEZONE",
                "OTEL_RESOURCE_ATTRIBUTES", "OTEL_BUDGET_ALERT_RATIOS"):
        monkeypatch.delenv(var, raising=False)
    db = tmp_path / "budget.db"
    s = SQLiteStore(db)
    _fill(s, datetime.now(UTC).date())
    s.close()
    out = tmp_path / "report.png"
    code = main(["report", "--png", str(out), "--days", "14", "--store", f"sqlite:///{db}",
                 "--cap", "50"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed
    assert "today $32.00 of $50.00" in printed
    # Each budget's spend today, from the writers' stored sums; the cap where the
    # configuration knows it.
    today = datetime.now(UTC).date().isoformat()
    assert f"budget daily ({today}): $32.000000 of $50.00" in printed
    assert "budget ag_lu: $10.000000 today\n" in printed, "a budget not configured here"
    width, height = _png_size(out)
    assert width == 1210 and height > 880, "a panel for the configured budget"


def test_cli_report_refuses_a_missing_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.db"
    code = main(["report", "--png", str(tmp_path / "r.png"), "--store", f"sqlite:///{missing}"])
    assert code == 2
    assert "no SQLite database" in capsys.readouterr().err
    assert not missing.exists()
