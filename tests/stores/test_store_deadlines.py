"""Every store wait has a deadline, even against a hung server.

A SIGSTOPped PostgreSQL (`PgServer.frozen()`) still accepts TCP connections and
acknowledges data in the kernel, so neither the server's statement_timeout nor TCP
keepalives ever fire: only the client's own deadline ends the wait. Each call must
fail with StoreError, and within a loose multiple of the configured timeouts (a
correctness bound: without the deadline these calls block for minutes). The
server is always resumed in the fixture's cleanup, even when an assertion fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_budget import BudgetConfig, BudgetMeter
from otel_budget.errors import StoreError
from otel_budget.stores.postgres import PostgresStore
from tests.support.pg_server import PgServer

DAY = "2026-11-25"
# pool wait + one round trip: the most one store call may take.
POOL_S, IO_S = 1.0, 1.0
BOUND_S = 3 * (POOL_S + IO_S)


def _store(url: str) -> PostgresStore:
    return PostgresStore(url, pool_timeout_s=POOL_S, io_timeout_s=IO_S, statement_timeout_ms=500,
                         connect_timeout_s=2, reconnect_timeout_s=1.0)


def _entry(seq: int, spend: float) -> dict[str, Any]:
    return {"date": DAY, "writer_id": "w1", "instance_id": "i1", "spend_usd": spend,
            "seq": seq, "updated_at": f"{DAY}T10:00:00+00:00"}


@pytest.fixture
def hung_db(private_pg_server: PgServer) -> Iterator[tuple[PgServer, str]]:
    url = private_pg_server.create_database("deadlines", migrate=True)
    yield private_pg_server, url


def _timed_failure(call: Callable[[], object]) -> float:
    started = time.monotonic()
    with pytest.raises(StoreError):
        call()
    return time.monotonic() - started


def test_every_call_on_a_hung_server_fails_within_its_deadline(
    hung_db: tuple[PgServer, str],
) -> None:
    server, url = hung_db
    store = _store(url)
    try:
        assert store.merge_writer(_entry(1, 1.0))["applied"]  # connected and warm
        calls: dict[str, Callable[[], object]] = {
            "get": lambda: store.get("budget_writer", "x"),
            "merge_writer": lambda: store.merge_writer(_entry(2, 2.0)),
            "day_totals": lambda: store.day_totals([DAY]),
            "writer_entries": lambda: store.writer_entries([DAY]),
            "nudges_on": lambda: store.nudges_on(DAY),
        }
        took: dict[str, float] = {}
        with server.frozen():
            for name, call in calls.items():
                took[name] = _timed_failure(call)
        slow = {name: s for name, s in took.items() if s > BOUND_S}
        assert slow == {}, f"calls past {BOUND_S} s on a hung server: {slow}"
        # Resumed: the store works again (broken connections were replaced).
        assert store.merge_writer(_entry(3, 3.0))["stored_seq"] == 3
    finally:
        store.close()


def test_a_store_opened_against_a_hung_server_fails_within_its_deadline(
    hung_db: tuple[PgServer, str],
) -> None:
    server, url = hung_db
    with server.frozen():
        store = _store(url)
        try:
            took = _timed_failure(lambda: store.day_totals([DAY]))
            assert took < BOUND_S
        finally:
            closing = time.monotonic()
            store.close()
            assert time.monotonic() - closing < BOUND_S + 10  # the pool's own close wait


def test_a_meter_on_a_hung_server_checkpoints_and_shuts_down_within_bounds(
    hung_db: tuple[PgServer, str], tmp_path: Path,
) -> None:
    server, url = hung_db
    store = _store(url)
    config = BudgetConfig(daily_cap_usd=100.0, instance_id="hung", checkpoint_every=1,
                          collect_interval_s=3600.0, spool_dir=str(tmp_path / "spool"))
    meter = BudgetMeter(config, store=store)
    try:
        meter.start()
        meter.record(1.0, {"agent": "a"})
        assert meter.checkpoint()
        with server.frozen():
            meter.record(2.0, {"agent": "a"})
            started = time.monotonic()
            assert meter.checkpoint(timeout=1.0) is False
            assert time.monotonic() - started < 3 * 1.0  # its own deadline
            assert meter.health()["spool"]["entries"] == 1
            started = time.monotonic()
            meter.shutdown(timeout=2.0)
            assert time.monotonic() - started < 3 * 2.0
    finally:
        meter.shutdown(timeout=1.0)
        store.close()


def test_supabase_calls_on_a_hung_api_fail_within_their_deadline() -> None:
    # A gateway that accepts connections and reads requests but never answers (what
    # a stopped API process behind a live socket looks like). Eight attempts of one
    # second each would take 8 s: the call's deadline stops the retries first.
    import socket
    import threading

    from otel_budget.stores.supabase import SupabaseStore

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    timeout_s, connect_s = 1.0, 1.0
    store = SupabaseStore(url=f"http://127.0.0.1:{listener.getsockname()[1]}",
                          key="sb_secret_hung-0123456789", timeout_s=timeout_s,
                          connect_timeout_s=connect_s, backoff_s=0.05, max_attempts=8)
    try:
        for call in (lambda: store.get("budget_writer", "x"),
                     lambda: store.merge_writer(_entry(1, 1.0))):
            took = _timed_failure(call)
            assert took < 3 * (timeout_s + connect_s), took
    finally:
        store.close()
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


def test_start_on_a_hung_server_returns_within_start_timeout(
    hung_db: tuple[PgServer, str], tmp_path: Path,
) -> None:
    server, url = hung_db
    with server.frozen():
        store = _store(url)
        config = BudgetConfig(daily_cap_usd=100.0, instance_id="hung-start", start_timeout_s=1.0,
                              collect_interval_s=3600.0, spool_dir=str(tmp_path / "spool"))
        meter = BudgetMeter(config, store=store)
        try:
            started = time.monotonic()
            meter.start()
            assert time.monotonic() - started < 3 * 1.0
            assert meter.health()["status"] == "degraded"
        finally:
            meter.shutdown(timeout=1.0)
            store.close()
