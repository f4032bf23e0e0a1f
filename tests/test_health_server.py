"""The HTTP plumbing of serve_health, with plain functions standing in for the meter
(the meter's real wiring is exercised in test_prometheus_e2e.py)."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from typing import Any

import pytest

from otel_budget.health_server import serve_health


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _metrics() -> tuple[bytes, str]:
    return b"# TYPE x gauge\nx 1.0\n", "text/plain; version=0.0.4; charset=utf-8"


def test_healthz_ok_returns_200_json() -> None:
    doc = {"status": "ok", "daily_spend_usd": 1.5}
    with serve_health(lambda: doc, _metrics) as server:
        status, headers, body = _get(server.url + "/healthz")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == doc


def test_healthz_degraded_returns_503_with_body() -> None:
    doc = {"status": "degraded", "last_checkpoint": {"ok": False}}
    with serve_health(lambda: doc, _metrics) as server:
        status, _, body = _get(server.url + "/healthz")
    assert status == 503
    assert json.loads(body)["status"] == "degraded"


def test_metrics_passes_body_and_content_type() -> None:
    with serve_health(lambda: {"status": "ok"}, _metrics) as server:
        status, headers, body = _get(server.url + "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert body == b"# TYPE x gauge\nx 1.0\n"


def test_unknown_path_is_404() -> None:
    with serve_health(lambda: {"status": "ok"}, _metrics) as server:
        assert _get(server.url + "/")[0] == 404
        assert _get(server.url + "/healthz/extra")[0] == 404
        # A query string does not change the route (some probes append one).
        assert _get(server.url + "/healthz?verbose=1")[0] == 200


def test_failing_callables_answer_500_without_the_message_and_keep_serving() -> None:
    secret = "postgresql://u:hunter2@db/x"

    def bad_health() -> dict[str, Any]:
        raise RuntimeError(f"cannot reach {secret}")

    def bad_metrics() -> tuple[bytes, str]:
        raise ValueError(secret)

    with serve_health(bad_health, bad_metrics) as server:
        for path in ("/healthz", "/metrics"):
            status, _, body = _get(server.url + path)
            assert status == 500
            assert b"hunter2" not in body
        # The server thread survived both failures.
        assert _get(server.url + "/nothing")[0] == 404


def test_unserialisable_or_malformed_results_are_500_not_a_crash() -> None:
    with serve_health(lambda: {"status": "ok", "bad": object()}, _metrics) as server:
        assert _get(server.url + "/healthz")[0] == 500
    not_a_dict: Any = lambda: ["ok"]  # noqa: E731
    not_a_pair: Any = lambda: b"x"  # noqa: E731
    with serve_health(not_a_dict, not_a_pair) as server:
        assert _get(server.url + "/healthz")[0] == 500
        assert _get(server.url + "/metrics")[0] == 500


def test_port_zero_picks_a_free_port_and_binds_loopback() -> None:
    with serve_health(lambda: {"status": "ok"}, _metrics) as server:
        assert server.port > 0
        assert server.host == "127.0.0.1"
        assert server.url == f"http://127.0.0.1:{server.port}"


def test_shutdown_is_idempotent_and_frees_the_port() -> None:
    server = serve_health(lambda: {"status": "ok"}, _metrics)
    port = server.port
    server.shutdown()
    server.shutdown()
    with pytest.raises(OSError):
        _get(f"http://127.0.0.1:{port}/healthz")
    # The port can be bound again at once.
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


def test_serves_concurrent_requests_while_one_is_slow() -> None:
    release = threading.Event()

    def slow_metrics() -> tuple[bytes, str]:
        release.wait(5)
        return _metrics()

    with serve_health(lambda: {"status": "ok"}, slow_metrics) as server:
        slow = threading.Thread(target=_get, args=(server.url + "/metrics",))
        slow.start()
        try:
            # A stuck scrape must not block the liveness probe.
            assert _get(server.url + "/healthz")[0] == 200
        finally:
            release.set()
            slow.join(5)
