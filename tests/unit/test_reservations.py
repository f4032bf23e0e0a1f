"""The hard cap: guard and reservations, including 32 threads racing for one cap."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest

from otel_budget.budgets import Budget
from otel_budget.errors import BudgetExceeded
from otel_budget.money import check_amount
from otel_budget.reservations import ReservationBook, would_pass_cap

EPS = 1e-9


class Ledger:
    """A stand-in for the meter's live spend: a locked running total plus a call log."""

    def __init__(self, spend: float = 0.0) -> None:
        self.spend = spend
        self.calls: list[tuple[float, dict[str, Any] | None]] = []
        self._lock = threading.Lock()

    def spend_now(self) -> float:
        with self._lock:
            return self.spend

    def record(self, usd: float, attrs: Mapping[str, Any] | None) -> None:
        with self._lock:
            self.spend += usd
            self.calls.append((usd, dict(attrs) if attrs else None))


def make_book(spend: float = 0.0, cap: float = 10.0) -> tuple[ReservationBook, Ledger]:
    ledger = Ledger(spend)
    book = ReservationBook(
        budgets=[Budget("daily", cap, hard=True)], spend_of=lambda name: ledger.spend_now(),
        window_of=lambda name: "2026-11-25", record=ledger.record,
        check_amount=lambda value, name: check_amount(value, name, 1e6),
    )
    return book, ledger


@pytest.mark.parametrize(("spend", "reserved", "estimate", "passes"), [
    (9.0, 0.0, 1.0, False),             # landing exactly on the cap is allowed
    (9.0, 0.0, 1.0 + 0.5e-9, False),    # within the 1e-9 tolerance
    (9.0, 0.0, 1.0 + 2e-9, True),       # beyond it
    (5.0, 4.0, 1.5, True),              # reservations count
    (0.1 + 0.2, 0.0, 9.7, False),       # float drift does not trip the cap
    (25.0, 0.0, 0.0, False),            # zero cost always passes, even far over the cap
])
def test_would_pass_cap(spend: float, reserved: float, estimate: float, passes: bool) -> None:
    assert would_pass_cap(spend, reserved, estimate, 10.0) is passes


def test_guard_raises_at_the_cap_and_not_before() -> None:
    book, _ = make_book(spend=7.5)
    book.guard(2.5)  # exactly on the cap
    book.guard()
    with pytest.raises(BudgetExceeded) as info:
        book.guard(2.51)
    err = info.value
    assert (err.date, err.daily_spend_usd, err.reserved_usd, err.estimated_usd,
            err.daily_cap_usd) == ("2026-11-25", 7.5, 0.0, 2.51, 10.0)
    assert err.exceeded_by_usd == 0.01
    assert "2026-11-25" in str(err)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "1", True, None])
