"""Stopping one meter: the order of `BudgetMeter.shutdown`, under one deadline.

1. Stop the collection timer (a fifth of the time left, at most).
2. Build the final entries (closed days and today) and spool them first: a store
   that hangs past the deadline must not lose the tail.
3. On a thread of its own: one last store round (it replays the spool), the final
   entries written, the leases given back. Waited for at most 4/5 of what is left.
4. Close the notifier dispatcher, then shut our MeterProviders down.
5. Close the store if the meter opened it and the final write is over.

`MeterStop` is also what lifecycle.py keeps for a live meter: a stop signal calls
its `shutdown`, and one that arrives during a shutdown waits for the final write.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Protocol

from opentelemetry.sdk.metrics import MeterProvider

from . import lifecycle
from .notify import NotifierDispatcher
from .reader import BudgetReader
from .stores.base import PatchStore
from .tracker import BudgetTracker

_log = logging.getLogger("otel_budget")

DEFAULT_SHUTDOWN_TIMEOUT_S = 10.0


class _Shutdown(Protocol):
    def __call__(self, timeout: float = ...) -> None: ...


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


class MeterStop:
    def __init__(self, shutdown: _Shutdown) -> None:
        """`shutdown` is the meter's (held weakly: a live meter is not kept alive by
        the registry of live meters)."""
        self._shutdown = weakref.WeakMethod(shutdown)
        self._final_write: threading.Event | None = None

    def shutdown(self, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT_S) -> None:
        method = self._shutdown()
        if method is not None:
            method(timeout)

    def wait_final_write(self, timeout: float) -> bool:
        """For a stop signal that interrupts shutdown(): wait for its final write."""
        done = self._final_write
        return done is None or done.wait(max(0.0, timeout))

    def run(
        self, timeout: float, *, reader: BudgetReader, tracker: BudgetTracker,
        release: Callable[[], None], dispatcher: NotifierDispatcher,
        providers: Sequence[MeterProvider], store_to_close: PatchStore | None,
    ) -> None:
        """The sequence above; `store_to_close` is the store when the meter opened it."""
        deadline = time.monotonic() + max(0.0, float(timeout))
        # lifecycle.begin_stop(self) was called by the meter, before it marked itself
        # closed; lifecycle.stopped(self) ends this.
        reader.stop_timer(_left(deadline) * 0.2)
        entries = tracker.final_entries()
        # Spool first: a store that hangs past the deadline must not lose the tail.
        tracker.spool_entries(entries)
        done = self._final_write = threading.Event()

        def write() -> None:
            try:
                if tracker.store_round(checkpoint=False, wait=True, timeout_s=_left(deadline)):
                    tracker.write_entries(entries)
                release()
            except Exception:
                _log.exception("otel_budget: final checkpoint failed (spooled)")
            finally:
                done.set()

        worker = threading.Thread(target=write, name="OtelBudgetShutdown", daemon=True)
        worker.start()
        if not done.wait(_left(deadline) * 0.8):
            _log.warning("otel_budget: the store did not take the final checkpoint within "
                         "%.1f s; it stays spooled", timeout)
        dispatcher.close(_left(deadline))
        for provider in providers:
            try:
                provider.shutdown(timeout_millis=max(1.0, _left(deadline) * 1000))
            except Exception:
                _log.exception("otel_budget: shutting down the MeterProvider failed")
        if store_to_close is not None and done.is_set():
            store_to_close.close()
        lifecycle.stopped(self)


__all__ = ["DEFAULT_SHUTDOWN_TIMEOUT_S", "MeterStop"]
