"""ruff and mypy --strict over the package and the tests: the style the project
holds itself to, checked by the suite so CI enforces it."""

from __future__ import annotations

import shutil
import subprocess
import sys

from tests.support.paths import ROOT

ROOT = ROOT
TARGETS = ["otel_budget", "tests"]


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          check=False)


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff")
    command = [ruff] if ruff else [sys.executable, "-m", "ruff"]
    result = run(*command, "check", *TARGETS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    result = run(sys.executable, "-m", "mypy", "--strict", *TARGETS)
    assert result.returncode == 0, result.stdout + result.stderr
