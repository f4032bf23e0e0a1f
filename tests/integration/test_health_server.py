"""The HTTP plumbing of serve_health, with plain functions standing in for the meter
(the meter's real wiring is exercised in test_prometheus_e2e.py)."""

from __future__ import annotations

import json
import socket
import threading
import time
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


# --- idle connections, bounded threads, slow clients ----------------------------------------

def _silent_sockets(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        socks.append(sock)
    return socks


def _close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def _closed_by_peer(sock: socket.socket, within_s: float) -> bool:
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_silent_sockets_pin_no_threads_and_healthz_still_answers() -> None:
    before = threading.active_count()
    with serve_health(lambda: {"status": "ok"}, _metrics, max_threads=4,
                      idle_timeout_s=30.0) as server:
        socks = _silent_sockets(server.port, 100)
        try:
            time.sleep(0.3)
            started = time.monotonic()
            assert _get(server.url + "/healthz")[0] == 200
            assert time.monotonic() - started < 2.0
            # A burst of real requests uses the pool, never more than max_threads.
            results: list[int] = []
            clients = [threading.Thread(target=lambda: results.append(
                _get(server.url + "/healthz")[0])) for _ in range(20)]
            for client in clients:
                client.start()
            for client in clients:
                client.join(10)
            assert len(results) == 20 and set(results) <= {200, 503}
            server_threads = [t for t in threading.enumerate()
                              if t.name.startswith("otel-budget-health")]
            assert len(server_threads) <= 4 + 1, [t.name for t in server_threads]
            assert threading.active_count() <= before + 4 + 1 + 1
        finally:
            _close_all(socks)


def test_silent_sockets_are_closed_after_the_idle_timeout() -> None:
    with serve_health(lambda: {"status": "ok"}, _metrics, idle_timeout_s=0.5) as server:
        socks = _silent_sockets(server.port, 10)
        try:
            started = time.monotonic()
            assert all(_closed_by_peer(sock, 3.0) for sock in socks)
            assert 0.4 < time.monotonic() - started < 2.0
            assert _get(server.url + "/healthz")[0] == 200
        finally:
            _close_all(socks)


def test_a_slow_client_within_the_timeout_is_served() -> None:
    request = b"GET /healthz HTTP/1.0\n\n"
    with serve_health(lambda: {"status": "ok"}, _metrics, idle_timeout_s=1.5) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        for byte in request:
            sock.sendall(bytes([byte]))
            time.sleep(0.2)  # each gap is well within the idle timeout
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.0 200"), answer[:80]
    assert answer.endswith(b'{"status": "ok"}')


def test_a_client_trickling_forever_is_cut_off_at_four_idle_timeouts() -> None:
    with serve_health(lambda: {"status": "ok"}, _metrics, idle_timeout_s=0.3) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        started = time.monotonic()
        with pytest.raises(OSError):
            for _ in range(60):  # ~6 s at most
                sock.sendall(b"X")
                time.sleep(0.1)
        elapsed = time.monotonic() - started
    assert elapsed < 3.0, f"cut off after {elapsed:.2f} s"


def test_connections_beyond_the_cap_evict_the_longest_idle() -> None:
    with serve_health(lambda: {"status": "ok"}, _metrics, idle_timeout_s=30.0,
                      max_connections=10) as server:
        old = _silent_sockets(server.port, 10)
        time.sleep(0.2)
        new = _silent_sockets(server.port, 5)
        try:
            assert sum(_closed_by_peer(sock, 1.0) for sock in old[:5]) == 5
            assert _get(server.url + "/healthz")[0] == 200
        finally:
            _close_all(old + new)


def test_a_full_pool_answers_503_busy_at_once_and_healthz_still_answers() -> None:
    release = threading.Event()

    def slow_metrics() -> tuple[bytes, str]:
        release.wait(10)
        return _metrics()

    with serve_health(lambda: {"status": "ok"}, slow_metrics, max_threads=1) as server:
        stuck = [threading.Thread(target=_get, args=(server.url + "/metrics",))
                 for _ in range(2)]  # one being answered, one waiting
        try:
            for thread in stuck:
                thread.start()
                time.sleep(0.2)
            started = time.monotonic()
            status, headers, body = _get(server.url + "/nope")  # the general lane: full
            assert (status, body) == (503, b"busy\n")
            assert headers.get("Retry-After") == "1"
            assert time.monotonic() - started < 1.0
            # The liveness probe has a lane of its own.
            assert _get(server.url + "/healthz")[0] == 200
        finally:
            release.set()
            for thread in stuck:
                thread.join(5)
        assert _get(server.url + "/nope")[0] == 404


class SlowMetrics:
    """A /metrics render that blocks until released (or `wait_s`), counting renders;
    the body names the render it came from."""

    def __init__(self, wait_s: float) -> None:
        self.release = threading.Event()
        self.rendering = threading.Event()
        self.renders = 0
        self._wait_s = wait_s

    def __call__(self) -> tuple[bytes, str]:
        self.renders += 1
        self.rendering.set()
        self.release.wait(self._wait_s)
        return f"# TYPE x gauge\nx {self.renders}.0\n".encode(), "text/plain"


def test_healthz_answers_while_many_slow_metrics_renders_pile_up() -> None:
    slow_metrics = SlowMetrics(20)
    release, rendering = slow_metrics.release, slow_metrics.rendering

    with serve_health(lambda: {"status": "ok"}, slow_metrics, max_threads=4) as server:
        scrapers = [threading.Thread(target=_get, args=(server.url + "/metrics",))
                    for _ in range(40)]
        try:
            for thread in scrapers:
                thread.start()
            assert rendering.wait(5)
            probes = [_get(server.url + "/healthz")[0] for _ in range(20)]
            # Overlapping scrapes share the one render in progress.
            renders_while_piled_up = slow_metrics.renders
        finally:
            release.set()
            for thread in scrapers:
                thread.join(10)
        assert probes == [200] * 20
        assert renders_while_piled_up == 1


def test_overlapping_metrics_requests_share_one_render() -> None:
    slow_metrics = SlowMetrics(10)
    release, rendering = slow_metrics.release, slow_metrics.rendering

    with serve_health(lambda: {"status": "ok"}, slow_metrics, max_threads=8) as server:
        results: list[tuple[int, dict[str, str], bytes]] = []
        scrapers = [threading.Thread(target=lambda: results.append(
            _get(server.url + "/metrics"))) for _ in range(6)]
        for thread in scrapers:
            thread.start()
        assert rendering.wait(5)
        time.sleep(0.3)  # let the others arrive while the first render runs
        release.set()
        for thread in scrapers:
            thread.join(10)
        assert sorted(r[0] for r in results) == [200] * 6
        assert {r[2] for r in results} == {b"# TYPE x gauge\nx 1.0\n"}
        assert slow_metrics.renders == 1
        # A later scrape renders afresh.
        assert _get(server.url + "/metrics")[2] == b"# TYPE x gauge\nx 2.0\n"


def test_shutdown_is_prompt_with_idle_sockets_open() -> None:
    server = serve_health(lambda: {"status": "ok"}, _metrics, idle_timeout_s=60.0)
    socks = _silent_sockets(server.port, 50)
    try:
        time.sleep(0.2)
        started = time.monotonic()
        server.shutdown()
        assert time.monotonic() - started < 1.0
        assert all(_closed_by_peer(sock, 1.0) for sock in socks)
    finally:
        _close_all(socks)
        server.shutdown()


# --- text that does not encode -----------------------------------------------------------------

def test_a_lone_surrogate_in_health_or_metrics_is_not_a_500() -> None:
    def metrics() -> tuple[bytes, str]:
        body: Any = "# bad \ud800 label\nx 1.0\n"
        return body, "text/plain; charset=utf-8; x=\ud800"

    doc = {"status": "ok", "instance": "host-\ud800", "\udcff": 1}
    with serve_health(lambda: doc, metrics) as server:
        status, _, body = _get(server.url + "/healthz")
        assert status == 200
        assert json.loads(body)["instance"] == "host-\ud800"
        status, headers, body = _get(server.url + "/metrics")
        assert status == 200
        assert body == b"# bad \\ud800 label\nx 1.0\n"
        assert headers["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize("kwargs", [{"idle_timeout_s": 0}, {"max_threads": 0},
                                    {"max_connections": 0}])
def test_invalid_limits_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        serve_health(lambda: {"status": "ok"}, _metrics, **kwargs)
