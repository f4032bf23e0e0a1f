"""Helpers for tests that run real processes: the worktree's code on the path, and a
stop that always ends what a test started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping

from tests.support.paths import ROOT as ROOT

ROOT = ROOT
PYTHON = sys.executable


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment, with the worktree first on the path (the editable install
    may point elsewhere) and no inherited OTEL_* that would change a meter."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def ensure_stopped(proc: subprocess.Popen[bytes] | subprocess.Popen[str], *,
                   grace_s: float = 5.0, group: bool = False) -> None:
    """SIGTERM, then SIGKILL; for a finalizer (never raises). With `group` (a process
    started with start_new_session=True, such as gunicorn and its workers) whatever
    is left of its process group is killed too."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace_s)
    if group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
