"""A real gunicorn with 4 sync workers, all labelled `service.instance.id=pod-7`.

The app (tests/support/apps/budget_wsgi.py) builds its meter with `otel_budget.from_env()`
at import. Without `--preload` each worker imports it after the fork; with
`--preload` the master imports it, starts the meter and records $0.50 before
forking, so every worker must become a writer of its own (the meter's fork hook),
run its own timer, and the master's $0.50 must be stored exactly once.

Each response names the writer that recorded it, so the test knows what every
writer must have stored; after a graceful stop (SIGTERM to the master) the stored
day must hold exactly that, writer by writer.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support.apps.procs import PYTHON, ROOT, child_env, ensure_stopped
from tests.support.helpers import stored_day
from tests.support.pg_server import free_port

pytestmark = pytest.mark.slow

WORKERS = 4
REQUESTS = 200
PREFORK_USD = 0.5


def _amount(i: int) -> float:
    return 0.0105 * (i % 3 + 1)


def _get(url: str, timeout: float = 10.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        payload: dict[str, Any] = json.loads(response.read())
        return payload


def _wait_listening(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"gunicorn exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            _get(base + "/health", timeout=2)
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"gunicorn did not answer within 30 s:\n{log.read_text()[-3000:]}")


def _run_gunicorn(tmp_path: Path, store_url: str, *, preload: bool,
                  request: pytest.FixtureRequest) -> tuple[list[dict[str, Any]], float, str]:
    """Start gunicorn, drive REQUESTS requests from 8 threads, stop it gracefully.
    Returns (the responses, the amount recorded, the master's log)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = child_env({
        "OTEL_RESOURCE_ATTRIBUTES": "service.instance.id=pod-7,deployment.environment=test",
        "OTEL_BUDGET_STORE": store_url,
        "OTEL_BUDGET_DAILY_CAP_USD": "1000",
        "OTEL_BUDGET_COLLECT_INTERVAL_S": "1",
        "OTEL_BUDGET_CHECKPOINT_EVERY": "2",
        "OTEL_BUDGET_SPOOL_DIR": str(tmp_path / "spool"),
        "APP_PREFORK_USD": str(PREFORK_USD) if preload else "0",
        "APP_REQUEST_SLEEP_S": "0.02",
    })
    log = tmp_path / "gunicorn.log"
    cmd = [PYTHON, "-m", "gunicorn", "-w", str(WORKERS), "-k", "sync", "-b", f"127.0.0.1:{port}",
           "--graceful-timeout", "20", "--timeout", "30", "--log-file", str(log),
           "--log-level", "info"]
    if preload:
        cmd.append("--preload")
    cmd.append("tests.support.apps.budget_wsgi:app")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    request.addfinalizer(lambda: ensure_stopped(proc, grace_s=25, group=True))
    _wait_listening(base, proc, log)

    def spend(i: int) -> dict[str, Any]:
        reply = _get(f"{base}/spend?usd={_amount(i)!r}")
        reply["usd"] = _amount(i)
        return reply

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(spend, range(REQUESTS)))
    # Every worker runs its own timer: its collections advance with no call from us.
    timers: dict[int, bool] = {}
    deadline = time.monotonic() + 20
    while not (len(timers) == WORKERS and all(timers.values())) and time.monotonic() < deadline:
        with ThreadPoolExecutor(8) as pool:
            for health in pool.map(lambda _: _get(base + "/health"), range(16)):
                timers[health["pid"]] = health["timer_running"] and health["collections"] >= 2
        time.sleep(0.2)
    assert len(timers) == WORKERS and all(timers.values()), timers

    proc.send_signal(signal.SIGTERM)  # graceful: workers finish, exit, atexit shuts meters down
    try:
        returncode = proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        pytest.fail(f"gunicorn did not stop within 40 s:\n{log.read_text()[-3000:]}")
    text = log.read_text()
    assert returncode == 0, text[-3000:]
    return replies, sum(r["usd"] for r in replies), text


def _check_stored(store_url: str, replies: list[dict[str, Any]], *, preload: bool,
                  log: str) -> None:
    day, entries = stored_day(store_url)
    expected_by_writer: Counter[str] = Counter()
    for reply in replies:
        expected_by_writer[reply["writer_id"]] += round(reply["usd"] * 1e9)
    expected_total = sum(expected_by_writer.values()) / 1e9 + (PREFORK_USD if preload else 0.0)

    assert abs(day["total_usd"] - expected_total) <= 1e-9, (day["total_usd"], expected_total, log[-2000:])
    assert set(day["instances"]) == {"pod-7"}, day["instances"]
    pod = day["instances"]["pod-7"]
    assert pod["writers"] >= WORKERS + (1 if preload else 0)
    assert abs(pod["spend_usd"] - expected_total) <= 1e-9

    stored = {e["writer_id"]: e for e in entries}
    assert len(stored) == len(entries), "one row per writer"
    served_by = {r["writer_id"] for r in replies}
    assert len(served_by) >= 2, "8 concurrent clients were all served by one worker"
    assert len({r["pid"] for r in replies}) == len(served_by), "one writer per worker process"
    for writer, nanos in expected_by_writer.items():
        assert writer in stored, f"worker writer {writer} has no stored row"
        assert abs(stored[writer]["spend_usd"] - nanos / 1e9) <= 1e-9, (writer, stored[writer])
    others = [e for w, e in stored.items() if w not in expected_by_writer]
    if preload:
        # The master's writer holds the import-time spend, and nobody else holds it.
        masters = [e for e in others if e["spend_usd"] > 0]
        assert [e["spend_usd"] for e in masters] == [PREFORK_USD], others
        imported_in = {r["imported_in"] for r in replies}
        assert len(imported_in) == 1 and imported_in.isdisjoint(r["pid"] for r in replies)
    else:
        assert all(e["spend_usd"] == 0.0 for e in others), others
        assert all(r["imported_in"] == r["pid"] for r in replies)


@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_gunicorn_workers_on_sqlite_store_every_request_once(
    tmp_path: Path, preload: bool, request: pytest.FixtureRequest
) -> None:
    store_url = f"sqlite:///{tmp_path / 'budget.db'}"
    replies, _, log = _run_gunicorn(tmp_path, store_url, preload=preload, request=request)
    _check_stored(store_url, replies, preload=preload, log=log)


def test_gunicorn_preload_on_postgresql(tmp_path: Path, pg_clean: str,
                                        request: pytest.FixtureRequest) -> None:
    replies, _, log = _run_gunicorn(tmp_path, pg_clean, preload=True, request=request)
    _check_stored(pg_clean, replies, preload=True, log=log)
