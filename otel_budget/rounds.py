"""Store rounds, one at a time, without making a collection wait.

A round (the tracker's: replay the spool, write final entries, load, checkpoint,
claim alerts) does store I/O, which can take a statement timeout. `RoundGate` runs
one round at a time: a caller that must not wait (a collection) and finds a round
running asks it to go again and returns; a caller that waits (shutdown, an explicit
checkpoint, start) takes its turn, bounded by its timeout. After each round the
round hooks run (budget leases, per-key books), still inside the turn.

Locks: `_io` is held for a whole round; `_flags` only for the go-again flags and
the background thread's handle, never across I/O.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .checkpoint import describe

_log = logging.getLogger("otel_budget")


class RoundGate:
    def __init__(self, run_round: Callable[[bool], None]) -> None:
        """`run_round(checkpoint)` is one round."""
        self._run_round = run_round
        #: Called at the end of every round, off the hot path (budget leases).
        self._hooks: list[Callable[[], None]] = []
        self._reset()

    def _reset(self) -> None:
        self._io = threading.Lock()
        self._flags = threading.Lock()
        self._again = False
        self._again_checkpoint = False
        self._background: threading.Thread | None = None

    def after_fork_in_child(self) -> None:
        """The parent's round (and its thread) did not survive the fork."""
        self._reset()

    def add_hook(self, hook: Callable[[], None]) -> None:
        self._hooks.append(hook)

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Hold the gate for work that must not overlap a round (the first load)."""
        with self._io:
            yield

    def run(self, *, checkpoint: bool, wait: bool, timeout_s: float = -1) -> bool:
        """One round now (more while others asked for one meanwhile). Returns False
        if another round held the gate and `wait` was False (it will go again), or
        if `timeout_s` (>= 0) passed before the gate was free."""
        if wait:
            acquired = self._io.acquire(timeout=timeout_s) if timeout_s >= 0 else self._io.acquire()
        else:
            acquired = self._io.acquire(blocking=False)
        if not acquired:
            with self._flags:
                self._again = True
                self._again_checkpoint = self._again_checkpoint or checkpoint
            return False
        try:
            while True:
                self._run_round(checkpoint)
                self._run_hooks()
                with self._flags:
                    if not self._again:
                        return True
                    checkpoint = self._again_checkpoint
                    self._again = self._again_checkpoint = False
        finally:
            self._io.release()

    def _run_hooks(self) -> None:
        for hook in list(self._hooks):
            try:
                hook()
            except Exception as exc:
                _log.warning("otel_budget: a store round hook failed: %s", describe(exc))

    def in_background(self, work: Callable[[], object]) -> None:
        """Run `work` (a waiting round) on a thread of its own, unless one is running."""
        with self._flags:
            worker = self._background
            if worker is not None and worker.is_alive():
                return

            def run() -> None:
                try:
                    work()
                except Exception as exc:
                    _log.warning("otel_budget: a background store round failed: %s",
                                 describe(exc))

            self._background = threading.Thread(target=run, name="OtelBudgetRound",
                                                daemon=True)
            self._background.start()


def within(work: Callable[[], bool], timeout_s: float, on_timeout: Callable[[], None]) -> bool:
    """Run `work` (a round that checkpoints) on a thread of its own and wait at most
    `timeout_s`: past it, `on_timeout` runs (it spools the entry; the round goes on
    and its later answer supersedes it) and False is returned."""
    done = threading.Event()
    result: list[bool] = []

    def run() -> None:
        try:
            result.append(work())
        except Exception as exc:
            _log.warning("otel_budget: checkpoint failed: %s", describe(exc))
        finally:
            done.set()

    threading.Thread(target=run, name="OtelBudgetCheckpoint", daemon=True).start()
    if done.wait(max(0.0, timeout_s)):
        return bool(result and result[0])
    _log.warning("otel_budget: the store did not take the checkpoint within %.1f s; "
                 "spooled", timeout_s)
    on_timeout()
    return False


__all__ = ["RoundGate", "within"]
