"""A Celery app for tests/integration/test_graceful_stop.py, written as the README shows: the
meter is built at import (`otel_budget.from_env()`), here in the worker's main
process before the prefork pool forks its children; no Celery signal code.

Broker: kombu's filesystem transport in APP_CELERY_DIR (no broker server needed).
Each task records its amount and appends one JSON line to APP_CELERY_DIR/done.jsonl
naming the process and writer that recorded it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from celery import Celery  # type: ignore[import-untyped,unused-ignore]

import otel_budget

DIR = Path(os.environ["APP_CELERY_DIR"])


def make_app(name: str = "tests.support.apps.celery_tasks") -> Celery:
    queue = DIR / "queue"
    queue.mkdir(parents=True, exist_ok=True)
    app = Celery(name, broker="filesystem://")
    app.conf.update(
        broker_transport_options={"data_folder_in": str(queue), "data_folder_out": str(queue),
                                  "store_processed": False,
                                  # kombu's default control folder is ./control
                                  "control_folder": str(DIR / "control")},
        worker_enable_remote_control=False,
        worker_hijack_root_logger=False,
        task_acks_late=False,
        broker_connection_retry_on_startup=True,
    )
    return app


app = make_app()
# APP_NO_METER=1: the same worker without otel_budget (the baseline exit status).
meter = None if os.environ.get("APP_NO_METER") == "1" else otel_budget.from_env()


@app.task(name="spend")  # type: ignore[untyped-decorator,unused-ignore]
def spend(usd: float) -> None:
    writer = None
    if meter is not None:
        meter.record(usd, {"phase": "task"})
        writer = meter.writer_id
    line = json.dumps({"pid": os.getpid(), "writer_id": writer, "usd": usd}) + "\n"
    fd = os.open(DIR / "done.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
