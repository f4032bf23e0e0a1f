"""The status page's data: /api/status from a meter and from a store URL, the ASGI and
WSGI apps, the fleet's /metrics of `otel-budget serve`, and the refusal record.

Real meters on a real SQLite file; the servers are the library's own health server
(stopped in `finally`/`with`), the ASGI app driven through Starlette's test client
(a real mount) and the WSGI app through wsgiref's real server."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from otel_budget import Budget, BudgetConfig, BudgetExceeded, BudgetMeter
from otel_budget.cli import main
from otel_budget.cli.serve import serve_with_fleet
from otel_budget.refusals import RefusalLog, merge_entry_counts, merge_entry_fields
from otel_budget.stores.sqlite import SQLiteStore
from otel_budget.web import StatusSource, asgi_app, wsgi_app
from otel_budget.web.app import respond
from otel_budget.web.fleet_metrics import FleetMetrics, label_name
from otel_budget.web.page import render_page
from otel_budget.web.status import top_keys
from tests.support.helpers import FakeClock

CODER = {"agent": "coder", "gen_ai.request.model": "claude-sonnet-4-5"}
REVIEWER = {"agent": "reviewer", "gen_ai.request.model": "gpt-4o"}


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _status(url: str) -> dict[str, Any]:
    code, headers, body = _get(url + "/api/status")
    assert code == 200, body
    assert headers["Content-Type"] == "application/json"
    document: dict[str, Any] = json.loads(body)
    return document


def _config(url: str, **kwargs: Any) -> BudgetConfig:
    kwargs.setdefault("budgets", (Budget("coder", 0.5, match={"agent": "coder"}, hard=True,
                                         alert_ratios=(0.5, 0.8)),
                                  Budget("weekly", 5.0, period="week")))
    return BudgetConfig(daily_cap_usd=1.0, store_url=url, collect_interval_s=3600, **kwargs)


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'budget.db'}"


@pytest.fixture
def two_meters(store_url: str) -> Iterator[tuple[BudgetMeter, BudgetMeter]]:
    a = BudgetMeter(_config(store_url, instance_id="worker-a")).start()
    b = BudgetMeter(_config(store_url, instance_id="worker-b")).start()
    try:
        yield a, b
    finally:
        a.shutdown()
        b.shutdown()


def _seed(a: BudgetMeter, b: BudgetMeter) -> None:
    a.record(0.125, CODER)
    a.record(0.25, CODER)
    b.record(0.0625, REVIEWER)
    b.record(0.03125, {"gen_ai.request.model": "gpt-4o"})
    assert a.checkpoint() and b.checkpoint()
    assert a.checkpoint()  # a merge returns the others' totals: a now sees b's spend


def test_api_status_budgets_are_the_meters_and_breakdowns_are_the_fleets(
    two_meters: tuple[BudgetMeter, BudgetMeter],
) -> None:
    a, b = two_meters
    _seed(a, b)
    with a.serve_health() as server:
        doc = _status(server.url)
    assert doc["source"] == "meter"
    want = {row["name"]: row["spend_usd"] for row in a.budgets()}
    assert {row["name"]: row["spend_usd"] for row in doc["budgets"]} == want
    assert want == {"daily": 0.46875, "coder": 0.375, "weekly": 0.46875}
    by_name = {row["name"]: row for row in doc["budgets"]}
    assert by_name["coder"]["cap_usd"] == 0.5 and by_name["coder"]["alert_ratios"] == [0.5, 0.8]
    assert by_name["coder"]["window_end"].endswith("+00:00")
    # 0.375 of 0.5 passed the 0.5 ratio: sent by the meter's collection, or pending.
    coder = by_name["coder"]
    assert 0.5 in coder["alerts_sent"] or 0.5 in coder["alerts_pending"]
    assert 0.8 not in coder["alerts_sent"] and 0.8 not in coder["alerts_pending"]
    assert doc["total_usd"] == 0.46875
    assert doc["by_model"] == [{"value": "claude-sonnet-4-5", "spend_usd": 0.375},
                               {"value": "gpt-4o", "spend_usd": 0.09375}]
    assert doc["by_agent"] == [{"value": "coder", "spend_usd": 0.375},
                               {"value": "reviewer", "spend_usd": 0.0625},
                               {"value": None, "spend_usd": 0.03125}]
    assert doc["writers"]["live"] == 2 and doc["writers"]["retired"] == 0
    assert {w["instance_id"] for w in doc["writers"]["list"]} == {"worker-a", "worker-b"}
    assert doc["health"]["status"] == "ok" and doc["errors"] == []
    assert doc["writer_id"] == a.writer_id


def test_every_worker_answers_the_same_fleet_numbers(
    two_meters: tuple[BudgetMeter, BudgetMeter],
) -> None:
    a, b = two_meters
    _seed(a, b)
    with a.serve_health() as sa, b.serve_health() as sb:
        da, db = _status(sa.url), _status(sb.url)
    for key in ("total_usd", "by_model", "by_agent", "date"):
        assert da[key] == db[key]
    assert [(r["name"], r["spend_usd"]) for r in da["budgets"]] == \
        [(r["name"], r["spend_usd"]) for r in db["budgets"]]
    assert sorted(w["writer_id"] for w in da["writers"]["list"]) == \
        sorted(w["writer_id"] for w in db["writers"]["list"])


def test_store_url_source_reads_budgets_from_rows_and_caps_from_alerts(
    two_meters: tuple[BudgetMeter, BudgetMeter], store_url: str,
) -> None:
    a, b = two_meters
    _seed(a, b)
    a.collect()  # claims the coder budget's 0.5 alert (0.375 of 0.5)
    source = StatusSource(store_url)
    try:
        doc = source.status()
    finally:
        source.close()
    assert doc["source"] == "store" and doc["health"] is None
    rows = {row["name"]: row for row in doc["budgets"]}
    assert set(rows) == {"daily", "coder", "weekly"}
    assert {n: r["spend_usd"] for n, r in rows.items()} == \
        {r["name"]: r["spend_usd"] for r in a.budgets()}
    # The alert document carries the cap and period; budgets without one have none.
    assert rows["coder"]["cap_usd"] == 0.5 and rows["coder"]["alerts_sent"] == [0.5]
    assert rows["coder"]["utilization"] == 0.75
    assert rows["daily"]["cap_usd"] is None and rows["daily"]["utilization"] is None


def test_store_url_source_with_budgets_given_sums_the_window(store_url: str) -> None:
    clock = FakeClock(datetime(2026, 11, 24, 12, tzinfo=timezone.utc))  # a Tuesday
    meter = BudgetMeter(_config(store_url), clock=clock).start()
    try:
        meter.record(1.0, CODER)
        assert meter.checkpoint()
        clock.advance(days=1)
        meter.record(0.5, REVIEWER)
        assert meter.checkpoint()
        source = StatusSource(store_url, budgets=meter.config.all_budgets, clock=clock)
        try:
            rows = {row["name"]: row for row in source.status()["budgets"]}
        finally:
            source.close()
        assert rows["weekly"]["window"] == "2026-W48"
        assert rows["weekly"]["spend_usd"] == 1.5 == meter.budgets()[2]["spend_usd"]
        assert rows["daily"]["spend_usd"] == 0.5
        assert rows["weekly"]["window_end"] == "2026-11-30T00:00:00+00:00"
    finally:
        meter.shutdown()


def test_burn_rate_projection_and_cap_hit_from_samples(store_url: str) -> None:
    clock = FakeClock(datetime(2026, 11, 24, 12, tzinfo=timezone.utc))
    meter = BudgetMeter(_config(store_url), clock=clock).start()
    source = StatusSource(store_url, budgets=meter.config.all_budgets, clock=clock,
                          cache_s=0)
    try:
        meter.record(0.1, CODER)
        assert meter.checkpoint()
        first = {r["name"]: r for r in source.status()["budgets"]}
        assert "writers" in first["daily"]["burn_basis"]
        clock.advance(minutes=30)
        meter.record(0.1, CODER)
        assert meter.checkpoint()
        daily = {r["name"]: r for r in source.status()["budgets"]}["daily"]
    finally:
        source.close()
        meter.shutdown()
    # $0.10 in 30 minutes: $0.20 an hour; 11.5 h left in the day.
    assert daily["burn_usd_per_hour"] == pytest.approx(0.2)
    assert daily["burn_basis"] == "observed by this server over the last 30 min"
    assert daily["projected_usd"] == pytest.approx(0.2 + 0.2 * 11.5)
    # $0.80 left at $0.20/h: 4 hours after 12:30.
    assert daily["cap_hit_at"] == "2026-11-24T16:30:00+00:00"


def test_refusals_from_guard_reserve_and_areserve_newest_first(
    two_meters: tuple[BudgetMeter, BudgetMeter],
) -> None:
    a, _ = two_meters
    a.record(0.45, CODER)
    with pytest.raises(BudgetExceeded):
        a.guard(0.1, CODER)
    with pytest.raises(BudgetExceeded):
        a.reserve(0.2, CODER)

    async def refused() -> None:
        async with a.areserve(2.0):
            pass

    with pytest.raises(BudgetExceeded):
        asyncio.run(refused())
    with a.serve_health() as server:
        doc = _status(server.url)
        _, _, metrics = _get(server.url + "/metrics")
    refusals = doc["refusals"]
    assert [(r["budget"], r["amount_usd"]) for r in refusals] == \
        [("daily", 2.0), ("coder", 0.2), ("coder", 0.1)]
    for item in refusals:
        assert set(item) >= {"budget", "key", "amount_usd", "at", "writer"}
        assert item["writer"] == a.writer_id and item["key"] is None
    assert [r["at"] for r in refusals] == sorted((r["at"] for r in refusals), reverse=True)
    assert doc["refusal_counts"]["coder"] == {doc["date"]: 2}
    text = metrics.decode()
    assert re.search(r'llm_budget_refusals_total\{budget="coder"[^}]*\} 2\.0', text)
    assert re.search(r'llm_budget_refusals_total\{budget="daily"[^}]*\} 1\.0', text)


def test_refusal_log_is_bounded_and_its_entry_field_round_trips() -> None:
    log = RefusalLog(writer=lambda: "w1", keep=5)
    for i in range(8):
        log.record("daily", amount_usd=0.01 * i, window="2026-11-24")
    log.record("weekly", amount_usd=1.0, window="2026-W48", key={"user": "ada"})
    assert log.totals() == {"daily": 8, "weekly": 1}
    assert len(log.recent()) == 5
    field = log.entry_field([("daily", "2026-11-24")])
    assert field["counts"] == {"daily": {"2026-11-24": 8}}
    assert all(item["budget"] == "daily" for item in field["last"])
    json.dumps(field, allow_nan=False)  # what a writer's entry stores
    other = {"counts": {"daily": {"2026-11-24": 2}}, "last": [
        {"at": "2099-01-01T00:00:00+00:00", "budget": "daily", "amount_usd": 3.0}]}
    merged = merge_entry_fields([field, None, "junk", {"last": "x"}, other,
                                 {"last": [{"budget": 1}, {"budget": "b", "at": "never"}]}],
                                writers=["w1", None, None, None, "w2", None])
    assert merged[0]["amount_usd"] == 3.0 and merged[0]["writer"] == "w2"
    assert len(merged) == 1 + len(field["last"])
    assert merge_entry_counts([field, other, {"counts": {"daily": {"x": -1}}}, 7]) == \
        {"daily": {"2026-11-24": 10}}


def test_store_source_shows_refusals_stored_in_writers_entries(store_url: str) -> None:
    today = datetime.now(timezone.utc).date().isoformat()
    with SQLiteStore(Path(store_url.removeprefix("sqlite:///"))) as store:
        for writer, at in (("w-old", "T01:00:00+00:00"), ("w-new", "T02:00:00+00:00")):
            store.merge_writer({
                "date": today, "writer_id": writer, "instance_id": "i", "spend_usd": 1.0,
                "seq": 1, "updated_at": f"{today}T02:00:00+00:00",
                "by_budget": {"daily": 1.0},
                "refusals": {"counts": {"daily": {today: 1}}, "last": [
                    {"at": today + at, "budget": "daily", "amount_usd": 0.5,
                     "key": None, "writer": writer}]},
            })
        store.merge_writer({"date": today, "writer_id": "w-odd", "instance_id": "i",
                            "spend_usd": 0.0, "seq": 1, "updated_at": today + "T00:00:00",
                            "refusals": ["not", "a", "field"]})
    app = wsgi_app(store_url)
    try:
        doc = app.source.status()
    finally:
        app.close()
    assert [r["writer"] for r in doc["refusals"]] == ["w-new", "w-old"]
    assert doc["refusal_counts"] == {"daily": {today: 2}}
    assert doc["writers"]["total"] == 3


def test_a_writers_refusals_reach_the_store_and_every_workers_page(
    two_meters: tuple[BudgetMeter, BudgetMeter],
) -> None:
    a, b = two_meters
    a.record(0.45, CODER)
    with pytest.raises(BudgetExceeded):
        a.guard(0.2, CODER)  # 'coder' (a hard $0.50 budget) would pass its cap
    day = a.day.isoformat()
    assert a.checkpoint() and b.checkpoint()
    [row] = [e for e in a.store.writer_entries([day], breakdown=True)
             if e["writer_id"] == a.writer_id]
    assert row["refusals"]["counts"] == {"coder": {day: 1}}
    [stored] = row["refusals"]["last"]
    assert stored["budget"] == "coder" and stored["amount_usd"] == 0.2
    assert stored["writer"] == a.writer_id
    [other] = [e for e in a.store.writer_entries([day], breakdown=True)
               if e["writer_id"] == b.writer_id]
    assert "refusals" not in other, "a writer without refusals stores no such key"
    # The worker that refused nothing shows the fleet's refusal (read from the store).
    doc = StatusSource(b.config.store_url, budgets=b.config.all_budgets).status()
    assert [(r["budget"], r["writer"]) for r in doc["refusals"]] == [("coder", a.writer_id)]


def test_otel_budget_status_lists_refusals(
    store_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    today = datetime.now(timezone.utc).date().isoformat()
    with SQLiteStore(Path(store_url.removeprefix("sqlite:///"))) as store:
        store.merge_writer({
            "date": today, "writer_id": "w1", "instance_id": "i", "spend_usd": 1.0, "seq": 1,
            "updated_at": f"{today}T02:00:00+00:00",
            "refusals": {"counts": {"daily": {today: 1}}, "last": [
                {"at": f"{today}T01:00:00+00:00", "budget": "daily", "amount_usd": 0.25,
                 "key": {"user": "ada"}, "writer": "w1"}]},
        })
    monkeypatch.delenv("OTEL_BUDGET_DAILY_CAP_USD", raising=False)
    assert main(["status", "--store", store_url, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["refusals"][0]["amount_usd"] == 0.25
    assert main(["status", "--store", store_url]) == 0
    text = capsys.readouterr().out
    assert "refusal: daily" in text and "user=ada" in text and "w1" in text


def test_store_failure_is_reported_not_raised(store_url: str) -> None:
    meter = BudgetMeter(_config(store_url)).start()
    try:
        meter.record(0.1, CODER)
        source = StatusSource(meter)
        meter.store.close()  # every store call now raises StoreError
        doc = source.status()
        assert any("reading today's writers failed" in e for e in doc["errors"])
        assert [r["spend_usd"] for r in doc["budgets"]] == \
            [r["spend_usd"] for r in meter.budgets()]
        code, _, body = respond(StatusSource(meter), "GET", "/")
        assert code == 200 and b"reading today" in body
    finally:
        meter.shutdown(timeout=2)


def test_page_is_self_contained_and_escapes_stored_text(
    two_meters: tuple[BudgetMeter, BudgetMeter],
) -> None:
    a, _b = two_meters
    a.record(0.01, {"agent": "</script><img src=x onerror=alert(1)>"})
    assert a.checkpoint()
    with a.serve_health() as server:
        code, headers, body = _get(server.url + "/")
    assert code == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    html = body.decode()
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    # Offline: no URL to another origin anywhere (scripts, styles, fonts, images).
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@import" not in html and "url(" not in html
    assert "prefers-color-scheme: dark" in html and 'name="viewport"' in html
    assert "</script><img" not in html and "\\u003c/script\\u003e" in html
    initial = re.search(r'<script id="initial" type="application/json">(.*?)</script>', html,
                        re.S)
    assert initial is not None
    assert json.loads(initial.group(1))["by_agent"][0]["value"].startswith("</script>")
    assert render_page(None).count(b"null") >= 1


def test_asgi_app_mounted_under_a_prefix(two_meters: tuple[BudgetMeter, BudgetMeter]) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    a, b = two_meters
    _seed(a, b)
    app = FastAPI()
    app.mount("/budget", asgi_app(a))
    with TestClient(app) as client:
        page = client.get("/budget/")
        status = client.get("/budget/api/status")
        missing = client.get("/budget/nope")
        post = client.post("/budget/api/status")
    assert page.status_code == 200 and "<title>LLM spend" in page.text
    assert status.status_code == 200
    assert [r["spend_usd"] for r in status.json()["budgets"]] == \
        [r["spend_usd"] for r in a.budgets()]
    assert missing.status_code == 404 and post.status_code == 405


def test_wsgi_app_on_a_real_server(two_meters: tuple[BudgetMeter, BudgetMeter],
                                   store_url: str) -> None:
    a, b = two_meters
    _seed(a, b)

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    app = wsgi_app(store_url)
    server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        doc = _status(url)
        code, _, body = _get(url + "/")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        app.close()
    assert code == 200 and b"api/status" in body
    assert doc["total_usd"] == 0.46875 and doc["source"] == "store"


def _fleet_samples(text: str, name: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, value = line.rsplit(" ", 1)
            out[labels[len(name):]] = float(value)
    return out


def test_serve_metrics_carry_the_fleets_spend_from_the_store(
    two_meters: tuple[BudgetMeter, BudgetMeter],
) -> None:
    a, b = two_meters
    _seed(a, b)
    b.record(0.5, REVIEWER)  # not checkpointed: not the fleet's yet
    with serve_with_fleet(a, "127.0.0.1", 0) as server:
        code, headers, body = _get(server.url + "/metrics")
        page_code = _get(server.url + "/")[0]
    assert code == 200 and page_code == 200
    assert headers["Content-Type"].startswith("text/plain; version=")
    text = body.decode()
    spend = _fleet_samples(text, "llm_fleet_spend_USD")
    assert spend == {'{budget="daily",period="day"}': 0.46875,
                     '{budget="coder",period="day"}': 0.375,
                     '{budget="weekly",period="week"}': 0.46875}
    by_attrs = _fleet_samples(text, "llm_fleet_spend_by_attributes_USD")
    assert by_attrs['{agent="coder",gen_ai_request_model="claude-sonnet-4-5"}'] == 0.375
    assert sum(by_attrs.values()) == pytest.approx(0.46875)
    assert _fleet_samples(text, "llm_fleet_writers")['{state="live"}'] == 2.0
    assert _fleet_samples(text, "llm_fleet_day_spend_USD") == {"": 0.46875}
    assert "llm_spend_USD_total" in text  # the process's own instruments stay


def test_fleet_metrics_bound_the_series_and_keep_the_total(store_url: str) -> None:
    meter = BudgetMeter(_config(store_url)).start()
    try:
        for i in range(5):
            meter.record(0.01 * (i + 1), {"agent": f"a{i}", "odd key!": i})
        assert meter.checkpoint()
        fleet = FleetMetrics(StatusSource(meter.store, budgets=meter.config.all_budgets),
                             max_series=2)
        text = fleet.render().decode()
    finally:
        meter.shutdown()
    samples = _fleet_samples(text, "llm_fleet_spend_by_attributes_USD")
    assert len(samples) == 3
    assert samples['{otel_budget_overflow="true"}'] == pytest.approx(0.06)
    assert samples['{agent="a4",odd_key_="4"}'] == 0.05
    assert label_name("gen_ai.request.model") == "gen_ai_request_model"
    assert label_name("__x") == "_x" and label_name("1a") == "_1a"


def test_writers_live_stale_and_retired(store_url: str) -> None:
    live = BudgetMeter(_config(store_url, instance_id="live")).start()
    gone = BudgetMeter(_config(store_url, instance_id="gone")).start()
    try:
        live.record(0.1, CODER)
        gone.record(0.2, REVIEWER)
        assert live.checkpoint() and gone.checkpoint()
        gone.shutdown()  # its final entry retires its row
        today = live.day.isoformat()
        with SQLiteStore(Path(store_url.removeprefix("sqlite:///"))) as store:
            store.merge_writer({"date": today, "writer_id": "silent", "instance_id": "old",
                                "spend_usd": 0.3, "seq": 1,
                                "updated_at": "2000-01-01T00:00:00+00:00"})
        writers = StatusSource(live).status()["writers"]
    finally:
        live.shutdown()
    assert (writers["live"], writers["stale"], writers["retired"]) == (1, 1, 1)
    states = {w["instance_id"]: w["state"] for w in writers["list"]}
    assert states == {"live": "live", "old": "stale", "gone": "retired"}
    assert [w["instance_id"] for w in writers["list"]] == ["live", "old", "gone"]


def test_top_keys_of_a_per_key_budget_from_the_breakdown() -> None:
    coder = Budget("coder", 1.0, match={"agent": "coder"})
    items = [
        {"attributes": {"agent": "coder", "user": "ada"}, "spend_usd": 0.25},
        {"attributes": {"agent": "coder", "user": "bob"}, "spend_usd": 0.5},
        {"attributes": {"agent": "coder", "user": "ada", "model": "x"}, "spend_usd": 0.5},
        {"attributes": {"agent": "reviewer", "user": "cy"}, "spend_usd": 9.0},  # not matched
        {"attributes": {"agent": "coder"}, "spend_usd": 2.0},  # no key
        {"attributes": {"agent": "coder", "user": ["x"]}, "spend_usd": 1.0},  # unhashable
        {"attributes": {"agent": "coder", "user": "dee"}, "spend_usd": -1},  # not an amount
    ]
    rows = top_keys(items, coder.matches, "user", coder.cap_usd)
    assert [(r["key"], r["spend_usd"], r["utilization"]) for r in rows] == [
        ({"user": "ada"}, 0.75, 0.75), ({"user": "bob"}, 0.5, 0.5)]
    pairs = top_keys(items, coder.matches, ("agent", "user"), 1.0, limit=1)
    assert pairs[0]["key"] == {"agent": "coder", "user": "ada"}
    assert pairs[0]["remaining_usd"] == 0.25 and len(pairs) == 1


@pytest.mark.slow
def test_status_and_fleet_metrics_from_a_postgresql_store(pg_clean: str) -> None:
    a = BudgetMeter(_config(pg_clean, instance_id="pg-a")).start()
    b = BudgetMeter(_config(pg_clean, instance_id="pg-b")).start()
    try:
        _seed(a, b)
        want = {row["name"]: row["spend_usd"] for row in a.budgets()}
        app = asgi_app(pg_clean, budgets=a.config.all_budgets)
        try:
            doc = app.source.status()
            text = FleetMetrics(app.source).render().decode()
        finally:
            app.close()
    finally:
        a.shutdown()
        b.shutdown()
    assert {row["name"]: row["spend_usd"] for row in doc["budgets"]} == want
    assert doc["by_model"][0] == {"value": "claude-sonnet-4-5", "spend_usd": 0.375}
    assert doc["writers"]["live"] == 2 and doc["errors"] == []
    assert _fleet_samples(text, "llm_fleet_day_spend_USD") == {"": 0.46875}
    assert "postgresql://" not in json.dumps(doc)
