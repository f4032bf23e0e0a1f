"""A tiny stdlib HTTP server for `/healthz` and `/metrics`.

It knows nothing about the meter: it calls two functions, so it can be mounted on
any health source and tested with stubs. It binds loopback by default because the
health document names instances and spend, which is not for the open internet.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["HealthServer", "serve_health"]

log = logging.getLogger(__name__)

HealthFn = Callable[[], dict[str, Any]]
MetricsFn = Callable[[], tuple[bytes, str]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Tests and restarts rebind quickly; a lingering TIME_WAIT must not block them.
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], health: HealthFn, metrics: MetricsFn
    ) -> None:
        super().__init__(address, _Handler)
        self.health = health
        self.metrics = metrics


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "otel-budget"
    sys_version = ""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._healthz()
        elif path == "/metrics":
            self._metrics()
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    def do_HEAD(self) -> None:
        self.do_GET()

    def _healthz(self) -> None:
        try:
            document = self.server.health()
            body = json.dumps(document, sort_keys=True).encode("utf-8")
            status = 200 if document.get("status") == "ok" else 503
        except Exception as exc:
            self._fail("health", exc)
            return
        self._send(status, body, "application/json")

    def _metrics(self) -> None:
        try:
            body, content_type = self.server.metrics()
            body = bytes(body)
        except Exception as exc:
            self._fail("metrics", exc)
            return
        self._send(200, body, content_type)

    def _fail(self, what: str, exc: Exception) -> None:
        # Only the exception type goes out: its message could carry a store URL or key.
        log.error("%s endpoint failed: %s", what, type(exc).__name__)
        self._send(500, f"{what} unavailable ({type(exc).__name__})\n".encode(),
                   "text/plain; charset=utf-8")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Scrapes every few seconds would flood stderr; keep them at debug level.
        log.debug("%s - %s", self.address_string(), format % args)


class HealthServer:
    """A running server; `.shutdown()` stops it and frees the port (idempotent)."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2},
            name="otel-budget-health", daemon=True,
        )
        self._thread.start()

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def shutdown(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> HealthServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running"
        return f"HealthServer({self.url!r}, {state})"


def serve_health(
    health: HealthFn,
    metrics: MetricsFn,
    host: str = "127.0.0.1",
    port: int = 0,
) -> HealthServer:
    """Serve `GET /healthz` (health() as JSON; 200 if status is "ok", else 503) and
    `GET /metrics` (metrics() -> (body, content type)) from a daemon thread.
    Port 0 picks a free port; read it back from `.port`."""
    server_cls = _Server6 if ":" in host else _Server
    server = server_cls((host, port), health, metrics)
    return HealthServer(server)
