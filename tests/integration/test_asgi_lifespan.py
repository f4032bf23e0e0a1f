"""otel_budget.asgi: the explicit lifespan hooks. FastAPI's TestClient runs the app's
real lifespan; the bare-ASGI case is driven by a minimal lifespan driver (the
server side of the protocol, a stand-in for uvicorn: tests/integration/test_graceful_stop.py
runs the middleware under the real uvicorn)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

import otel_budget
from otel_budget import BudgetConfig, BudgetError, BudgetMeter
from otel_budget.asgi import BudgetLifespan, lifespan
from otel_budget.stores.sqlite import SQLiteStore

Message = MutableMapping[str, Any]


def _meter(tmp_path: Path) -> BudgetMeter:
    config = BudgetConfig(daily_cap_usd=10.0, store_url=f"sqlite:///{tmp_path / 'b.db'}",
                          collect_interval_s=3600, spool_dir=str(tmp_path / "spool"))
    return BudgetMeter(config)


def _stored_total(tmp_path: Path, meter: BudgetMeter) -> float:
    with SQLiteStore(tmp_path / "b.db") as store:
        total: float = otel_budget.read_day(store, meter.day)["total_usd"]
        return total


def test_fastapi_lifespan_starts_the_meter_and_writes_the_final_entries(tmp_path: Path) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    meter = _meter(tmp_path)
    events: list[str] = []

    @asynccontextmanager
    async def own(app: Any) -> AsyncIterator[None]:
        events.append("own startup")
        yield
        events.append("own shutdown")

    app = FastAPI(lifespan=lifespan(meter, inner=own))

    @app.get("/spend")
    def spend() -> dict[str, str]:
        meter.record(0.375, {"agent": "coder"})
        return {"writer": meter.writer_id}

    with TestClient(app) as client:
        assert client.get("/spend").json() == {"writer": meter.writer_id}
        assert events == ["own startup"]
        assert _stored_total(tmp_path, meter) == 0.0  # nothing checkpointed yet
    assert events == ["own startup", "own shutdown"]
    assert _stored_total(tmp_path, meter) == 0.375
    with pytest.raises(BudgetError):
        meter.record(0.1)  # shut down


async def _drive_lifespan(app: Any, while_running: Callable[[], None] = lambda: None) -> list[str]:
    """The server side of the ASGI lifespan protocol: startup, then shutdown."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    sent: list[str] = []

    async def receive() -> Message:
        return await inbox.get()

    async def send(message: Message) -> None:
        sent.append(message["type"])

    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}},
                                   receive, send))
    await inbox.put({"type": "lifespan.startup"})
    while "lifespan.startup.complete" not in sent:
        await asyncio.sleep(0.01)
        assert not task.done() or task.exception() is None, task.exception()
    sent.append("-- running --")
    while_running()
    await inbox.put({"type": "lifespan.shutdown"})
    await asyncio.wait_for(task, 30)
    return sent


def test_middleware_speaks_lifespan_for_an_app_that_does_not(tmp_path: Path) -> None:
    meter = _meter(tmp_path)

    async def bare(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan here")  # what uvicorn calls 'unsupported'
        raise AssertionError("only lifespan is driven here")

    sent = asyncio.run(_drive_lifespan(BudgetLifespan(bare, meter),
                                       while_running=lambda: meter.record(0.5)))
    assert sent == ["lifespan.startup.complete", "-- running --", "lifespan.shutdown.complete"]
    assert _stored_total(tmp_path, meter) == 0.5
    with pytest.raises(BudgetError):
        meter.record(0.1)  # the middleware shut it down


def test_middleware_around_an_app_with_its_own_lifespan(tmp_path: Path) -> None:
    meter = _meter(tmp_path)
    order: list[str] = []

    async def framework(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                order.append(f"app startup, meter writer {meter.writer_id}")
                meter.record(0.25, {"phase": "startup"})  # the meter is started by now
                await send({"type": "lifespan.startup.complete"})
            else:
                order.append("app shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return

    sent = asyncio.run(_drive_lifespan(BudgetLifespan(framework, meter)))
    assert sent == ["lifespan.startup.complete", "-- running --", "lifespan.shutdown.complete"]
    assert order == [f"app startup, meter writer {meter.writer_id}", "app shutdown"]
    assert _stored_total(tmp_path, meter) == 0.25


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="BudgetMeter"):
        lifespan("not a meter")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="BudgetMeter"):
        BudgetLifespan(lambda *a: None, object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="lifespan callable"):
        lifespan(_meter(tmp_path), inner="nope")  # type: ignore[arg-type]
