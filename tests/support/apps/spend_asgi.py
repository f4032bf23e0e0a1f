"""A plain ASGI app (`app`) and the same as WSGI (`wsgi_app`) for
tests/integration/test_graceful_stop.py, written as the README shows: the
meter is built at import (`otel_budget.from_env()`) and nothing else; no lifespan
code, no shutdown call. Whether the final entries reach the store after a SIGTERM
is the library's doing.

GET /spend?usd=0.0105  records that amount; answers with this process's identity.
GET /health            answers with meter.health() and the pid.
APP_NO_METER=1         the same app without otel_budget (the baseline exit status).
APP_EXPLICIT=1         the app wrapped in otel_budget.asgi.BudgetLifespan.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_NO_METER = os.environ.get("APP_NO_METER") == "1"
if not _NO_METER:
    import otel_budget

    meter = otel_budget.from_env()


async def _reply(send: Send, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":  # what a framework without user lifespan code does
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await _reply(send, _handle(scope.get("path", "/"), scope.get("query_string", b"").decode()))


def _handle(path: str, query: str) -> dict[str, Any]:
    payload: dict[str, Any] = {"pid": os.getpid()}
    if path == "/spend":
        usd = float(parse_qs(query)["usd"][0])
        if not _NO_METER:
            meter.record(usd, {"phase": "request"})
            payload["writer_id"] = meter.writer_id
    elif path == "/health" and not _NO_METER:
        payload.update(meter.health())
    return payload


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    body = json.dumps(_handle(environ.get("PATH_INFO", "/"),
                              environ.get("QUERY_STRING", ""))).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


if os.environ.get("APP_EXPLICIT") == "1" and not _NO_METER:
    from otel_budget.asgi import BudgetLifespan

    app = BudgetLifespan(app, meter)
