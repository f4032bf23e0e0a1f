"""A tiny stdlib HTTP server for `/healthz` and `/metrics`.

It knows nothing about the meter: it calls two functions, so it can be mounted on
any health source and tested with stubs. It binds loopback by default because the
health document names instances and spend, which is not for the open internet.

Connections cost no thread while they are idle. One I/O thread accepts connections
and reads request heads without blocking (a selector); a connection that sends
nothing for `idle_timeout_s`, or has not sent a whole request head within four times
that, is closed. A complete request is handed to a bounded pool of at most
`max_threads` handler threads (started on demand). When every handler is busy and
`max_threads` more requests are already waiting, a new request gets an immediate
`503 busy` instead of waiting. `/healthz` has a lane of its own (two handler threads
and its own queue), so scrapes piling up on `/metrics` or the status page never
starve the liveness probe; and concurrent `/metrics` requests share one render (a
request arriving during a render waits for it rather than starting another), so
many slow scrapers cost one render's CPU at a time, not one each.
At most `max_connections` connections are kept open:
beyond that the one idle the longest is closed, so silent clients cannot take the
process to its file descriptor limit and make `/healthz` unreachable. Every answer
closes its connection (HTTP/1.0 semantics).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

__all__ = ["HealthServer", "serve_health"]

log = logging.getLogger(__name__)

HealthFn = Callable[[], dict[str, Any]]
MetricsFn = Callable[[], tuple[bytes, str]]
#: (method, path) -> (status, headers, body): every path but /healthz and /metrics
#: (the status page, otel_budget.web.app.respond).
PagesFn = Callable[[str, str], tuple[int, list[tuple[str, str]], bytes]]

_MAX_HEAD_BYTES = 16 * 1024
_BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
         b"Content-Length: 5\r\nRetry-After: 1\r\nConnection: close\r\n\r\nbusy\n")
_TOO_LARGE = (b"HTTP/1.0 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n"
              b"Connection: close\r\n\r\n")


class _SocketWriter(io.BufferedIOBase):
    """wfile for a handler: every write is a sendall (bounded by the socket timeout)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sock.sendall(data)
        with memoryview(data) as view:
            return view.nbytes


class _Handler(BaseHTTPRequestHandler):
    server: Any  # _Core: what the stdlib handler reads from it is documented below
    server_version = "otel-budget"
    sys_version = ""

    def __init__(self, sock: socket.socket, head: bytes, address: Any, core: _Core) -> None:
        self._head = head
        super().__init__(sock, address, core)  # type: ignore[arg-type]

    def setup(self) -> None:
        self.connection = self.request
        self.rfile = io.BytesIO(self._head)
        self.wfile = _SocketWriter(self.request)

    def finish(self) -> None:
        pass  # the pool closes the socket

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._healthz()
        elif path == "/metrics":
            self._metrics()
        elif self.server.pages is not None:
            self._page(path)
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    def _page(self, path: str) -> None:
        try:
            status, headers, body = self.server.pages(self.command, path)
            content_type = next((v for k, v in headers if k.lower() == "content-type"),
                                "application/octet-stream")
            extra = [(k, v) for k, v in headers if k.lower() not in (
                "content-type", "content-length", "cache-control", "connection")]
        except Exception as exc:
            self._fail("page", exc)
            return
        self._send(status, body, content_type, extra)

    def do_HEAD(self) -> None:
        self.do_GET()

    def _healthz(self) -> None:
        try:
            document = self.server.health()
            # A lone surrogate in a string is escaped by json (ensure_ascii); any
            # other unencodable text is replaced, never a 500.
            text = json.dumps(document, sort_keys=True)
            body = text.encode("utf-8", "backslashreplace")
            status = 200 if document.get("status") == "ok" else 503
        except Exception as exc:
            self._fail("health", exc)
            return
        self._send(status, body, "application/json")

    def _metrics(self) -> None:
        try:
            raw, content_type = self.server.metrics()
            if isinstance(raw, str):
                body = raw.encode("utf-8", "backslashreplace")
            elif isinstance(raw, (bytes, bytearray, memoryview)):
                body = bytes(raw)
            else:
                raise TypeError(f"metrics() body is {type(raw).__name__}, not bytes")
            if not isinstance(content_type, str):
                raise TypeError("metrics() content type is not a str")
        except Exception as exc:
            self._fail("metrics", exc)
            return
        self._send(200, body, content_type)

    def _fail(self, what: str, exc: Exception) -> None:
        # Only the exception type goes out: its message could carry a store URL or key.
        log.error("%s endpoint failed: %s", what, type(exc).__name__)
        self._send(500, f"{what} unavailable ({type(exc).__name__})\n".encode(),
                   "text/plain; charset=utf-8")

    def _send(self, status: int, body: bytes, content_type: str,
              headers: list[tuple[str, str]] | None = None) -> None:
        # Header values must be latin-1: replace anything else rather than fail.
        content_type = content_type.encode("latin-1", "replace").decode("latin-1")
        content_type = content_type.replace("\r", " ").replace("\n", " ")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        for name, value in headers or ():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Scrapes every few seconds would flood stderr; keep them at debug level.
        log.debug("%s - %s", self.address_string(), format % args)


