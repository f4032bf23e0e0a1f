"""A small WSGI app for tests/integration/test_gunicorn.py: the meter is built at import, as an
app module would (`otel_budget.from_env()`), so under `gunicorn --preload` it is
started in the master before the workers are forked.

GET /spend?usd=0.0105  records that amount and answers with this worker's identity.
GET /health            answers with meter.health().
APP_PREFORK_USD        an amount recorded at import (in the master under --preload).
APP_REQUEST_SLEEP_S    how long /spend takes after recording.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

import otel_budget

meter = otel_budget.from_env()
_prefork = float(os.environ.get("APP_PREFORK_USD", "0") or 0)
if _prefork:
    meter.record(_prefork, {"phase": "import"})
IMPORTED_IN = os.getpid()
_SLEEP_S = float(os.environ.get("APP_REQUEST_SLEEP_S", "0") or 0)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    if path == "/spend":
        query = parse_qs(environ.get("QUERY_STRING", ""))
        usd = float(query["usd"][0])
        meter.record(usd, {"phase": "request"})
        time.sleep(_SLEEP_S)  # a call takes time, so concurrent requests spread over workers
        payload: dict[str, Any] = {"pid": os.getpid(), "writer_id": meter.writer_id,
                                   "imported_in": IMPORTED_IN}
    elif path == "/health":
        payload = meter.health()
        payload["pid"] = os.getpid()
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    body = json.dumps(payload).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
