"""Notifiers against a real loopback HTTP server: delivery, failures, timeouts, and the
webhook URL (a secret: its path carries the token) never leaking into messages or logs."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from otel_budget import BudgetConfig, BudgetMeter, ConfigError, NotifyError
from otel_budget.notify import (
    LoggingNotifier,
    NotifierDispatcher,
    SlackNotifier,
    WebhookNotifier,
    nudge_summary,
)
from otel_budget.stores.memory import MemoryStore
from tests.support.helpers import wait_for

TOKEN = "T0KEN-SECRET-123"
NUDGE = {"to": "ag_lu", "kind": "budget_alert", "date": "2026-11-25", "ratio": 0.8,
         "daily_spend_usd": 40.1, "daily_cap_usd": 50.0, "instance_id": "host-a-4711",
         "created_at": "2026-11-25T10:30:00+00:00"}


class Hook:
    """What the server saw, and how it should answer."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self.delay_s = 0.0
        self.release = threading.Event()
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: _HookServer

    def do_POST(self) -> None:
        hook = self.server.hook
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with hook.lock:
            hook.requests.append({"path": self.path, "headers": dict(self.headers),
                                  "body": body})
        if hook.delay_s:
            hook.release.wait(hook.delay_s)
        try:
            self.send_response(hook.status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        except OSError:
            pass  # the client gave up (the timeout test)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _HookServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, hook: Hook) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hook = hook


@pytest.fixture
def hook_server() -> Iterator[tuple[Hook, int]]:
    hook = Hook()
    server = _HookServer(hook)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield hook, server.server_address[1]
    finally:
        hook.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def hook_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/hooks/{TOKEN}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: nothing listens there


def assert_no_secret(text: str) -> None:
    assert TOKEN not in text, text
    assert "/hooks" not in text, text


def assert_error_is_clean(exc: BaseException) -> None:
    assert_no_secret(str(exc))
    assert_no_secret(repr(exc))
    # A traceback logged with exc_info must not show it either (no chained URL error).
    assert_no_secret("".join(traceback.format_exception(exc)))


# --- webhook ----------------------------------------------------------------------------

def test_webhook_posts_the_nudge_as_json(hook_server: tuple[Hook, int]) -> None:
    hook, port = hook_server
    notifier = WebhookNotifier(hook_url(port), headers={"Authorization": "Bearer HDR-SECRET"})
    notifier(dict(NUDGE))
    [request] = hook.requests
    assert request["path"] == f"/hooks/{TOKEN}"
    assert json.loads(request["body"]) == NUDGE
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert headers["content-type"] == "application/json"
    assert headers["authorization"] == "Bearer HDR-SECRET"
    shown = repr(notifier)
    assert_no_secret(shown)
    assert "HDR-SECRET" not in shown
    assert "127.0.0.1" in shown


@pytest.mark.parametrize("status", [500, 404, 403])
def test_http_error_raises_notify_error_without_the_url(
    hook_server: tuple[Hook, int], status: int
) -> None:
    hook, port = hook_server
    hook.status = status
    with pytest.raises(NotifyError) as info:
        WebhookNotifier(hook_url(port))(dict(NUDGE))
    assert str(status) in str(info.value)
    assert_error_is_clean(info.value)
    assert len(hook.requests) == 1


def test_connection_refused_raises_notify_error_without_the_url() -> None:
    started = time.monotonic()
    with pytest.raises(NotifyError) as info:
        WebhookNotifier(hook_url(free_port()), timeout_s=2.0)(dict(NUDGE))
    assert time.monotonic() - started < 2.0
    assert_error_is_clean(info.value)


def test_secret_in_the_query_string_is_not_shown(hook_server: tuple[Hook, int]) -> None:
    hook, port = hook_server
    hook.status = 500
    notifier = WebhookNotifier(f"http://127.0.0.1:{port}/x?token={TOKEN}")
    with pytest.raises(NotifyError) as info:
        notifier(dict(NUDGE))
    assert TOKEN not in str(info.value) and TOKEN not in repr(notifier)


def test_timeout_is_honoured(hook_server: tuple[Hook, int]) -> None:
    hook, port = hook_server
    hook.delay_s = 10.0
    started = time.monotonic()
    with pytest.raises(NotifyError) as info:
        WebhookNotifier(hook_url(port), timeout_s=0.3)(dict(NUDGE))
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"a 0.3 s timeout took {elapsed:.2f} s"
    assert "timeout" in str(info.value).lower(), str(info.value)
    assert_error_is_clean(info.value)


@pytest.mark.parametrize("url", [f"ftp://127.0.0.1/hooks/{TOKEN}", f"/hooks/{TOKEN}",
                                 f"http:///hooks/{TOKEN}"])
def test_invalid_webhook_url_is_a_config_error_without_the_url(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        WebhookNotifier(url)
    assert_error_is_clean(info.value)


@pytest.mark.parametrize("timeout_s", [0, -1.0])
def test_invalid_timeout_is_a_config_error(timeout_s: float) -> None:
    with pytest.raises(ConfigError, match="timeout"):
        WebhookNotifier("http://127.0.0.1/x", timeout_s=timeout_s)


# --- logging notifier ---------------------------------------------------------------------

def test_logging_notifier_logs_at_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    LoggingNotifier()(dict(NUDGE))
    [record] = [r for r in caplog.records if r.name == "otel_budget.notify"]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    for fragment in ("2026-11-25", "40.1", "50.00", "80%", "ag_lu"):
        assert fragment in message, message


def test_logging_notifier_uses_the_logger_passed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    LoggingNotifier(logging.getLogger("dispatcher.alerts"))(dict(NUDGE, ratio=0.825))
    [record] = caplog.records
    assert record.name == "dispatcher.alerts" and "82.5%" in record.getMessage()


# --- through the meter ----------------------------------------------------------------------

def test_meter_with_a_failing_webhook_keeps_the_token_secret(
    hook_server: tuple[Hook, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    hook, port = hook_server
    hook.status = 500
    config = BudgetConfig(daily_cap_usd=1.0, instance_id="notify-test",
                          collect_interval_s=3600.0)
    dispatcher = NotifierDispatcher([WebhookNotifier(hook_url(port), timeout_s=2.0)],
                                    backoff_initial_s=0.05, backoff_max_s=0.1)
    meter = BudgetMeter(config, store=MemoryStore(), notifiers=dispatcher)
    with meter:
        meter.record(0.9, {"agent": "cloud_lu"})
        meter.collect()  # claims the 80% nudge; the webhook answers 500
        assert wait_for(lambda: len(hook.requests) >= 1)
        health = meter.health()
        assert health["alerts_sent"] == [0.8]
        text = json.dumps(health)
        assert_no_secret(text)
        assert_no_secret(repr(meter))
        # The failure is logged once the answer is read, just after the hook saw the call.
        assert wait_for(lambda: any(r.levelno >= logging.WARNING for r in caplog.records)), \
            "a failing notifier is logged"
        assert_no_secret(caplog.text)
        for record in caplog.records:
            assert_no_secret(record.getMessage())

        hook.status = 200
        # Retried with backoff until delivered.
        assert wait_for(lambda: dispatcher.pending() == [])
        delivered = len(hook.requests)
        meter.collect()
        assert not wait_for(lambda: len(hook.requests) > delivered, timeout=0.3), \
            "never called again after a success"
    assert json.loads(hook.requests[-1]["body"])["ratio"] == 0.8
    assert_no_secret(caplog.text)


# --- whole-call deadline against a trickling server -----------------------------------------

class Trickler:
    """A raw TCP server that reads the request, then sends one byte every `every_s`
    forever (until stopped): per-read socket timeouts never fire against it."""

    def __init__(self, every_s: float = 0.5, prefix: bytes = b"HTTP/1.1 200 OK\r\n") -> None:
        self.every_s = every_s
        self.prefix = prefix
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port: int = self.listener.getsockname()[1]
        self.connections = 0
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            thread = threading.Thread(target=self._trickle, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(0.5)
            try:
                conn.recv(65536)
                for i in range(10_000):  # bounded: ~80 min at 0.5 s; stop ends it first
                    if self.stop.wait(self.every_s if i else 0.0):
                        return
                    conn.sendall(self.prefix[i:i + 1] if i < len(self.prefix) else b"x")
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        self.acceptor.join(5)
        for thread in self.threads:
            thread.join(5)


@pytest.fixture
def trickler() -> Iterator[Trickler]:
    server = Trickler()
    try:
        yield server
    finally:
        server.close()


def test_a_trickling_server_cannot_stretch_the_call_past_its_deadline(trickler: Trickler) -> None:
    notifier = WebhookNotifier(f"http://127.0.0.1:{trickler.port}/hooks/{TOKEN}", timeout_s=1.5)
    started = time.monotonic()
    with pytest.raises(NotifyError) as info:
        notifier(dict(NUDGE))
    elapsed = time.monotonic() - started
    assert 1.0 < elapsed < 2.5, f"a 1.5 s deadline took {elapsed:.2f} s"
    assert "timeout" in str(info.value).lower()
    assert_error_is_clean(info.value)


def test_dispatcher_close_returns_within_its_deadline_against_a_trickler(
    trickler: Trickler, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    notifier = WebhookNotifier(f"http://127.0.0.1:{trickler.port}/hooks/{TOKEN}", timeout_s=1.0)
    dispatcher = NotifierDispatcher([notifier], call_timeout_s=5.0, backoff_initial_s=0.2)
    started = time.monotonic()
    dispatcher.submit(dict(NUDGE))
    # the delivery takes its whole 1 s timeout (the trickler never answers)
    assert time.monotonic() - started < 0.8, "submit does not wait for delivery"
    time.sleep(1.5)  # the first call has failed on its own deadline by now
    assert trickler.connections >= 1
    assert dispatcher.pending() == [NUDGE]
    started = time.monotonic()
    dispatcher.close(timeout_s=1.0)
    assert time.monotonic() - started < 1.5
    assert dispatcher.pending() == []
    assert any("timeout" in r.getMessage() for r in caplog.records)
    assert_no_secret(caplog.text)


# --- the dispatcher: backoff against a failing server, then exactly one delivery ---------------

class ManualMonotonic:
    """The dispatcher's clock, moved by hand: backoff and call deadlines pass without
    the test sleeping through them."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float, dispatcher: NotifierDispatcher) -> None:
        with self._lock:
            self.now += seconds
        dispatcher.wake()


def test_failing_webhook_is_retried_with_backoff_then_delivered_exactly_once(
    hook_server: tuple[Hook, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    hook, port = hook_server
    hook.status = 500
    clock = ManualMonotonic()
    dispatcher = NotifierDispatcher([WebhookNotifier(hook_url(port), timeout_s=1.0)],
                                    backoff_initial_s=0.5, backoff_max_s=3.0, clock=clock)
    try:
        dispatcher.submit(dict(NUDGE))
        for attempt in range(1, 6):
            assert wait_for(lambda a=attempt: len(hook.requests) == a  # type: ignore[misc]
                            and dispatcher.status()[0]["failures"] == a)
            # Delays drawn from [d/2, d], d doubling from 0.5 up to backoff_max_s.
            ceiling = min(3.0, 0.5 * 2 ** (attempt - 1))
            retry = dispatcher.status()[0]["retry_in_s"]
            assert ceiling / 2 - 1e-3 <= retry <= ceiling + 1e-3, (attempt, retry)
            clock.advance(retry / 2, dispatcher)
            assert not wait_for(lambda a=attempt: len(hook.requests) > a,  # type: ignore[misc]
                                timeout=0.15), "retried before its backoff ran out"
            if attempt == 5:
                hook.status = 200
            clock.advance(retry, dispatcher)
        assert wait_for(lambda: dispatcher.pending() == [])
        assert len(hook.requests) == 6
        clock.advance(3600.0, dispatcher)
        assert not wait_for(lambda: len(hook.requests) > 6, timeout=0.3), \
            "never posted again after a success"
        assert json.loads(hook.requests[-1]["body"]) == NUDGE
        assert dispatcher.status()[0]["failures"] == 0
    finally:
        dispatcher.close(timeout_s=1.0)
    # (another test's dispatcher may still be logging: only this hook's lines count)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING
                and f"127.0.0.1:{port}" in r.getMessage()]
    assert len(warnings) == 5 and all("HTTP 500" in r.getMessage() for r in warnings)
    assert_no_secret(caplog.text)


def test_a_hanging_notifier_does_not_block_submit_or_the_others() -> None:
    release = threading.Event()
    calls: list[str] = []
    delivered = threading.Event()

    def hangs(nudge: dict[str, Any]) -> None:
        calls.append("hang")
        release.wait(30)

    def works(nudge: dict[str, Any]) -> None:
        calls.append("work")
        delivered.set()

    clock = ManualMonotonic()
    dispatcher = NotifierDispatcher([hangs, works], call_timeout_s=0.3,
                                    backoff_initial_s=0.05, backoff_max_s=0.1, clock=clock)
    try:
        before = threading.active_count()
        dispatcher.submit(dict(NUDGE))
        assert delivered.wait(2.0), "the healthy notifier delivered while the other hangs"
        assert dispatcher.status()[0]["stuck"] is False, "not past its deadline yet"
        clock.advance(0.31, dispatcher)
        assert wait_for(lambda: dispatcher.status()[0]["stuck"] is True)
        for _ in range(20):  # many backoff periods: the stuck notifier is not called again
            clock.advance(0.2, dispatcher)
        assert not wait_for(lambda: calls.count("hang") > 1, timeout=0.2), calls
        assert calls.count("work") == 1, calls
        assert threading.active_count() <= before + 2, "one worker + one stuck call at most"
        [stuck, ok] = dispatcher.status()
        assert stuck["stuck"] is True and ok["stuck"] is False
        assert dispatcher.pending() == [NUDGE]
        release.set()  # the stuck call returns (successfully): that counts as delivered
        assert wait_for(lambda: dispatcher.pending() == [])
        assert calls.count("hang") == 1
    finally:
        release.set()
        dispatcher.close(timeout_s=1.0)


def test_a_stuck_notifier_failing_late_is_retried_once_it_returns() -> None:
    release = threading.Event()
    attempts: list[float] = []

    def flaky(nudge: dict[str, Any]) -> None:
        attempts.append(clock())
        if len(attempts) == 1:
            release.wait(30)
            raise RuntimeError("late failure")

    clock = ManualMonotonic()
    dispatcher = NotifierDispatcher([flaky], call_timeout_s=0.2, backoff_initial_s=0.05,
                                    backoff_max_s=0.1, clock=clock)
    try:
        dispatcher.submit(dict(NUDGE))
        assert wait_for(lambda: len(attempts) == 1)
        clock.advance(0.25, dispatcher)
        assert wait_for(lambda: dispatcher.status()[0]["stuck"] is True)
        clock.advance(1.0, dispatcher)
        assert len(attempts) == 1, "not called again while its first call is stuck"
        release.set()
        assert wait_for(lambda: len(attempts) == 2 or dispatcher.pending() == [])
        clock.advance(1.0, dispatcher)  # the backoff after the late failure
        assert wait_for(lambda: dispatcher.pending() == [])
        assert len(attempts) == 2
    finally:
        release.set()
        dispatcher.close(timeout_s=1.0)


def test_close_waits_for_pending_then_returns_and_later_submits_are_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    got: list[dict[str, Any]] = []

    def slow(nudge: dict[str, Any]) -> None:
        time.sleep(0.2)
        got.append(nudge)

    dispatcher = NotifierDispatcher([slow])
    dispatcher.submit(dict(NUDGE))
    dispatcher.submit(dict(NUDGE, ratio=0.9))
    started = time.monotonic()
    dispatcher.close(timeout_s=3.0)
    assert time.monotonic() - started < 2.0
    assert [n["ratio"] for n in got] == [0.8, 0.9]
    caplog.set_level(logging.WARNING)
    dispatcher.submit(dict(NUDGE, ratio=1.0))
    assert dispatcher.pending() == [] and "closed" in caplog.text
    dispatcher.close(timeout_s=1.0)  # idempotent


def test_close_never_waits_longer_than_its_timeout() -> None:
    release = threading.Event()
    dispatcher = NotifierDispatcher([lambda nudge: release.wait(30)], call_timeout_s=20.0)
    try:
        dispatcher.submit(dict(NUDGE))
        time.sleep(0.1)
        started = time.monotonic()
        dispatcher.close(timeout_s=0.5)
        assert time.monotonic() - started < 1.0
    finally:
        release.set()


def test_a_failing_notifier_logs_its_redacted_repr_and_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)

    class Leaky:
        def __call__(self, nudge: dict[str, Any]) -> None:
            raise ConnectionError(f"cannot reach https://notify.example.com/hooks/{TOKEN}")

        def __repr__(self) -> str:
            return f"Leaky(https://notify.example.com/hooks/{TOKEN})"

    dispatcher = NotifierDispatcher([Leaky()], backoff_initial_s=10.0, backoff_max_s=10.0)
    dispatcher.submit(dict(NUDGE))
    deadline = time.monotonic() + 5
    while not caplog.records and time.monotonic() < deadline:
        time.sleep(0.02)
    dispatcher.close(timeout_s=0.5)
    assert "Leaky(https://notify.example.com/***)" in caplog.text
    assert "ConnectionError" in caplog.text
    assert_no_secret(caplog.text)
    assert_no_secret(repr(dispatcher))


def test_notifiers_get_their_own_copy_of_the_nudge() -> None:
    seen: list[dict[str, Any]] = []

    def mutates(nudge: dict[str, Any]) -> None:
        nudge["ratio"] = 99

    dispatcher = NotifierDispatcher([mutates, seen.append])
    dispatcher.submit(dict(NUDGE))
    dispatcher.close(timeout_s=2.0)
    assert seen == [NUDGE]


@pytest.mark.parametrize("kwargs", [{"call_timeout_s": 0}, {"backoff_initial_s": -1.0},
                                    {"backoff_initial_s": 5.0, "backoff_max_s": 1.0}])
def test_invalid_dispatcher_settings_are_config_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        NotifierDispatcher([LoggingNotifier()], **kwargs)  # type: ignore[arg-type]


def test_a_non_callable_notifier_is_a_config_error() -> None:
    not_callable: Any = object()
    with pytest.raises(ConfigError):
        NotifierDispatcher([not_callable])


def test_dispatchers_are_garbage_collected_with_their_worker() -> None:
    import gc
    import weakref

    dispatcher = NotifierDispatcher([lambda nudge: None])
    dispatcher.submit(dict(NUDGE))
    time.sleep(0.1)
    ref = weakref.ref(dispatcher)
    worker = dispatcher._worker
    del dispatcher
    deadline = time.monotonic() + 5
    while ref() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    assert ref() is None
    assert worker is not None
    worker.join(3)
    assert not worker.is_alive()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_after_fork_the_child_starts_empty_and_delivers_its_own() -> None:
    release = threading.Event()
    read_fd, write_fd = os.pipe()

    def notifier(nudge: dict[str, Any]) -> None:
        if os.getpid() == parent:
            release.wait(30)
        else:
            os.write(write_fd, json.dumps(nudge).encode() + b"\n")

    parent = os.getpid()
    dispatcher = NotifierDispatcher([notifier], call_timeout_s=20.0)
    try:
        dispatcher.submit(dict(NUDGE))
        time.sleep(0.1)  # the parent's call is in flight, its lock maybe held
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                if dispatcher.pending() == []:
                    dispatcher.submit(dict(NUDGE, ratio=0.9))
                    dispatcher.close(timeout_s=5.0)
                    code = 0 if dispatcher.pending() == [] else 3
                else:
                    code = 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            lines = pipe.read().splitlines()
        assert [json.loads(line)["ratio"] for line in lines] == [0.9]
        assert dispatcher.pending() == [NUDGE], "the parent still owns its delivery"
    finally:
        release.set()
        dispatcher.close(timeout_s=2.0)


# --- Slack -------------------------------------------------------------------------------------

NUDGE_V2 = dict(NUDGE, budget="team-search", period="week", window="2026-W48",
                match={"team": "search"}, spend_usd=412.5, cap_usd=500.0)


def test_slack_posts_a_text_body_naming_budget_window_spend_cap_and_ratio(
    hook_server: tuple[Hook, int],
) -> None:
    hook, port = hook_server
    notifier = SlackNotifier(hook_url(port))
    notifier(dict(NUDGE_V2))
    notifier(dict(NUDGE))
    v2, v1 = (json.loads(r["body"]) for r in hook.requests)
    assert list(v2) == ["text"] and list(v1) == ["text"]
    for fragment in ("team-search", "2026-W48", "$412.50", "$500.00", "82.5%", "80%"):
        assert fragment in v2["text"], v2["text"]
    for fragment in ("daily", "2026-11-25", "$40.10", "$50.00", "80%"):
        assert fragment in v1["text"], v1["text"]
    assert "\n" not in v1["text"] and "\n" not in v2["text"]
    assert_no_secret(repr(notifier))


def test_slack_escapes_markup_and_keeps_a_prefix() -> None:
    notifier = SlackNotifier("https://hooks.slack.com/services/T0/B0/x", prefix="<!here>")
    text = notifier.text(dict(NUDGE_V2, budget="a<b>&c"))
    assert text.startswith("<!here> ") and "a&lt;b&gt;&amp;c" in text
    assert "hooks.slack.com" in repr(notifier) and "/services" not in repr(notifier)


def test_nudge_summary_tolerates_missing_fields() -> None:
    assert "Budget alert" in nudge_summary({})


def test_logging_notifier_reads_version_2_nudges(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    LoggingNotifier()(dict(NUDGE_V2))
    message = caplog.records[-1].getMessage()
    assert "2026-W48" in message and "412.5" in message and "500.00" in message


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_not_followed(hook_server: tuple[Hook, int], status: int) -> None:
    hook, port = hook_server
    hook.status = status
    with pytest.raises(NotifyError, match="redirect not followed") as info:
        WebhookNotifier(hook_url(port))(dict(NUDGE))
    assert len(hook.requests) == 1
    assert_error_is_clean(info.value)