class _Pending:
    __slots__ = ("address", "buffer", "last", "sock", "started")

    def __init__(self, sock: socket.socket, address: Any, now: float) -> None:
        self.sock = sock
        self.address = address
        self.buffer = bytearray()
        self.started = now
        self.last = now


class _SingleFlight:
    """Calls of `fn` that overlap share one run: the first caller runs it, the
    others wait for its result (or its exception)."""

    def __init__(self, fn: MetricsFn) -> None:
        self._fn = fn
        self._lock = threading.Lock()
        self._current: _Flight | None = None
        self.runs = 0

    def __call__(self) -> tuple[bytes, str]:
        with self._lock:
            flight = self._current
            leader = flight is None
            if flight is None:
                flight = self._current = _Flight()
                self.runs += 1
        if leader:
            try:
                flight.result = self._fn()
            except Exception as exc:
                flight.error = exc
            finally:
                with self._lock:
                    self._current = None
                flight.done.set()
        else:
            flight.done.wait()
        if flight.error is not None:
            raise flight.error
        assert flight.result is not None
        return flight.result


class _Flight:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: tuple[bytes, str] | None = None
        self.error: Exception | None = None


class _Lane:
    """A bounded pool of handler threads (started on demand) with its own queue."""

    def __init__(self, core: _Core, max_threads: int, queue_size: int, name: str) -> None:
        self._core = core
        self._max_threads = max_threads
        self._name = name
        self._ready: queue.Queue[tuple[socket.socket, bytes, Any] | None] = queue.Queue(
            maxsize=queue_size
        )
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self._idle_workers = 0

    def submit(self, sock: socket.socket, head: bytes, address: Any) -> bool:
        """False when every handler is busy and the queue is full."""
        with self._lock:
            # _idle_workers = handlers not answering a request - requests queued.
            self._idle_workers -= 1
            if self._idle_workers < 0 and len(self._workers) < self._max_threads:
                worker = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._workers.append(worker)
                self._idle_workers += 1
                worker.start()
        try:
            self._ready.put_nowait((sock, head, address))
        except queue.Full:
            with self._lock:
                self._idle_workers += 1
            return False
        return True

    def _work(self) -> None:
        while True:
            item = self._ready.get()
            if item is None:
                return
            sock, head, address = item
            try:
                sock.setblocking(True)
                sock.settimeout(self._core.idle_timeout_s)  # a client that will not read
                _Handler(sock, head, address, self._core)
            except Exception as exc:
                log.debug("health request failed: %s", type(exc).__name__)
            finally:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
                with self._lock:
                    self._idle_workers += 1

    def close(self, deadline: float) -> None:
        with self._lock:
            workers = list(self._workers)
        # Drop requests not yet started; then one sentinel per handler thread.
        while True:
            try:
                item = self._ready.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].close()
        for _ in workers:
            with contextlib.suppress(queue.Full):
                self._ready.put_nowait(None)
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))


_HEALTH_THREADS = 2


def _is_healthz(head: bytes) -> bool:
    line = head.split(b"\n", 1)[0].split()
    return len(line) >= 2 and line[0] in (b"GET", b"HEAD") and (
        line[1].split(b"?", 1)[0] == b"/healthz")