def test_bad_amounts_are_rejected_and_change_nothing(bad: object) -> None:
    book, ledger = make_book()
    with pytest.raises(ValueError):
        book.guard(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        book.reserve(bad)  # type: ignore[arg-type]
    assert book.held_usd() == 0.0 and ledger.calls == []


def test_reservations_count_against_the_cap_until_settled() -> None:
    book, ledger = make_book(spend=2.0)
    r = book.reserve(6.0, {"agent": "cloud_lu"})
    assert book.held_usd() == 6.0
    book.guard(2.0)
    with pytest.raises(BudgetExceeded) as info:
        book.reserve(2.5)
    assert info.value.reserved_usd == 6.0
    assert r.settle(1.25) == 1.25
    assert book.held_usd() == 0.0 and book.open_reservations() == 0
    assert ledger.calls == [(1.25, {"agent": "cloud_lu"})]
    book.reserve(6.75).cancel()  # 2 + 1.25 + 6.75 lands on the cap
    assert ledger.spend == 3.25


def test_unsettled_reservation_records_its_maximum_on_exit() -> None:
    book, ledger = make_book()
    with book.reserve(0.5) as r:
        pass
    assert r.closed and r.settled_usd == 0.5
    assert ledger.calls == [(0.5, None)]


def test_exception_inside_the_block_still_records_the_maximum_marked_unsettled() -> None:
    book, ledger = make_book()
    with pytest.raises(RuntimeError, match="provider timed out"), book.reserve(0.75):
        raise RuntimeError("provider timed out")
    assert ledger.calls == [(0.75, {"otel_budget.settlement": "unsettled"})]
    assert book.held_usd() == 0.0


def test_cancelled_reservation_records_nothing() -> None:
    book, ledger = make_book()
    with book.reserve(3.0) as r:
        r.cancel()
    assert ledger.calls == [] and book.held_usd() == 0.0


def test_settle_records_the_actual_cost_even_above_the_hold() -> None:
    book, ledger = make_book()
    with book.reserve(1.0) as r:
        r.settle(1.5, {"model": "x"})
    assert ledger.calls == [(1.5, {"model": "x"})]


def test_a_reservation_closes_once() -> None:
    book, ledger = make_book()
    r = book.reserve(1.0)
    with pytest.raises(ValueError):
        r.settle(-1.0)
    assert book.open_reservations() == 1  # a bad settle leaves it open
    r.settle(0.5)
    with pytest.raises(RuntimeError):
        r.settle(0.5)
    with pytest.raises(RuntimeError):
        r.cancel()
    r.close()  # already settled: nothing more is recorded
    assert ledger.calls == [(0.5, None)]


def test_zero_cost_calls_pass_the_cap() -> None:
    book, ledger = make_book(spend=12.0)
    book.guard(0.0)
    with book.reserve(0.0) as r:
        r.settle(0.0)
    with pytest.raises(BudgetExceeded):
        book.guard(0.01)
    assert ledger.spend == 12.0


def test_only_the_hard_budgets_covering_the_attributes_are_checked() -> None:
    spend = {"opus": 4.9, "daily": 4.9, "soft": 100.0}
    calls: list[tuple[float, Any]] = []
    book = ReservationBook(
        budgets=[Budget("daily", 50.0, hard=True),
                 Budget("opus", 5.0, match={"model": ["opus", "opus-4"]}, hard=True),
                 Budget("soft", 1.0)],
        spend_of=spend.__getitem__, window_of=lambda name: "2026-11-25",
        record=lambda usd, attrs: calls.append((usd, attrs)),
        check_amount=lambda value, name: check_amount(value, name, 1e6))
    with pytest.raises(BudgetExceeded) as info:
        book.reserve(0.2, {"model": "opus"})
    assert info.value.budget == "opus" and info.value.window == "2026-11-25"
    assert info.value.cap_usd == 5.0 and info.value.spend_usd == 4.9
    with book.reserve(0.2, {"model": "haiku"}) as r:  # the opus cap does not apply
        r.settle(0.1)
    book.guard(0.2)  # no attributes: only budgets that match every call ("daily")
    with book.reserve(0.1, {"model": "opus-4"}):
        assert book.held_usd("opus") == 0.1 and book.held_usd("daily") == 0.1
        with pytest.raises(BudgetExceeded):
            book.guard(0.05, {"model": "opus"})
    assert calls == [(0.1, {"model": "haiku"}), (0.1, {"model": "opus-4"})]
    assert book.held_usd() == 0.0


def test_32_threads_never_hold_or_record_more_than_the_cap() -> None:
    cap = 10.0
    ledger = Ledger()
    yielding_spend = ledger.spend_now

    def slow_spend_now() -> float:
        value = yielding_spend()
        time.sleep(0)  # hand the GIL over between the read and the hold
        return value

    book = ReservationBook(
        budgets=[Budget("daily", cap, hard=True)], spend_of=lambda name: slow_spend_now(),
        window_of=lambda name: "2026-11-25", record=ledger.record,
        check_amount=lambda value, name: check_amount(value, name, 1e6))
    start = threading.Barrier(33)
    stop = threading.Event()
    granted = [0]
    refused = [0]
    peaks: list[float] = []
    errors: list[BaseException] = []
    count_lock = threading.Lock()

    def caller(seed: int) -> None:
        rng = random.Random(seed)
        try:
            start.wait()
            for _ in range(25):
                try:
                    with book.reserve(0.75) as r:
                        with count_lock:
                            granted[0] += 1
                        time.sleep(rng.random() * 0.0005)
                        if rng.random() < 0.2:
                            r.cancel()
                        elif rng.random() < 0.5:
                            r.settle(rng.choice([0.25, 0.5, 0.75]))
                        # else: leave the block unsettled, which records 0.75
                except BudgetExceeded:
                    with count_lock:
                        refused[0] += 1
        except BaseException as exc:  # surfaced below, a thread cannot fail the test
            errors.append(exc)

    def monitor() -> None:
        start.wait()
        while not stop.is_set():
            # Spend first, then held: an amount moving from held to spend in between is
            # missed (never double counted), so this can only under-estimate.
            peaks.append(ledger.spend_now() + book.held_usd())

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(32)]
    watcher = threading.Thread(target=monitor)
    for t in [*threads, watcher]:
        t.start()
    for t in threads:
        t.join(timeout=30)
    stop.set()
    watcher.join(timeout=30)

    assert not errors, errors
    assert granted[0] > 0 and refused[0] > 0  # the cap was really contended
    assert max(peaks) <= cap + EPS
    assert ledger.spend <= cap + EPS
    assert sum(usd for usd, _ in ledger.calls) <= cap + EPS
    assert book.held_usd() == 0.0 and book.open_reservations() == 0


