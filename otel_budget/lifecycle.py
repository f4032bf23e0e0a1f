"""Graceful stops write the final entries, however the process is stopped.

`atexit` covers a process that ends by returning or `sys.exit()`. Three common
endings skip it, and `BudgetMeter.start()` covers each with no code from the app:

1. **Death by SIGTERM/SIGINT with the default action.** A plain script, a
   multiprocessing child stopped by `terminate()`, a Celery pool child. While a
   meter is live, the process's handler for SIGTERM and SIGINT is this module's
   `_on_signal`, which *chains*: it runs the handler that would otherwise be in
   place (the server's own, `default_int_handler`, or the default action). Only
   when that is the default action does it first stop the live meters (their final
   checkpoint, within `shutdown`'s deadline), then restore the default action and
   re-raise the signal, so the process still dies by that signal, as it would have.
2. **A server that restores the default action and re-raises.** uvicorn
   (`Server.capture_signals`, also under gunicorn's `UvicornWorker`) installs its
   own handlers around `serve()`, drains, then puts back the handlers it found and
   calls `signal.raise_signal(sig)`: with the default action the process dies
   before any exit hook. So that our handler stays the one the kernel calls, while
   a meter is live `signal.signal` and `signal.getsignal` are wrapped for SIGTERM
   and SIGINT: a handler installed through them becomes the one `_on_signal`
   chains to (what `getsignal` then returns), and the return values are what the
   caller would have seen. The server's handler runs exactly as before; its final
   re-raise reaches case 1 after its drain, when the last requests' spend is in.
   Code that calls the builtin through a reference taken before the first meter
   started bypasses the wrapper and simply replaces our handler (then only
   `atexit` covers that process, as before).
3. **`os._exit` after the work.** multiprocessing's forked children end with
   `os._exit` after running the finalizers of `multiprocessing.util`: one is
   registered in every process with a live meter, and re-registered in each
   multiprocessing child (`util.register_after_fork`). Celery's prefork (billiard)
   children run no finalizers: `otel_budget.celery` stops the meters on Celery's
   `worker_process_shutdown` signal, connected automatically when celery has been
   imported by the time a meter starts.

Signal handlers can only be installed from the main thread: a meter started from
another thread (`astart()` runs `start()` in one) is covered once a meter has armed
this module from the main thread (`astart()` arms before leaving it). Once the last
meter has stopped, the main thread puts the original handlers and functions back.

The stop runs in a helper thread joined with a deadline: a handler interrupts the
main thread wherever it is, possibly inside a lock the final checkpoint needs, and
the signal must still take effect within the deadline. A stop signal that arrives
while a shutdown is already under way (an exit hook or a multiprocessing finalizer
it interrupts; `Pool.terminate()` does this to workers that are exiting) is held
until that shutdown ends, at most STOP_DEADLINE_S, then takes effect.

Across `fork()` the stop signals are blocked, from the last `before` hook until the
child's last after-fork hook (registered again at every `register`, so it runs
after every started meter's own hook). A signal that reaches a child before then
(a `Pool` worker `terminate()`d before it was ever scheduled) would otherwise stop
the meters while they still hold the parent's writer: the child would retire the
parent's row and the parent's own final entry would be refused. Held by the kernel,
it takes effect once the child is a writer of its own.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

_log = logging.getLogger("otel_budget")

Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)
# A little above shutdown's own default, so a meter's deadline is what bounds it.
STOP_DEADLINE_S = 11.0


class Stoppable(Protocol):
    def shutdown(self, timeout: float = ...) -> None: ...

    def wait_final_write(self, timeout: float) -> bool: ...


class _Lock:
    """This module's lock (reentrant). The main thread can be interrupted by a stop
    signal while it holds it (a multiprocessing finalizer in `stop_all`, `Pool`'s
    `terminate()` arriving meanwhile): the handler must not then wait for a stop
    thread that needs it. It holds the signal instead, and the thread's outermost
    release delivers it."""

    def __init__(self) -> None:
        self._rlock = threading.RLock()

    def held_here(self) -> bool:
        # RLock's own (C) ownership test: exact between bytecodes, where handlers run.
        return bool(self._rlock._is_owned())  # type: ignore[attr-defined]

    def __enter__(self) -> None:
        self._rlock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._rlock.release()
        if (_pending and _hold_until.get(_pending[0]) != 0.0 and not _closing
                and not self.held_here() and _on_main_thread()):
            _deliver_pending()


_lock = _Lock()
_live: weakref.WeakSet[Stoppable] = weakref.WeakSet()
_real_signal = signal.signal
_real_getsignal = signal.getsignal
# The handler each stop signal would have without us (what we chain to); present
# only while `_on_signal` is installed for that signal.
_chained: dict[int, Handler] = {}
# Meters whose shutdown has begun and whose final write may still be running.
_closing: weakref.WeakSet[Stoppable] = weakref.WeakSet()
# Meters whose shutdown has begun, ever (begin_stop: each shuts down once).
_begun: weakref.WeakSet[Stoppable] = weakref.WeakSet()
# Stop signals held while a shutdown is under way, and until when.
_pending: list[int] = []
_hold_until: dict[int, float] = {}
_mp_armed_pid: int | None = None
_mp_token: Any = None
# The newest after-fork hook that unblocks the stop signals in a child (0: none yet).
_fork_hooks = 0
_fork_state = threading.local()


def register(meter: Stoppable) -> None:
    """A meter started: stop it on the endings above (see the module docstring)."""
    with _lock:
        _live.add(meter)
    arm()
    _arm_multiprocessing()
    _add_fork_hook()
    if "celery" in sys.modules:
        from . import celery as _celery

        _celery.connect()


def begin_stop(meter: Stoppable) -> bool:
    """A meter's own shutdown begins: True for the first call, which then does it
    (and the meter is closing, as `stopping` makes it); False for any later or
    concurrent call. Under this module's lock: a stop signal that interrupts it is
    held, never raced by a second shutdown."""
    with _lock:
        if meter in _begun:
            return False
        _begun.add(meter)
        stopping(meter)  # the lock is reentrant
    return True


def stopping(meter: Stoppable) -> None:
    """A meter's shutdown began: a stop signal whose default action is death, arriving
    before this shutdown ends, takes effect when it ends (or at the deadline)."""
    with _lock:
        _live.discard(meter)
        _closing.add(meter)


def stopped(meter: Stoppable) -> None:
    """A meter's shutdown ended: deliver a signal held for it; else the last meter
    puts the original handlers back (main thread only; elsewhere ours stay and only
    chain, which changes nothing)."""
    with _lock:
        _live.discard(meter)
        _closing.discard(meter)
        if _closing:
            return
        held = bool(_pending)
        if not held and not _live and _on_main_thread():
            _disarm()
    if held:  # outside the lock: its handler may run right here, on this thread
        _deliver_pending()


def live_meters() -> list[Stoppable]:
    with _lock:
        return list(_live)


def arm() -> bool:
    """Install the chaining handlers (main thread only; idempotent). True if armed."""
    if not _on_main_thread():
        return bool(_chained)
    with _lock:
        for sig in STOP_SIGNALS:
            if sig in _chained:
                continue
            current = _real_getsignal(sig)
            if current is None:  # installed outside Python: we could not restore it
                continue
            _real_signal(sig, _on_signal)
            _chained[sig] = current
        if _chained and signal.signal is _real_signal:
            signal.signal = _signal
            signal.getsignal = _getsignal
    return bool(_chained)


def _disarm() -> None:
    for sig, previous in list(_chained.items()):
        if _real_getsignal(sig) is _on_signal:
            _real_signal(sig, previous)
        del _chained[sig]
    if signal.signal is _signal:
        signal.signal = _real_signal
        signal.getsignal = _real_getsignal


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _is_ours(sig: int) -> bool:
    return sig in _chained and _real_getsignal(sig) is _on_signal


def _signal(signalnum: int, handler: Handler) -> Handler:
    """`signal.signal` while armed: for a stop signal whose handler is ours, the new
    handler becomes the one we chain to."""
    if signalnum in _chained and _on_main_thread():
        with _lock:
            if _is_ours(signalnum):
                if handler is None or not (callable(handler) or handler in
                                           (signal.SIG_DFL, signal.SIG_IGN)):
                    return _real_signal(signalnum, handler)  # its error
                previous = _chained[signalnum]
                _chained[signalnum] = handler
                return previous
    return _real_signal(signalnum, handler)


def _getsignal(signalnum: int) -> Handler:
    with _lock:
        if _is_ours(signalnum):
            return _chained[signalnum]
    return _real_getsignal(signalnum)


def _on_signal(signum: int, frame: FrameType | None) -> Any:
    previous = _chained.get(signum, signal.SIG_DFL)
    if callable(previous):
        # The server's graceful stop (or KeyboardInterrupt): the process ends later by
        # exiting (atexit) or by re-raising with the default action (below).
        return previous(signum, frame)
    if previous == signal.SIG_IGN:
        return None
    inside = _lock.held_here()  # interrupted in this module: see _Lock
    with _lock:
        if (_closing or inside) and time.monotonic() < _hold_until.get(signum, float("inf")):
            # A shutdown is under way, maybe in this very thread (an exit hook or a
            # multiprocessing finalizer the signal interrupted): let it finish; it
            # delivers the signal when done, or the watchdog does at the deadline.
            if signum not in _pending:
                _pending.append(signum)
                _hold_until[signum] = time.monotonic() + STOP_DEADLINE_S
                _start_watchdog(signum)
            return None
        _pending[:] = [s for s in _pending if s != signum]
        _hold_until.pop(signum, None)
    # A shutdown still under way here had its hold: only the live meters remain.
    stop_all(STOP_DEADLINE_S, in_thread=True, wait_closing=False)
    # What would have happened without us: the default action, here and now.
    with _lock:
        _chained.pop(signum, None)
        _real_signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)
    return None


def _deliver_pending() -> None:
    """Re-send the held signal to the main thread, where `_on_signal` (no shutdown
    under way any more) performs the default action."""
    with _lock:
        if not _pending or _hold_until.get(_pending[0]) == 0.0:
            return  # none held, or re-sent already
        signum = _pending[0]
        _hold_until[signum] = 0.0  # no second hold
    if hasattr(signal, "pthread_kill"):
        signal.pthread_kill(threading.main_thread().ident or 0, signum)
    else:  # no pthread_kill (Windows): the process's handler runs on the main thread
        os.kill(os.getpid(), signum)


def _start_watchdog(signum: int) -> None:
    def expire() -> None:
        time.sleep(STOP_DEADLINE_S)
        if signum in _pending:
            _deliver_pending()

    threading.Thread(target=expire, name="OtelBudgetStopDeadline", daemon=True).start()


def stop_all(timeout: float = STOP_DEADLINE_S, *, in_thread: bool = False,
             wait_closing: bool = True) -> None:
    """Shut every live meter down within `timeout` seconds in all; with
    `wait_closing`, a meter already shutting down elsewhere is waited for."""
    with _lock:
        meters = list(_live)
        closing = list(_closing) if wait_closing else []
    if not meters and not closing:
        return
    deadline = time.monotonic() + timeout

    def run() -> None:
        for meter in meters:
            # Closing from here on: a meter marks itself closed before it tells us, and
            # a stop signal in between would find nothing to stop and nothing to wait for.
            stopping(meter)
            try:
                meter.shutdown(max(0.0, deadline - time.monotonic()) * 0.9)
            except Exception:
                _log.exception("otel_budget: stopping a meter failed")
        for meter in closing:
            meter.wait_final_write(max(0.0, deadline - time.monotonic()))

    if not in_thread:
        run()
        return
    worker = threading.Thread(target=run, name="OtelBudgetStop", daemon=True)
    worker.start()
    worker.join(max(0.0, deadline - time.monotonic()))
    if worker.is_alive():
        _log.warning("otel_budget: the final checkpoint did not finish within %.1f s "
                     "of the stop signal; what was not stored stays spooled", timeout)


# --- multiprocessing ---------------------------------------------------------------


class _Token:
    """What `multiprocessing.util.register_after_fork` keys on (it holds a weak ref)."""


def _arm_multiprocessing() -> None:
    global _mp_armed_pid, _mp_token
    pid = os.getpid()
    if _mp_armed_pid == pid:
        return
    from multiprocessing import util

    util.Finalize(None, _finalize, exitpriority=100)
    if _mp_token is None:
        _mp_token = _Token()
        # A multiprocessing child clears the inherited finalizers, then runs these.
        util.register_after_fork(_mp_token, _rearm_multiprocessing)
    _mp_armed_pid = pid


def _rearm_multiprocessing(_token: object) -> None:
    global _mp_armed_pid
    _mp_armed_pid = None
    if live_meters():
        _arm_multiprocessing()


def _finalize() -> None:
    stop_all()


# --- fork ------------------------------------------------------------------------------


def _add_fork_hook() -> None:
    """Register a child hook that unblocks the stop signals, after every hook so far
    (a meter registers its own at construction, before it starts)."""
    global _fork_hooks
    if not hasattr(os, "register_at_fork"):
        return
    with _lock:
        _fork_hooks += 1
        number = _fork_hooks

    def unblock_in_child() -> None:
        if number == _fork_hooks:  # only the last: it runs after every other one
            _unblock_stop_signals()

    os.register_at_fork(after_in_child=unblock_in_child)


def _block_stop_signals() -> None:
    if not _fork_hooks or not hasattr(signal, "pthread_sigmask"):
        _fork_state.blocked = set()
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    _fork_state.blocked = set(STOP_SIGNALS) - set(before)


def _unblock_stop_signals() -> None:
    blocked: set[signal.Signals] = getattr(_fork_state, "blocked", set())
    _fork_state.blocked = set()
    if blocked:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)


if hasattr(os, "register_at_fork"):
    # Registered at import, before any meter's hooks: this `before` runs last (just
    # before the fork) and this `after_in_parent` first.
    os.register_at_fork(before=_block_stop_signals, after_in_parent=_unblock_stop_signals)
