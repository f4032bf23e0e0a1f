"""The `otel-budget` command line, run for real in subprocesses: the demo end to end, then
`status` (text and JSON) against the file it wrote, errors, and `bench --json`."""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from otel_budget import read_day
from otel_budget.stores.sqlite import SQLiteStore
from tests.support.paths import ROOT

ENTRY_POINT = Path(sys.executable).parent / "otel-budget"
DEMO_STORE = "sqlite:///otel_budget_demo.db"


def run_cli(cwd: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    # This tree's code, not whatever an editable install points at.
    root = str(ROOT)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run(
        [sys.executable, "-m", "otel_budget.cli", *args], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@dataclass
class Demo:
    cwd: Path
    result: subprocess.CompletedProcess[str]
    day: str
    document: dict[str, Any]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    cwd = tmp_path_factory.mktemp("demo")
    result = run_cli(cwd, "demo", "--duration", "3", "--rate", "200", "--cap", "1.0")
    assert result.returncode == 0, (result.stdout, result.stderr)
    db = cwd / "otel_budget_demo.db"
    assert db.is_file(), "the demo defaults to a SQLite file in the working directory"
    with sqlite3.connect(db) as conn:
        days = {row[0] for row in conn.execute(
            "SELECT json_extract(content, '$.date') FROM quilt_patches "
            "WHERE patch_type = 'budget_writer'")}
    assert len(days) == 1, days
    [day] = days
    with SQLiteStore(db) as store:
        document = read_day(store, day)
    assert document["instances"]["demo-dispatcher"]["writers"] == 2, "one writer per run"
    return Demo(cwd, result, day, document)


def money(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in output:\n{text}"
    return float(match.group(1))


def test_demo_runs_end_to_end(demo: Demo) -> None:
    out = demo.result.stdout
    assert "Traceback" not in demo.result.stderr
    assert re.search(r"checkpoint (seq \d+|written)", out), out
    assert "NUDGE" in out and "ag_lu" in out
    stored_before_restart = money(r"checkpoint written at shutdown: this writer \$([0-9.]+)", out)
    second_writer = money(r"(?s)RESTART.*checkpoint written at shutdown: this writer \$([0-9.]+)",
                          out)
    day_at_end = money(r"(?s)RESTART.*checkpoint written at shutdown: .*?\(the day: \$([0-9.]+)\)",
                       out)
    restored = money(r"RESTART: restored \$([0-9.]+)", out)
    assert restored > 0
    assert restored == stored_before_restart, "the restart restores what was checkpointed"
    assert out.index("RESTART") > out.index("checkpoint written at shutdown")
    final = money(r"done: \d+ calls, \$([0-9.]+) spent", out)
    assert final >= restored
    assert day_at_end == final == pytest.approx(stored_before_restart + second_writer, abs=2e-6)
    assert final == pytest.approx(demo.document["total_usd"], abs=1e-6)
    assert "alerts today: [0.8]" in out


def test_status_json_agrees_with_the_document(demo: Demo) -> None:
    result = run_cli(demo.cwd, "status", "--store", DEMO_STORE, "--date", demo.day, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    doc = demo.document
    assert report["date"] == demo.day and report["found"] is True
    assert report["total_usd"] == doc["total_usd"]
    instance_sum = sum(e["spend_usd"] for e in report["instances"].values())
    assert math.isclose(report["total_usd"], round(instance_sum, 9), abs_tol=1e-9)
    assert report["instances"] == doc["instances"]
    attribute_sum = sum(row["spend_usd"] for row in report["by_attributes"])
    assert math.isclose(attribute_sum, report["total_usd"], abs_tol=1e-6)
    assert report["by_budget"] == {"daily": report["total_usd"]}
    [nudge] = report["nudges"]
    assert nudge["to"] == "ag_lu" and nudge["kind"] == "budget_alert"
    assert nudge["ratio"] == 0.8 and nudge["date"] == demo.day
    assert nudge["daily_spend_usd"] >= 0.8 - 1e-9


def test_status_text_through_the_console_script(demo: Demo) -> None:
    assert ENTRY_POINT.is_file(), f"console script not installed at {ENTRY_POINT}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [str(ENTRY_POINT), "status", "--store", DEMO_STORE, "--date", demo.day],
        cwd=demo.cwd, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    total = demo.document["total_usd"]
    assert f"${total:.6f}" in out
    for instance_id, entry in demo.document["instances"].items():
        assert instance_id in out and f"writers {entry['writers']}" in out
    assert "agent=" in out and "gen_ai.request.model=" in out
    assert re.search(r"nudge: daily \S+ 80% -> ag_lu", out), out


def test_status_on_a_missing_file_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "status", "--store", "sqlite:///nope.db")
    assert_one_line_error(result, "nope.db")
    assert list(tmp_path.iterdir()) == []


def test_status_on_a_corrupt_document_names_the_row(tmp_path: Path) -> None:
    db = tmp_path / "bad.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE quilt_patches (id INTEGER PRIMARY KEY, patch_type TEXT, "
                     "name TEXT, content TEXT, created_at TEXT, updated_at TEXT, "
                     "UNIQUE (patch_type, name))")
        conn.execute("INSERT INTO quilt_patches (patch_type, name, content) "
                     "VALUES ('budget', 'budget_2026-11-25', '[oops')")
    result = run_cli(tmp_path, "status", "--store", "sqlite:///bad.db", "--date", "2026-11-25")
    # Quarantined, never a traceback: the rest of the day is still reported.
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert re.search(r"quarantined.*budget_2026-11-25", result.stdout), result.stdout


def test_status_with_an_unknown_store_scheme(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "status", "--store", "mysql://u:pw-SECRET@h/db")
    line = assert_one_line_error(result, "mysql")
    assert "pw-SECRET" not in line


def test_status_with_a_two_slash_sqlite_url_explains_the_form(tmp_path: Path) -> None:
    # `sqlite://budget.db` is a common slip for `sqlite:///budget.db`; the error must
    # show the expected form, not look for a mangled file name ("udget.db").
    result = run_cli(tmp_path, "status", "--store", "sqlite://budget.db")
    line = assert_one_line_error(result, "sqlite:///")
    assert "'udget.db'" not in line


@pytest.mark.parametrize("args", [("--rate", "-1"), ("--duration", "0")])
def test_demo_with_bad_flags_is_one_clear_line(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = run_cli(tmp_path, "demo", *args)
    assert_one_line_error(result, args[0])
    assert list(tmp_path.iterdir()) == [], "nothing is written before the flags are checked"


def test_bench_outside_a_checkout_says_where_it_runs(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "bench")
    assert result.returncode == 2 and "from a checkout" in result.stderr, result.stderr


def test_bench_json(tmp_path: Path) -> None:
    # The benchmarks live in the checkout (tests/bench), run here with the work dir
    # elsewhere so what they leave behind would show.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    root = str(ROOT)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    result = subprocess.run(
        [sys.executable, "-m", "tests.bench.bench_cli", "--calls", "2000", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    for key in ("record_vs_counter_add", "collect_1000_attribute_sets_ms",
                "sqlite_checkpoint_ms", "restore_ms"):
        value = figures[key]
        assert isinstance(value, (int, float)) and not isinstance(value, bool), key
        assert math.isfinite(value) and value > 0, (key, value)
    # fleet budgets: store round trips per reservation at a $100 cap, loop lag
    assert 0 < figures["lease_round_trips_per_reservation"] <= 0.1
    assert figures["asyncio_fleet"]["loop_lag_p99_ms"] > 0
    assert list(tmp_path.iterdir()) == [], "bench cleans up after itself"


def test_status_escapes_control_characters_in_stored_text(tmp_path: Path) -> None:
    from otel_budget import BudgetConfig, BudgetMeter

    forged = "x\x1b[2K\r2026-11-25: $0.000000 spent\nby attributes:\u202e\x9b31m"
    store = SQLiteStore(tmp_path / "budget.db")
    config = BudgetConfig(daily_cap_usd=100.0, instance_id="esc\x1b[1Aid",
                          spool_dir=str(tmp_path / "spool"))
    with BudgetMeter(config, store=store) as meter:
        meter.record(1.25, {"agent": forged})
        day = meter.day.isoformat()
    store.close()
    result = run_cli(tmp_path, "status", "--store", "sqlite:///budget.db", "--date", day)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]", out), repr(out)
    assert "\\x1b[2K\\x0d2026-11-25: $0.000000 spent\\x0aby attributes:\\u202e\\x9b31m" in out
    assert "esc\\x1b[1Aid" in out
    assert sum(1 for line in out.splitlines() if line.startswith("by attributes:")) == 1
    assert json.loads(run_cli(tmp_path, "status", "--store", "sqlite:///budget.db", "--date",
                              day, "--json").stdout)["total_usd"] == 1.25
