"""Notifiers: callables that receive the nudge document once it has been claimed."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError, NotifyError

Notifier = Callable[[dict[str, Any]], object]

_log = logging.getLogger("otel_budget.notify")


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """urllib would turn a redirected POST into a body-less GET and report success:
    a redirect is a failed delivery instead (retried, and visible in the logs)."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> None:
        raise urllib.error.HTTPError(req.full_url, code, "redirect not followed", headers, fp)


_NO_REDIRECTS = urllib.request.build_opener(_RefuseRedirects)


class LoggingNotifier:
    """Logs the nudge at WARNING on the `otel_budget.notify` logger (or one you pass)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or _log

    def __call__(self, nudge: dict[str, Any]) -> None:
        self._logger.warning(
            "budget alert for %s: %.6f of %.2f USD spent (%s%% threshold reached) -> %s",
            nudge.get("date"), nudge.get("daily_spend_usd", 0.0), nudge.get("daily_cap_usd", 0.0),
            format(round(float(nudge.get("ratio", 0.0)) * 100, 2), "g"), nudge.get("to"),
        )

    def __repr__(self) -> str:
        return f"LoggingNotifier(logger={self._logger.name!r})"


class WebhookNotifier:
    """POSTs the nudge as JSON. The URL (and any headers) are treated as secrets:
    webhook URLs carry their token in the path, so only the host is ever shown."""

    def __init__(
        self, url: str, *, timeout_s: float = 5.0, headers: Mapping[str, str] | None = None
    ) -> None:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("webhook url must be an http(s) URL with a host")
        if not (timeout_s > 0):
            raise ConfigError(f"webhook timeout_s must be > 0, got {timeout_s!r}")
        self._url = url
        self._where = f"{parts.scheme}://{parts.hostname}"
        self._timeout_s = float(timeout_s)
        self._headers = {"Content-Type": "application/json", **dict(headers or {})}

    def __call__(self, nudge: dict[str, Any]) -> None:
        body = json.dumps(nudge).encode()
        request = urllib.request.Request(self._url, data=body, headers=self._headers, method="POST")
        try:
            with _NO_REDIRECTS.open(request, timeout=self._timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            raise NotifyError(f"webhook to {self._where} answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise NotifyError(
                f"webhook to {self._where} failed: {type(reason).__name__}"
            ) from None

    def __repr__(self) -> str:
        return f"WebhookNotifier(host={self._where!r}, url=<redacted>)"
