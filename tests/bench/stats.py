"""Medians with their spread, and interleaved rounds: every side of a comparison runs
once per round, in the same order, so drift on a shared machine hits all alike, and a
ratio is taken per round (the pair ran side by side) before its median."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float
    q1: float
    q3: float
    n: int

    @classmethod
    def of(cls, samples: list[float]) -> Spread:
        if not samples:
            raise ValueError("no samples")
        ordered = sorted(samples)
        if len(ordered) >= 4:
            q1, _, q3 = statistics.quantiles(ordered, n=4)
        else:
            q1, q3 = ordered[0], ordered[-1]
        return cls(statistics.median(ordered), ordered[0], ordered[-1], q1, q3, len(ordered))

    def text(self, scale: float = 1.0, digits: int = 3) -> str:
        def f(x: float) -> str:
            return f"{x * scale:.{digits}g}"
        return f"{f(self.median)} ({f(self.low)}-{f(self.high)})"

    def as_dict(self, scale: float = 1.0) -> dict[str, float | int]:
        return {"median": self.median * scale, "min": self.low * scale,
                "max": self.high * scale, "q1": self.q1 * scale, "q3": self.q3 * scale,
                "n": self.n}


def per_call(fn: Callable[[], None], calls: int) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) / calls


def interleaved(runs: Mapping[str, Callable[[], float]], rounds: int,
                warmup: int = 1) -> dict[str, list[float]]:
    """Each run returns one sample (seconds, or any figure); all runs go once per round."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            samples[name].append(run())
    return samples


def ratios(num: list[float], den: list[float]) -> list[float]:
    """Per-round ratios of two interleaved sample lists."""
    return [a / b for a, b in zip(num, den, strict=True)]


@dataclass(frozen=True)
class Row:
    """One line of the table: a figure, our side, the peer's, their ratio, the goal."""

    figure: str
    ours: str
    peer: str = ""
    ratio: str = ""
    goal: str = ""


def print_table(rows: list[Row]) -> None:
    header = Row("figure", "ours: median (min-max)", "peer: median (min-max)",
                 "ratio: median (min-max)", "goal")
    cells = [header, *rows]
    widths = [max(len(getattr(r, f)) for r in cells)
              for f in ("figure", "ours", "peer", "ratio", "goal")]
    for i, r in enumerate(cells):
        print("  ".join(str(getattr(r, f)).ljust(w) for f, w in
                        zip(("figure", "ours", "peer", "ratio", "goal"), widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
