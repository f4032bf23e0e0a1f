"""Notifiers: callables that receive the nudge document once it has been claimed.

A notifier is any callable taking the nudge dict; raising means "not delivered".
`NotifierDispatcher` delivers nudges off the caller's thread, retrying each notifier
with exponential backoff and abandoning calls that hang. `WebhookNotifier` POSTs the
nudge as JSON with httpx (its proxies, no_proxy, CONNECT and certificate checks) within
one deadline for the whole call; `SlackNotifier` posts a Slack `{"text": ...}` message
to an incoming-webhook URL.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import random
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from .errors import ConfigError, NotifyError
from .redact import describe_exception, redact_secrets
from .stores.layout import ratio_pct

__all__ = [
    "LoggingNotifier",
    "Notifier",
    "NotifierDispatcher",
    "SlackNotifier",
    "WebhookNotifier",
    "nudge_summary",
]

Notifier = Callable[[dict[str, Any]], object]

_log = logging.getLogger("otel_budget.notify")

_MAX_RESPONSE_BYTES = 64 * 1024


def _pct(ratio: Any) -> str:
    try:
        return ratio_pct(float(ratio))
    except (TypeError, ValueError):
        return "?"


def _money(value: Any) -> str:
    try:
        return f"${float(value):,.2f}"
    except (TypeError, ValueError):
        return "$?"


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def nudge_summary(nudge: Mapping[str, Any]) -> str:
    """One readable line naming the budget, window, spend, cap and threshold.

    Works for version 1 nudges (`date`, `daily_spend_usd`, `daily_cap_usd`) and
    version 2 ones (`budget`, `period`, `window`, `spend_usd`, `cap_usd`)."""
    budget = nudge.get("budget") or "daily"
    period = nudge.get("period") or "day"
    window = nudge.get("window") or nudge.get("date") or "?"
    spend = nudge.get("spend_usd", nudge.get("daily_spend_usd"))
    cap = nudge.get("cap_usd", nudge.get("daily_cap_usd"))
    try:
        used = f"{float(spend) / float(cap) * 100:.1f}%" if cap else "?"
    except (TypeError, ValueError):
        used = "?"
    text = (
        f"Budget alert: budget {budget!s} ({period} {window}) has spent {_money(spend)} "
        f"of its {_money(cap)} cap ({used} used; {_pct(nudge.get('ratio'))}% threshold reached)"
    )
    instance = nudge.get("instance_id")
    if instance:
        text += f" on {instance}"
    to = nudge.get("to")
    if to:
        text += f" -> {to}"
    return text


def _nudge_name(nudge: Mapping[str, Any]) -> str:
    """A short id for logs: budget/window/pct."""
    budget = nudge.get("budget") or "daily"
    window = nudge.get("window") or nudge.get("date") or "?"
    return f"{budget}/{window}/{_pct(nudge.get('ratio'))}%"


class LoggingNotifier:
    """Logs the nudge at WARNING on the `otel_budget.notify` logger (or one you pass)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or _log

    def __call__(self, nudge: dict[str, Any]) -> None:
        self._logger.warning(
            "budget alert for %s: %.6f of %.2f USD spent (%s%% threshold reached) -> %s",
            nudge.get("window") or nudge.get("date"),
            _float(nudge.get("spend_usd", nudge.get("daily_spend_usd"))),
            _float(nudge.get("cap_usd", nudge.get("daily_cap_usd"))),
            _pct(nudge.get("ratio", 0.0)), nudge.get("to"),
        )

    def __repr__(self) -> str:
        return f"LoggingNotifier(logger={self._logger.name!r})"


# --- webhooks ---------------------------------------------------------------------------

_in_webhook_call = threading.local()


