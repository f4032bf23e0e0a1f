"""Pricing benchmarks (kept out of the library modules): `record_usage()` against
`record()` on a meter, and `record_response()` / `record_usage()` against LiteLLM's
`completion_cost()` / `cost_per_token()` on the same calls."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from .pricing import PriceTable
from .usage import MODEL_ATTR, PROVIDER_ATTR, UsageRecorder

SONNET = "claude-sonnet-4-20250514"


def bench_record_usage(n: int = 20_000, rounds: int = 5) -> dict[str, float]:
    """Time `record_usage()` against `record()` on the same meter (memory store).

    Returns per-call microseconds (best round) and their ratio, for `otel-budget bench`.
    """
    from .config import BudgetConfig
    from .meter import BudgetMeter
    from .stores.memory import MemoryStore

    config = BudgetConfig(daily_cap_usd=1e12, instance_id="bench", checkpoint_every=10**9)
    meter = BudgetMeter(config, store=MemoryStore())
    try:
        attrs = {"agent": "cloud_lu"}
        spend_attrs = {**attrs, MODEL_ATTR: SONNET, PROVIDER_ATTR: "anthropic"}
        record: Callable[..., Any] = meter.record
        record_usage: Callable[..., Any] = meter.record_usage
        record_usage(SONNET, 1, 1, attributes=attrs)  # loads the table outside the timing

        def run_record() -> None:
            for _ in range(n):
                record(0.0126, spend_attrs)

        def run_usage() -> None:
            for _ in range(n):
                record_usage(SONNET, 1000, 500, cached_input_tokens=2000, attributes=attrs)

        best_record = best_usage = float("inf")
        for _ in range(rounds):  # interleaved so machine noise hits both alike
            best_record = min(best_record, _per_call(run_record, n))
            best_usage = min(best_usage, _per_call(run_usage, n))
        return {
            "record_us": round(best_record * 1e6, 3),
            "record_usage_us": round(best_usage * 1e6, 3),
            "record_usage_vs_record": round(best_usage / best_record, 3),
        }
    finally:
        meter.shutdown()


def _per_call(fn: Callable[[], None], n: int) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) / n