# --- failed calls are not spend (settlement marks) ---------------------------------------

def _request(host: str) -> Any:
    # The SDKs' transport (what their exceptions carry) is httpx2.
    import httpx2

    return httpx2.Request("POST", f"https://{host}/v1/chat")


def _response(status: int, request: Any) -> Any:
    import httpx2

    return httpx2.Response(status, request=request)


def _not_billed_errors() -> list[BaseException]:
    """The real SDK exceptions a call raises when the provider did not bill it."""
    import anthropic
    import httpx
    import httpx2
    import openai

    a_req, o_req = _request("api.anthropic.com"), _request("api.openai.com")
    return [
        anthropic.InternalServerError("boom", response=_response(500, a_req),
                                      body=None),
        anthropic.RateLimitError("slow down", response=_response(429, a_req),
                                 body=None),
        anthropic.APIStatusError("overloaded", response=_response(529, a_req),
                                 body=None),
        anthropic.APIConnectionError(request=a_req),
        anthropic.APITimeoutError(request=a_req),
        openai.InternalServerError("boom", response=_response(500, o_req),
                                   body=None),
        openai.BadRequestError("bad", response=_response(400, o_req), body=None),
        openai.APIConnectionError(request=o_req),
        openai.APITimeoutError(request=o_req),
        httpx2.ConnectError("connection refused", request=o_req),
        httpx2.ConnectTimeout("connect timed out", request=o_req),
        httpx.ConnectError("connection refused",
                           request=httpx.Request("POST", "https://gateway.local/v1")),
    ]


def _billed_or_unknown_errors() -> list[BaseException]:
    """Exceptions after which the provider may have billed."""
    import anthropic
    import httpx2

    req = _request("api.anthropic.com")
    return [
        RuntimeError("our own bug after the call"),
        # An error event inside a stream that had begun (status 200): may be billed.
        anthropic.APIStatusError("overloaded mid-stream",
                                 response=_response(200, req), body=None),
        httpx2.ReadError("connection reset mid-stream", request=req),
    ]


def test_sdk_errors_that_were_not_billed_are_recognised() -> None:
    from otel_budget.reservations import provider_did_not_bill

    assert all(provider_did_not_bill(exc) for exc in _not_billed_errors())
    assert not any(provider_did_not_bill(exc) for exc in _billed_or_unknown_errors())


@pytest.mark.parametrize("exc", _not_billed_errors(), ids=lambda e: type(e).__module__.split(
    ".")[0] + "." + type(e).__name__)
def test_a_not_billed_sdk_error_releases_the_reservation(exc: BaseException) -> None:
    book, ledger = make_book()
    with pytest.raises(type(exc)), book.reserve(0.75, {"agent": "coder"}):
        raise exc
    assert ledger.calls == []
    assert book.held_usd() == 0.0 and book.unsettled_usd() == 0.0


