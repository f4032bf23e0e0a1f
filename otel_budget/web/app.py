"""The status page as an ASGI or WSGI app, to mount in your own server:

    from otel_budget.web import asgi_app
    app.mount("/budget", asgi_app(meter))            # FastAPI / Starlette
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/budget": wsgi_app(meter)})

`GET /` is the page and `GET /api/status` the JSON, relative to where it is
mounted. `source` is a BudgetMeter, a store URL or a PatchStore (see
`otel_budget.web.status.StatusSource`). An app given a URL opens the store and
closes it at the ASGI lifespan's shutdown or on `app.close()`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from ..budgets import Budget
from .page import CSP, render_page
from .status import StatusSource

if TYPE_CHECKING:
    pass

__all__ = ["StatusASGIApp", "StatusWSGIApp", "asgi_app", "respond", "wsgi_app"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

JSON_TYPE = "application/json"
HTML_TYPE = "text/html; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"


def _source(source: Any, budgets: Sequence[Budget] | None,
            timezone_name: str | None) -> StatusSource:
    if isinstance(source, StatusSource):
        return source
    return StatusSource(source, budgets=budgets, timezone_name=timezone_name)


def status_json(document: dict[str, Any]) -> bytes:
    # default=str: a stray datetime or Decimal in a stored row is shown, not a 500.
    text = json.dumps(document, sort_keys=True, default=str)
    return text.encode("utf-8", "backslashreplace")


def respond(source: StatusSource, method: str, path: str
            ) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) for one request to the page or the JSON; blocking."""
    if path in ("", "/"):
        route = "page"
    elif path in ("/api/status", "/api/status/"):
        route = "status"
    else:
        return 404, [("Content-Type", TEXT_TYPE)], b"not found\n"
    if method not in ("GET", "HEAD"):
        return 405, [("Content-Type", TEXT_TYPE), ("Allow", "GET, HEAD")], \
            b"method not allowed\n"
    try:
        document = source.status()
        if route == "page":
            body = render_page(document)
            headers = [("Content-Type", HTML_TYPE), ("Content-Security-Policy", CSP),
                       ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer")]
        else:
            body = status_json(document)
            headers = [("Content-Type", JSON_TYPE), ("X-Content-Type-Options", "nosniff")]
    except Exception as exc:
        # Only the type goes out: a message could quote a store URL or a row.
        log.error("status %s failed: %s", route, type(exc).__name__)
        return 500, [("Content-Type", TEXT_TYPE)], \
            f"status unavailable ({type(exc).__name__})\n".encode()
    headers.append(("Cache-Control", "no-store"))
    return 200, headers, body


class StatusASGIApp:
    """ASGI 3 app (HTTP and lifespan scopes)."""

    def __init__(self, source: StatusSource) -> None:
        self.source = source

    def close(self) -> None:
        self.source.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await asyncio.to_thread(self.close)
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            raise RuntimeError(f"otel_budget status app: unsupported scope {scope['type']!r}")
        path = str(scope.get("path") or "/")
        root = str(scope.get("root_path") or "")
        # Starlette >= 0.33 keeps the mount prefix in path (and in root_path).
        if root and path.startswith(root):
            path = path[len(root):]
        method = str(scope.get("method") or "GET").upper()
        # The store read blocks: never on the event loop.
        status, headers, body = await asyncio.to_thread(respond, self.source, method, path)
        raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        raw_headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error"}


class StatusWSGIApp:
    """WSGI app (PEP 3333)."""

    def __init__(self, source: StatusSource) -> None:
        self.source = source

    def close(self) -> None:
        self.source.close()

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = str(environ.get("REQUEST_METHOD") or "GET").upper()
        path = str(environ.get("PATH_INFO") or "/")
        status, headers, body = respond(self.source, method, path)
        headers.append(("Content-Length", str(len(body))))
        start_response(f"{status} {_REASONS.get(status, '')}", headers)
        return [b"" if method == "HEAD" else body]


def asgi_app(source: Any, *, budgets: Sequence[Budget] | None = None,
             timezone_name: str | None = None) -> StatusASGIApp:
    """The status page and `/api/status` as an ASGI app. `source`: a BudgetMeter, a
    store URL, a PatchStore or a StatusSource; `budgets` (and `timezone_name`)
    describe the budgets when the source is a store."""
    return StatusASGIApp(_source(source, budgets, timezone_name))


def wsgi_app(source: Any, *, budgets: Sequence[Budget] | None = None,
             timezone_name: str | None = None) -> StatusWSGIApp:
    """The status page and `/api/status` as a WSGI app; see `asgi_app`."""
    return StatusWSGIApp(_source(source, budgets, timezone_name))
