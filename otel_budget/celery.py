"""Celery: the final entries of prefork pool children.

Celery's prefork pool (billiard) ends each child with `os._exit` after sending the
`worker_process_shutdown` signal: `atexit` never runs there, so the child's spend
since its last checkpoint would be lost. `connect()` stops every live meter of the
process on that signal (within shutdown's deadline). The worker's main process
ends normally, where `atexit` already covers it.

`BudgetMeter.start()` calls `connect()` itself when celery has been imported by
then (a tasks module imports celery before it builds its meter). Call it yourself
when the meter starts before celery is imported::

    import otel_budget.celery
    otel_budget.celery.connect()

celery is imported only when `connect()` runs.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["connect", "disconnect"]

_DISPATCH_UID = "otel_budget.worker_process_shutdown"
_lock = threading.Lock()
_connected = False


def _on_process_shutdown(sender: Any = None, **kwargs: Any) -> None:
    from . import lifecycle

    lifecycle.stop_all()


def connect() -> None:
    """Stop this process's meters on Celery's `worker_process_shutdown` (idempotent)."""
    global _connected
    with _lock:
        if _connected:
            return
        from celery import signals  # type: ignore[import-untyped,unused-ignore]

        signals.worker_process_shutdown.connect(_on_process_shutdown, weak=False,
                                                dispatch_uid=_DISPATCH_UID)
        _connected = True


def disconnect() -> None:
    global _connected
    with _lock:
        if not _connected:
            return
        from celery import signals  # type: ignore[import-untyped,unused-ignore]

        signals.worker_process_shutdown.disconnect(_on_process_shutdown,
                                                   dispatch_uid=_DISPATCH_UID)
        _connected = False