@pytest.mark.parametrize("exc", _billed_or_unknown_errors(), ids=lambda e: type(e).__name__)
def test_any_other_exception_records_the_maximum_marked_unsettled(exc: BaseException) -> None:
    spend: dict[str, float] = {"daily": 0.0, "coder": 0.0, "other": 0.0}
    calls: list[tuple[float, Any]] = []
    book = ReservationBook(
        budgets=[Budget("daily", 10.0, hard=True), Budget("coder", 5.0, match={"agent": "coder"}),
                 Budget("other", 5.0, match={"agent": "other"})],
        spend_of=spend.__getitem__, window_of=lambda name: "2026-11-25",
        record=lambda usd, attrs: calls.append((usd, attrs)),
        check_amount=lambda value, name: check_amount(value, name, 1e6),
        day=lambda: "2026-11-25")
    with pytest.raises(type(exc)), book.reserve(0.75, {"agent": "coder"}):
        raise exc
    assert calls == [(0.75, {"agent": "coder", "otel_budget.settlement": "unsettled"})]
    assert book.unsettled_usd() == 0.75
    assert (book.unsettled_usd("daily"), book.unsettled_usd("coder"),
            book.unsettled_usd("other")) == (0.75, 0.75, 0.0)


def test_unsettled_spend_counts_today_only() -> None:
    today = ["2026-11-25"]
    calls: list[tuple[float, Any]] = []
    book = ReservationBook(
        budgets=[Budget("daily", 10.0, hard=True)], spend_of=lambda name: 0.0,
        window_of=lambda name: today[0], record=lambda usd, attrs: calls.append((usd, attrs)),
        check_amount=lambda value, name: check_amount(value, name, 1e6),
        day=lambda: today[0])
    for _ in range(2):
        with pytest.raises(KeyError), book.reserve(0.1):
            raise KeyError("parse failure")
    assert book.unsettled_usd() == pytest.approx(0.2, abs=1e-12)
    today[0] = "2026-11-26"
    assert book.unsettled_usd() == 0.0 and book.unsettled_usd("daily") == 0.0
    assert len(calls) == 2


class MeterRig:
    """A real BudgetMeter (memory store) with an in-memory metric reader."""

    def __init__(self) -> None:
        from datetime import datetime, timezone

        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        from otel_budget import BudgetConfig, BudgetMeter
        from otel_budget.stores.memory import MemoryStore
        from tests.support.helpers import FakeClock

        self.reader = InMemoryMetricReader()
        config = BudgetConfig(
            daily_cap_usd=3.0, instance_id="a", collect_interval_s=3600,
            budgets=[Budget("coder", 2.0, match={"agent": "coder"})])
        self.meter = BudgetMeter(
            config, store=MemoryStore(), metric_readers=[self.reader],
            clock=FakeClock(datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)))

    def spend_points(self) -> dict[tuple[tuple[str, Any], ...], float]:
        data = self.reader.get_metrics_data()
        assert data is not None
        # Series may carry the writer's id (distinct per process): not what is tested here.
        return {tuple(sorted((k, v) for k, v in (p.attributes or {}).items()
                             if k != "otel_budget.writer.id")): float(getattr(p, "value", 0))
                for rm in data.resource_metrics for sm in rm.scope_metrics
                for m in sm.metrics if m.name == "llm.spend" for p in m.data.data_points}

    def budget(self, name: str) -> dict[str, Any]:
        return next(b for b in self.meter.budgets() if b["name"] == name)


def test_meter_reserve_releases_not_billed_and_marks_the_rest() -> None:
    rig = MeterRig()
    meter = rig.meter
    for exc in _not_billed_errors()[:3]:  # three HTTP 500-ish errors: the case
        with pytest.raises(type(exc)), meter.reserve(0.1125, {"agent": "coder"}):
            raise exc
    assert meter.daily_spend() == 0.0 and meter.reserved_usd() == 0.0
    with pytest.raises(RuntimeError), meter.reserve(0.25, {"agent": "coder"}):
        raise RuntimeError("our own bug after the call")
    with meter.reserve(0.5, {"agent": "coder"}) as r:
        r.settle(0.125)
    assert meter.daily_spend() == 0.375
    assert meter.health()["unsettled_usd"] == 0.25
    coder = rig.budget("coder")
    assert coder["spend_usd"] == 0.375 and coder["unsettled_usd"] == 0.25
    assert rig.budget("daily")["unsettled_usd"] == 0.25
    meter.collect()
    points = rig.spend_points()
    assert points[(("agent", "coder"), ("otel_budget.settlement", "unsettled"))] == 0.25
    assert points[(("agent", "coder"),)] == 0.125
    meter.shutdown()


