"""Explicit ASGI hooks, for people who like to see the meter's lifecycle in the app.

`BudgetMeter.start()` alone already writes the final entries on a graceful stop
(see lifecycle.py); these make the stop an explicit step of the server's lifespan:

    from fastapi import FastAPI
    from otel_budget.asgi import lifespan

    meter = otel_budget.from_env()          # or BudgetMeter(config), not started
    app = FastAPI(lifespan=lifespan(meter))

or, for any ASGI app (Starlette, Quart, a bare callable):

    app = BudgetLifespan(app, meter)

Startup runs `await meter.astart()` (a no-op when already started), shutdown runs
`await meter.ashutdown(timeout)` after the app's own shutdown, while the server
still waits for it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .meter import BudgetMeter

__all__ = ["BudgetLifespan", "lifespan"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]

DEFAULT_TIMEOUT_S = 10.0


def _check_meter(meter: object) -> BudgetMeter:
    from .meter import BudgetMeter

    if not isinstance(meter, BudgetMeter):
        raise TypeError(f"meter must be a BudgetMeter, got {type(meter).__name__}")
    return meter


def lifespan(meter: BudgetMeter, *, inner: Lifespan | None = None,
             timeout: float = DEFAULT_TIMEOUT_S) -> Lifespan:
    """A `lifespan=` for FastAPI/Starlette: starts the meter, runs `inner` (your own
    lifespan, if any) inside, and writes the final entries on the way out."""
    budget_meter = _check_meter(meter)
    if inner is not None and not callable(inner):
        raise TypeError("inner must be a lifespan callable (app -> async context manager)")

    @asynccontextmanager
    async def run(app: Any) -> AsyncIterator[Any]:
        await budget_meter.astart()
        try:
            if inner is None:
                yield None
            else:
                async with inner(app) as state:
                    yield state
        finally:
            await budget_meter.ashutdown(timeout)

    return run


class BudgetLifespan:
    """ASGI middleware: the meter starts on `lifespan.startup` and stops after the
    app's `lifespan.shutdown`. An app that does not speak the lifespan protocol
    (raises on it) gets it spoken for it."""

    def __init__(self, app: ASGIApp, meter: BudgetMeter, *,
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        if not callable(app):
            raise TypeError("app must be an ASGI callable")
        self.app = app
        self.meter = _check_meter(meter)
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        meter = self.meter
        state = {"startup_seen": False, "startup_sent": False, "stopped": False}

        async def receive_() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                state["startup_seen"] = True
                await meter.astart()
            return message

        async def send_(message: Message) -> None:
            kind = message["type"]
            if kind.startswith("lifespan.startup."):
                state["startup_sent"] = True
            elif kind.startswith("lifespan.shutdown.") and not state["stopped"]:
                state["stopped"] = True
                await meter.ashutdown(self.timeout)
            await send(message)

        try:
            await self.app(scope, receive_, send_)
        except Exception:
            if state["startup_sent"]:
                raise
            await self._speak_lifespan(receive, send, state["startup_seen"])
            return
        if not state["stopped"] and state["startup_sent"]:
            # The app returned without a shutdown message (some frameworks do when
            # they have nothing to run): the server's shutdown still ends the process.
            state["stopped"] = True
            await meter.ashutdown(self.timeout)

    async def _speak_lifespan(self, receive: Receive, send: Send, startup_seen: bool) -> None:
        if not startup_seen:
            message = await receive()
            if message["type"] != "lifespan.startup":
                return
            await self.meter.astart()
        await send({"type": "lifespan.startup.complete"})
        while True:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self.meter.ashutdown(self.timeout)
                await send({"type": "lifespan.shutdown.complete"})
                return
