"""The status page: `GET /` (HTML) and `GET /api/status` (JSON) for a meter or a store.

`asgi_app(source)` and `wsgi_app(source)` mount it in an app; `otel-budget serve`
and `meter.serve_health(...)` serve it beside /healthz and /metrics.
"""

from __future__ import annotations

from .app import StatusASGIApp, StatusWSGIApp, asgi_app, wsgi_app
from .status import StatusSource

__all__ = ["StatusASGIApp", "StatusSource", "StatusWSGIApp", "asgi_app", "wsgi_app"]