def test_meter_areserve_releases_not_billed_and_marks_the_rest() -> None:
    import asyncio

    rig = MeterRig()
    meter = rig.meter
    errors = _not_billed_errors()

    async def main() -> None:
        for exc in errors:
            with pytest.raises(type(exc)):
                async with meter.areserve(0.2, {"agent": "coder"}):
                    await asyncio.sleep(0)
                    raise exc
        with pytest.raises(ValueError):
            async with meter.areserve(0.3, {"agent": "coder"}):
                raise ValueError("the response did not parse")

    asyncio.run(main())
    assert meter.reserved_usd() == 0.0
    assert meter.daily_spend() == 0.3
    assert meter.health()["unsettled_usd"] == 0.3
    assert rig.budget("coder")["unsettled_usd"] == 0.3
    meter.shutdown()


# --- the real SDK clients against a local fake of their APIs ---------------------------------

class FakeProviderAPI:
    """A local HTTP server standing in for the providers' APIs: `POST /v1/messages`
    answers 500; `POST /v1/chat/completions` answers 500, or with `"stream": true` an SSE
    stream without usage (as OpenAI does without stream_options.include_usage)."""

    def __init__(self) -> None:
        import http.server
        import json

        requests: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                requests.append(self.path)
                if self.path.endswith("/chat/completions") and body.get("stream"):
                    chunks = [{"role": "assistant", "content": "Hel"}, {"content": "lo"}, {}]
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    for i, delta in enumerate(chunks):
                        chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1,
                                 "model": "gpt-4o-2024-08-06", "choices": [{
                                     "index": 0, "delta": delta,
                                     "finish_reason": "stop" if i == len(chunks) - 1
                                     else None}]}
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.write(b"data: [DONE]\n\n")
                    return
                payload = json.dumps({"type": "error", "error": {
                    "type": "api_error", "message": "internal server error"}}).encode()
                self.send_response(500)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.requests = requests
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def fake_api() -> Any:
    api = FakeProviderAPI()
    try:
        yield api
    finally:
        api.close()


def test_real_sdk_calls_that_fail_are_not_spend(fake_api: FakeProviderAPI) -> None:
    import socket

    import anthropic
    import openai

    rig = MeterRig()
    meter = rig.meter
    claude = anthropic.Anthropic(api_key="test", base_url=fake_api.url, max_retries=0)
    for _ in range(3):  # the three HTTP 500s inside reserve
        with pytest.raises(anthropic.InternalServerError), \
                meter.reserve(0.1125, {"agent": "coder"}):
            claude.messages.create(model="claude-sonnet-4-5", max_tokens=10,
                                   messages=[{"role": "user", "content": "hi"}])
    with socket.socket() as probe:  # a port nothing listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    gpt = openai.OpenAI(api_key="test", base_url=f"http://127.0.0.1:{closed}/v1",
                        max_retries=0)
    with pytest.raises(openai.APIConnectionError), meter.reserve(0.1, {"agent": "coder"}):
        gpt.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert fake_api.requests == ["/v1/messages"] * 3  # the calls really went out
    assert meter.daily_spend() == 0.0 and meter.reserved_usd() == 0.0
    assert meter.health()["unsettled_usd"] == 0.0
    meter.shutdown()


def test_real_openai_stream_without_usage_records_the_reservation_max(
        fake_api: FakeProviderAPI) -> None:
    import openai

    rig = MeterRig()
    meter = rig.meter
    gpt = openai.OpenAI(api_key="test", base_url=f"{fake_api.url}/v1", max_retries=0)
    with meter.reserve(0.072, {"agent": "coder"}) as r:
        stream = gpt.chat.completions.create(
            model="gpt-4o", stream=True, messages=[{"role": "user", "content": "x"}])
        chunks = list(stream)
        assert chunks[-1].usage is None and len(chunks) == 3
        assert meter.record_response(chunks[-1], {"agent": "coder"}, reservation=r) == 0.072
    assert meter.daily_spend() == 0.072 and meter.unpriced_calls() == 1
    meter.collect()
    [(attrs, value)] = rig.spend_points().items()
    assert dict(attrs)["otel_budget.settlement"] == "estimated" and value == 0.072
    assert dict(attrs)["gen_ai.response.model"] == "gpt-4o-2024-08-06"
    meter.shutdown()
