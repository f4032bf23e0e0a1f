"""Notifiers against a real loopback HTTP server: delivery, failures, timeouts, and the
webhook URL (a secret: its path carries the token) never leaking into messages or logs."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from otel_budget import BudgetConfig, BudgetMeter, ConfigError, NotifyError
from otel_budget.notify import LoggingNotifier, WebhookNotifier
from otel_budget.stores.memory import MemoryStore

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
    meter = BudgetMeter(config, store=MemoryStore(),
                        notifiers=[WebhookNotifier(hook_url(port), timeout_s=2.0)])
    with meter:
        meter.record(0.9, {"agent": "cloud_lu"})
        meter.collect()  # claims the 80% nudge; the webhook answers 500
        assert len(hook.requests) == 1
        health = meter.health()
        assert health["alerts_sent"] == [0.8]
        text = json.dumps(health)
        assert_no_secret(text)
        assert_no_secret(repr(meter))
        failures = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert failures, "a failing notifier is logged"
        assert_no_secret(caplog.text)
        for record in caplog.records:
            assert_no_secret(record.getMessage())

        hook.status = 200
        meter.collect()  # retried by the claiming instance
        assert len(hook.requests) == 2
        meter.collect()
        assert len(hook.requests) == 2, "never called again after a success"
    assert json.loads(hook.requests[-1]["body"])["ratio"] == 0.8
    assert_no_secret(caplog.text)