class _Core:
    """The listening socket, the I/O thread and the handler lanes."""

    def __init__(self, host: str, port: int, health: HealthFn, metrics: MetricsFn, *,
                 idle_timeout_s: float, max_threads: int, max_connections: int,
                 pages: PagesFn | None = None) -> None:
        self.health = health
        self.metrics = _SingleFlight(metrics)
        self.pages = pages
        self.idle_timeout_s = idle_timeout_s
        self.head_timeout_s = 4 * idle_timeout_s
        self.max_threads = max_threads
        self.max_connections = max_connections
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            # Tests and restarts rebind quickly; a lingering TIME_WAIT must not block them.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(128)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self.listener = listener
        self.server_address: tuple[Any, ...] = listener.getsockname()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = threading.Event()
        self._general = _Lane(self, max_threads, max_threads, "otel-budget-health-handler")
        self._probes = _Lane(self, _HEALTH_THREADS, max_threads, "otel-budget-healthz")
        self._selector = selectors.DefaultSelector()
        self._io_thread = threading.Thread(target=self._io_loop, name="otel-budget-health",
                                           daemon=True)
        self._io_thread.start()

    # --- I/O thread ---------------------------------------------------------------------

    def _io_loop(self) -> None:
        sel = self._selector
        pending: dict[socket.socket, _Pending] = {}
        sel.register(self.listener, selectors.EVENT_READ, "accept")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                timeout = 0.5
                for conn in pending.values():
                    timeout = min(timeout, conn.last + self.idle_timeout_s - now,
                                  conn.started + self.head_timeout_s - now)
                for key, _ in sel.select(max(0.0, timeout)):
                    if key.data == "accept":
                        self._accept(pending)
                    elif key.data == "wake":
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                    else:
                        self._read(key.data, pending)
                now = time.monotonic()
                for conn in [c for c in pending.values()
                             if now - c.last >= self.idle_timeout_s
                             or now - c.started >= self.head_timeout_s]:
                    self._drop(conn, pending)
        except Exception:  # pragma: no cover - a bug here must not go unnoticed
            log.exception("health server I/O loop failed")
        finally:
            for conn in list(pending.values()):
                self._drop(conn, pending)
            sel.close()

    def _accept(self, pending: dict[socket.socket, _Pending]) -> None:
        for _ in range(64):
            try:
                sock, address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and friends: free the longest-idle connection's descriptor and
                # try again; with none to free, pause briefly instead of spinning.
                log.warning("health server cannot accept: %s", type(exc).__name__)
                if pending:
                    self._drop(min(pending.values(), key=lambda c: c.last), pending)
                    continue
                time.sleep(0.05)
                return
            sock.setblocking(False)
            if len(pending) >= self.max_connections:
                oldest = min(pending.values(), key=lambda c: c.last)
                self._drop(oldest, pending)
            conn = _Pending(sock, address, time.monotonic())
            pending[sock] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: _Pending, pending: dict[socket.socket, _Pending]) -> None:
        try:
            data = conn.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn, pending)
            return
        if not data:
            self._drop(conn, pending)
            return
        conn.buffer += data
        conn.last = time.monotonic()
        buffer = bytes(conn.buffer)
        if b"\r\n\r\n" in buffer or b"\n\n" in buffer:
            self._selector.unregister(conn.sock)
            del pending[conn.sock]
            self._dispatch(conn.sock, buffer, conn.address)
        elif len(buffer) > _MAX_HEAD_BYTES:
            self._answer_and_close(conn.sock, _TOO_LARGE)
            self._selector.unregister(conn.sock)
            del pending[conn.sock]

    def _drop(self, conn: _Pending, pending: dict[socket.socket, _Pending]) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        pending.pop(conn.sock, None)
        conn.sock.close()

    def _answer_and_close(self, sock: socket.socket, answer: bytes) -> None:
        with contextlib.suppress(OSError):
            sock.send(answer)  # best effort, never blocks: the socket is non-blocking
        sock.close()

    def _dispatch(self, sock: socket.socket, head: bytes, address: Any) -> None:
        lane = self._probes if _is_healthz(head) else self._general
        if not lane.submit(sock, head, address):
            log.warning("health server busy: answered 503")
            self._answer_and_close(sock, _BUSY)

    # --- lifecycle -----------------------------------------------------------------------------

    def close(self, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._io_thread.join(max(0.0, deadline - time.monotonic()))
        self.listener.close()
        self._general.close(deadline)
        self._probes.close(deadline)
        self._wake_r.close()
        self._wake_w.close()


class HealthServer:
    """A running server; `.shutdown()` stops it and frees the port (idempotent)."""

    def __init__(self, core: _Core) -> None:
        self._core = core
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def host(self) -> str:
        return str(self._core.server_address[0])

    @property
    def port(self) -> int:
        return int(self._core.server_address[1])

    @property
    def url(self) -> str:
        host = self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def shutdown(self) -> None:
        """Stop accepting, close idle connections, and wait (up to 5 s) for requests
        being answered to finish."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._core.close()

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
    *,
    idle_timeout_s: float = 5.0,
    max_threads: int = 16,
    max_connections: int = 256,
    pages: PagesFn | None = None,
) -> HealthServer:
    """Serve `GET /healthz` (health() as JSON; 200 if status is "ok", else 503) and
    `GET /metrics` (metrics() -> (body, content type)) from daemon threads; every
    other path goes to `pages(method, path)` when given (the status page).

    Port 0 picks a free port; read it back from `.port`. A connection idle for
    `idle_timeout_s` is closed; at most `max_threads` requests are answered at once
    (up to `max_threads` more wait; beyond that a request gets an immediate 503);
    at most `max_connections` connections are held open (the longest idle is closed
    first)."""
    if not (idle_timeout_s > 0):
        raise ValueError(f"idle_timeout_s must be > 0, got {idle_timeout_s!r}")
    if not (isinstance(max_threads, int) and max_threads >= 1):
        raise ValueError(f"max_threads must be an int >= 1, got {max_threads!r}")
    if not (isinstance(max_connections, int) and max_connections >= 1):
        raise ValueError(f"max_connections must be an int >= 1, got {max_connections!r}")
    core = _Core(host, port, health, metrics, idle_timeout_s=float(idle_timeout_s),
                 max_threads=max_threads, max_connections=max_connections, pages=pages)
    return HealthServer(core)