class _QuietDuringWebhookCalls(logging.Filter):
    """httpx logs every request's full URL at INFO, and a webhook URL carries its token:
    records it emits on a thread inside one of our calls are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_in_webhook_call, "active", False)


logging.getLogger("httpx").addFilter(_QuietDuringWebhookCalls())


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every operation gets only what is left of one deadline,
    so a server trickling a byte at a time cannot stretch the call past it (httpx's
    own timeouts are per operation)."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def _left(self, timeout: float | None, error: type[Exception]) -> float:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise error("webhook deadline passed")
        return remaining if timeout is None else min(timeout, remaining)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname,
                                      self._left(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(inner, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, deadline: float) -> None:
        self._backend = httpcore.SyncBackend()
        self._deadline = deadline

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise httpcore.ConnectTimeout("webhook deadline passed")
        stream = self._backend.connect_tcp(
            host, port, remaining if timeout is None else min(timeout, remaining),
            local_address=local_address, socket_options=socket_options)
        return _DeadlineStream(stream, self._deadline)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def _bind_deadline(client: httpx.Client, deadline: float) -> None:
    """Put every transport of `client` on a deadline-bound network backend.
    Reaches into httpx.HTTPTransport._pool and httpcore's pool `_network_backend`
    (checked against httpx 0.28 / httpcore 1.0): httpx takes no network backend,
    and it is the one place a whole-call deadline can be enforced per read."""
    backend = _DeadlineBackend(deadline)
    transports = [client._transport, *client._mounts.values()]
    for transport in transports:
        if transport is None:  # a no_proxy pattern: httpx goes direct through _transport
            continue
        pool = getattr(transport, "_pool", None)
        if pool is None or not hasattr(pool, "_network_backend"):
            raise NotifyError("webhook: this httpx version cannot bound the call's deadline")
        pool._network_backend = backend


def _ssl_verify(verify: object) -> ssl.SSLContext | bool:
    """httpx's `verify`, with a CA bundle path (file or directory) loaded here: httpx
    deprecates paths."""
    if isinstance(verify, (ssl.SSLContext, bool)):
        return verify
    if isinstance(verify, (str, os.PathLike)):
        path = os.fspath(verify)
        try:
            if os.path.isdir(path):
                return ssl.create_default_context(capath=path)
            return ssl.create_default_context(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"webhook verify: cannot load the CA bundle ({type(exc).__name__})"
                              ) from None
    raise ConfigError("webhook verify must be True, False, a CA bundle path or an ssl.SSLContext")


def _in_no_proxy_range(host: str) -> bool:
    """Whether `host` is an IP address inside a CIDR range listed in no_proxy."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    listed = os.environ.get("no_proxy") or os.environ.get("NO_PROXY") or ""
    for entry in listed.split(","):
        entry = entry.strip()
        if "/" not in entry:
            continue
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost non-httpx exception (an ssl or socket error), for a message that
    names what failed without quoting anything (proxy answers and URLs stay out)."""
    seen: set[int] = set()
    current: BaseException = exc
    while id(current) not in seen:
        seen.add(id(current))
        nxt = current.__cause__ or current.__context__
        if nxt is None:
            break
        current = nxt
    return current


class WebhookNotifier:
    """POSTs the nudge as JSON with httpx; any 2xx answer is a delivery.

    `timeout_s` bounds the whole call (connect, TLS handshake, send, and reading the
    answer together), not each socket operation. Redirects are not followed (a 3xx is
    a failed delivery: following one would send the token-bearing body elsewhere). The
    URL and headers are secrets (webhook URLs carry their token in the path): only
    `scheme://host` is ever shown.

    Proxies are httpx's: `proxy` if given, else with `trust_env` (the default)
    ``https_proxy``/``http_proxy``/``all_proxy`` and ``no_proxy``, read at each call. An
    https URL goes through the proxy by CONNECT and stays TLS end to end, with the
    webhook host's certificate checked. `verify` (a CA bundle path, an
    `ssl.SSLContext`, or False) is httpx's, for a private CA; `ssl_context` is the same
    as `verify=context`."""

    def __init__(
        self, url: str, *, timeout_s: float = 5.0, headers: Mapping[str, str] | None = None,
        proxy: str | None = None, trust_env: bool = True,
        ssl_context: ssl.SSLContext | None = None, verify: ssl.SSLContext | str | bool = True,
    ) -> None:
        try:
            parts = urlsplit(url) if isinstance(url, str) else None
            port = parts.port if parts is not None else None
        except ValueError:
            parts, port = None, None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("webhook url must be an http(s) URL with a host")
        if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
            raise ConfigError(f"webhook timeout_s must be > 0, got {timeout_s!r}")
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise ConfigError("webhook ssl_context must be an ssl.SSLContext")
        if proxy is not None and not isinstance(proxy, str):
            raise ConfigError("webhook proxy must be a URL string")
        self._url = url
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        self._where = f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
        self._endpoint = (parts.hostname, port or (443 if parts.scheme == "https" else 80))
        self._timeout_s = float(timeout_s)
        self._headers = {"Content-Type": "application/json", **dict(headers or {})}
        self._verify = _ssl_verify(ssl_context if ssl_context is not None else verify)
        self._proxy = proxy
        self._trust_env = bool(trust_env)

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    def _body(self, nudge: dict[str, Any]) -> bytes:
        return json.dumps(nudge).encode()

    def __call__(self, nudge: dict[str, Any]) -> None:
        _in_webhook_call.active = True
        try:
            self._post(self._body(nudge))
        finally:
            _in_webhook_call.active = False

    def _client(self, deadline: float) -> httpx.Client:
        host = self._endpoint[0]
        # httpx matches no_proxy entries as names only; curl and the old resolver also
        # read CIDR ranges there ("10.0.0.0/8"), so those are applied here.
        direct = (self._trust_env and self._proxy is None and _in_no_proxy_range(host))
        mounts: dict[str, httpx.BaseTransport | None] = (
            {f"all://{host if ':' not in host else f'[{host}]'}": None} if direct else {})
        try:
            client = httpx.Client(
                proxy=self._proxy, trust_env=self._trust_env, verify=self._verify,
                follow_redirects=False, timeout=self._timeout_s, mounts=mounts,
            )
        except Exception as exc:  # a malformed proxy setting: its text stays unshown
            raise NotifyError(f"webhook to {self._where} failed: the proxy setting is "
                              f"malformed ({type(exc).__name__})") from None
        _bind_deadline(client, deadline)
        return client

    def _post(self, body: bytes) -> None:
        deadline = time.monotonic() + self._timeout_s
        connected: list[tuple[str, int]] = []

        def trace(event: str, info: Mapping[str, Any]) -> None:
            # httpcore's trace hook: where the socket really went (the proxy, if any).
            if event == "connection.connect_tcp.started":
                connected.append((str(info.get("host")), int(info.get("port") or 0)))

        def via() -> str:
            hops = [hop for hop in connected if hop != self._endpoint]
            if not hops:
                return ""
            host, port = hops[-1]
            return f" via proxy {host if ':' not in host else f'[{host}]'}:{port}"

        with self._client(deadline) as client:
            try:
                with client.stream("POST", self._url, content=body, headers=self._headers,
                                   extensions={"trace": trace}) as response:
                    status = response.status_code
                    read = 0
                    for chunk in response.iter_raw():
                        read += len(chunk)
                        if read >= _MAX_RESPONSE_BYTES:
                            break
            except httpx.TimeoutException:
                raise NotifyError(f"webhook to {self._where}{via()} failed: timeout after "
                                  f"{self._timeout_s:g} s") from None
            except httpx.ProxyError as exc:
                # httpcore's text is the proxy's status line: only its code is shown.
                code = str(exc).split(" ", 1)[0]
                shown = f"HTTP {code}" if code.isdigit() else "an error"
                raise NotifyError(f"webhook to {self._where} failed:{via().replace(' via', '')}"
                                  f" answered {shown} to CONNECT") from None
            except (httpx.HTTPError, OSError, ValueError) as exc:
                raise NotifyError(f"webhook to {self._where}{via()} failed: "
                                  f"{type(_root_cause(exc)).__name__}") from None
        if status == 407 and via():
            raise NotifyError(f"webhook to {self._where} failed:{via().replace(' via', '')} "
                              "answered HTTP 407 (proxy authentication required)")
        if 300 <= status < 400:
            raise NotifyError(
                f"webhook to {self._where} answered HTTP {status} (redirect not followed)"
            )
        if not 200 <= status < 300:
            raise NotifyError(f"webhook to {self._where} answered HTTP {status}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(host={self._where!r}, url=<redacted>)"


class SlackNotifier(WebhookNotifier):
    """Posts `{"text": "<one line>"}` to a Slack-compatible incoming webhook
    (`https://hooks.slack.com/services/T.../B.../...`; Mattermost, Rocket.Chat and
    Discord's `/slack` endpoints accept the same body). The line names the budget,
    window, spend, cap, share used and threshold; `prefix` (e.g. ":warning:" or
    "<!here>") is put in front as given."""

    def __init__(
        self, url: str, *, timeout_s: float = 5.0, headers: Mapping[str, str] | None = None,
        prefix: str = "", proxy: str | None = None, trust_env: bool = True,
        ssl_context: ssl.SSLContext | None = None, verify: ssl.SSLContext | str | bool = True,
    ) -> None:
        super().__init__(url, timeout_s=timeout_s, headers=headers, proxy=proxy,
                         trust_env=trust_env, ssl_context=ssl_context, verify=verify)
        self._prefix = prefix

    def text(self, nudge: Mapping[str, Any]) -> str:
        summary = nudge_summary(nudge)
        # Slack reads &, < and > as markup: escape them in our text.
        summary = summary.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return f"{self._prefix} {summary}" if self._prefix else summary

    def _body(self, nudge: dict[str, Any]) -> bytes:
        return json.dumps({"text": self.text(nudge)}).encode()


# --- the dispatcher ---------------------------------------------------------------------

class _Delivery:
    __slots__ = ("nudge", "remaining")

    def __init__(self, nudge: dict[str, Any], remaining: set[int]) -> None:
        self.nudge = nudge
        self.remaining = remaining


class _NotifierState:
    __slots__ = ("abandoned", "call_deadline", "call_id", "delivery", "failures", "inflight",
                 "next_at", "shown")

    def __init__(self, shown: str) -> None:
        self.shown = shown
        self.failures = 0
        self.next_at = 0.0
        self.inflight = False
        self.abandoned = False
        self.call_deadline = 0.0
        self.call_id = 0
        self.delivery: _Delivery | None = None


_DISPATCHERS: weakref.WeakSet[NotifierDispatcher] = weakref.WeakSet()
_MAX_IDLE_WAIT_S = 1.0  # the worker re-checks that its dispatcher is still referenced


def _after_fork_in_child() -> None:
    for dispatcher in list(_DISPATCHERS):
        dispatcher._reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class NotifierDispatcher:
    """Delivers nudges to notifiers from a background thread.

    `submit(nudge)` only queues. A daemon worker calls every notifier that has not
    yet taken the nudge, each call in a helper thread with a deadline of
    `call_timeout_s`: a call that has not returned by then counts as a failure and is
    abandoned; that notifier is skipped until the stuck call returns (at most one
    call per notifier is ever in flight, so threads stay bounded by the number of
    notifiers). A failing notifier is retried after an exponential backoff
    (`backoff_initial_s`, doubling up to `backoff_max_s`, with jitter: each delay is
    drawn from [d/2, d]); a success resets it. Notifiers run in parallel: one that
    hangs or fails does not delay the others. Failures are logged at WARNING with
    the notifier's (redacted) repr and a redacted message, never a URL.

    `close(timeout_s)` retries every pending delivery once more at once, waits at
    most `timeout_s` in total, then stops the worker; what is still undelivered is
    logged and dropped. Nudges submitted after `close()` are logged and dropped.

    `clock` (seconds, monotonic) times the backoff and the call deadlines; a test hands
    in a manual one and calls `wake()` after moving it, instead of sleeping.

    After `os.fork()` the child's dispatcher starts empty (the parent still owns what
    was queued) and starts its worker on its first `submit`."""

    def __init__(
        self,
        notifiers: Iterable[Notifier],
        *,
        call_timeout_s: float = 10.0,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._notifiers = list(notifiers)
        self._clock = clock
        for notifier in self._notifiers:
            if not callable(notifier):
                raise ConfigError(f"notifier {_shown(notifier)} is not callable")
        for name, value in (("call_timeout_s", call_timeout_s),
                            ("backoff_initial_s", backoff_initial_s),
                            ("backoff_max_s", backoff_max_s)):
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
                raise ConfigError(f"NotifierDispatcher {name} must be > 0, got {value!r}")
        if backoff_max_s < backoff_initial_s:
            raise ConfigError("NotifierDispatcher backoff_max_s must be >= backoff_initial_s")
        self._call_timeout_s = float(call_timeout_s)
        self._backoff_initial_s = float(backoff_initial_s)
        self._backoff_max_s = float(backoff_max_s)
        self._random = random.Random()
        self._init_state()
        _DISPATCHERS.add(self)

    def _init_state(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._pending: list[_Delivery] = []
        self._states = [_NotifierState(_shown(n)) for n in self._notifiers]
        self._worker: threading.Thread | None = None
        self._closing = False
        self._closed = False

    def _reset_after_fork(self) -> None:
        closed = self._closed
        self._random = random.Random()  # not the parent's jitter sequence
        self._init_state()
        self._closing = self._closed = closed

    # --- public API --------------------------------------------------------------------

    def submit(self, nudge: Mapping[str, Any]) -> None:
        """Queue `nudge` for every notifier; returns at once."""
        copy = dict(nudge)
        with self._cond:
            if self._closing:
                _log.warning("notifier dispatcher is closed: nudge %s not delivered",
                             _nudge_name(copy))
                return
            if not self._notifiers:
                return
            self._pending.append(_Delivery(copy, set(range(len(self._notifiers)))))
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(
                    target=_worker_main, args=(weakref.ref(self),),
                    name="otel-budget-notify", daemon=True,
                )
                self._worker.start()
            self._cond.notify_all()

    def wake(self) -> None:
        """Have the worker look at the clock now (after a manual clock moved)."""
        with self._cond:
            self._cond.notify_all()

    def pending(self) -> list[dict[str, Any]]:
        """Copies of the nudges some notifier has not yet taken, oldest first."""
        with self._cond:
            return [dict(d.nudge) for d in self._pending]

    def status(self) -> list[dict[str, Any]]:
        """Per notifier: its (redacted) repr, consecutive failures, seconds until the
        next retry, and whether a call is stuck past its deadline."""
        now = self._clock()
        with self._cond:
            return [
                {"notifier": s.shown, "failures": s.failures,
                 "retry_in_s": round(max(0.0, s.next_at - now), 3) if s.failures else 0.0,
                 "stuck": s.abandoned}
                for s in self._states
            ]

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is pending within `timeout_s` (in total), then stop."""
        deadline = time.monotonic() + max(0.0, float(timeout_s))
        with self._cond:
            if self._closed:
                return
            if not self._closing:
                self._closing = True
                now = self._clock()
                for state in self._states:
                    state.next_at = min(state.next_at, now)  # one last try, now
                self._cond.notify_all()
            while self._pending and self._worker is not None and self._worker.is_alive():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._closed = True
            left = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
            worker = self._worker
        for delivery in left:
            _log.warning(
                "notifier dispatcher closed with nudge %s undelivered to %s",
                _nudge_name(delivery.nudge),
                ", ".join(self._states[i].shown for i in sorted(delivery.remaining)),
            )
        if worker is not None and worker is not threading.current_thread():
            worker.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> NotifierDispatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"NotifierDispatcher([{', '.join(s.shown for s in self._states)}])"

    # --- the worker ------------------------------------------------------------------------

    def _backoff(self, failures: int) -> float:
        delay = min(self._backoff_max_s, self._backoff_initial_s * 2.0 ** min(failures - 1, 62))
        return delay * (0.5 + 0.5 * self._random.random())

    def _step(self) -> bool:
        """Start due calls, abandon overdue ones, wait for the next event. Runs with
        the worker holding `self`; returns False when the worker should stop."""
        with self._cond:
            if self._closed:
                return False
            now = self._clock()
            wake = now + _MAX_IDLE_WAIT_S
            for index, state in enumerate(self._states):
                if state.inflight:
                    if not state.abandoned:
                        if state.call_deadline <= now:
                            self._abandon(index, state, now)
                        else:
                            wake = min(wake, state.call_deadline)
                    continue
                delivery = next((d for d in self._pending if index in d.remaining), None)
                if delivery is None:
                    continue
                if state.next_at > now:
                    wake = min(wake, state.next_at)
                    continue
                self._start_call(index, state, delivery, now)
                wake = min(wake, state.call_deadline)
            self._cond.wait(max(0.0, min(wake - self._clock(), _MAX_IDLE_WAIT_S)))
            return not self._closed

    def _start_call(self, index: int, state: _NotifierState, delivery: _Delivery,
                    now: float) -> None:
        state.inflight = True
        state.abandoned = False
        state.call_id += 1
        state.call_deadline = now + self._call_timeout_s
        state.delivery = delivery
        thread = threading.Thread(
            target=self._call, args=(index, state.call_id, delivery),
            name=f"otel-budget-notify-{index}", daemon=True,
        )
        thread.start()

    def _abandon(self, index: int, state: _NotifierState, now: float) -> None:
        state.abandoned = True
        state.failures += 1
        delay = self._backoff(state.failures)
        state.next_at = now + delay
        _log.warning(
            "notifier %s did not return within %g s for nudge %s; abandoned it "
            "(skipped until it returns; attempt %d)",
            state.shown, self._call_timeout_s, _nudge_name(state.delivery.nudge)
            if state.delivery else "?", state.failures,
        )

    def _call(self, index: int, call_id: int, delivery: _Delivery) -> None:
        notifier = self._notifiers[index]
        error: BaseException | None = None
        try:
            notifier(dict(delivery.nudge))
        except BaseException as exc:  # a notifier's failure must not kill the thread
            error = exc
        with self._cond:
            state = self._states[index] if index < len(self._states) else None
            if state is None or state.call_id != call_id or state.delivery is not delivery:
                return  # reset by a fork, or otherwise stale
            was_abandoned = state.abandoned
            state.inflight = False
            state.abandoned = False
            state.delivery = None
            if error is None:
                # Even a late success delivered the nudge: never send it twice.
                delivery.remaining.discard(index)
                if not delivery.remaining and delivery in self._pending:
                    self._pending.remove(delivery)
                state.failures = 0
                state.next_at = 0.0
                if was_abandoned:
                    _log.info("notifier %s returned late but delivered nudge %s",
                              state.shown, _nudge_name(delivery.nudge))
            elif not was_abandoned:
                state.failures += 1
                delay = self._backoff(state.failures)
                state.next_at = self._clock() + delay
                _log.warning(
                    "notifier %s failed for nudge %s (attempt %d; retry in %.1f s): %s",
                    state.shown, _nudge_name(delivery.nudge), state.failures, delay,
                    describe_exception(error),
                )
            self._cond.notify_all()


def _worker_main(ref: weakref.ref[NotifierDispatcher]) -> None:
    while True:
        dispatcher = ref()
        if dispatcher is None:
            return
        keep_going = dispatcher._step()
        del dispatcher
        if not keep_going:
            return


def _shown(notifier: object) -> str:
    try:
        text = repr(notifier)
    except Exception:
        text = f"<{type(notifier).__name__}>"
    return redact_secrets(text)
