"""The bench's own arithmetic (tests/bench/stats.py) and `otel-budget bench --fair`
outside a checkout. The figures themselves are not asserted (no timed tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.bench.stats import Spread, interleaved, ratios
from tests.support.paths import ROOT


def test_spread_is_the_median_with_min_max_and_quartiles() -> None:
    spread = Spread.of([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (spread.median, spread.low, spread.high, spread.n) == (3.0, 1.0, 5.0, 5)
    assert spread.q1 <= spread.median <= spread.q3
    assert spread.text(1e3) == "3e+03 (1e+03-5e+03)"
    assert Spread.of([2.0, 4.0]).median == 3.0
    with pytest.raises(ValueError):
        Spread.of([])


def test_interleaved_runs_each_side_once_per_round_in_turn() -> None:
    order: list[str] = []

    def side(name: str, value: float) -> Callable[[], float]:
        def run() -> float:
            order.append(name)
            return value
        return run

    samples = interleaved({"a": side("a", 1.0), "b": side("b", 4.0)}, rounds=3, warmup=1)
    assert order == ["a", "b"] * 4
    assert samples == {"a": [1.0] * 3, "b": [4.0] * 3}
    assert ratios(samples["a"], samples["b"]) == [0.25] * 3
    with pytest.raises(ValueError):
        ratios([1.0], [1.0, 2.0])


def test_fair_bench_outside_a_checkout_says_where_it_runs(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = str(ROOT)  # this tree's package
    result = subprocess.run([sys.executable, "-m", "otel_budget.cli", "bench", "--fair"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "python -m tests.bench.run" in result.stderr and result.stdout == ""
    assert list(tmp_path.iterdir()) == []
