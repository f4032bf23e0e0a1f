"""Pricing benchmarks (kept out of the library modules): `record_usage()` against
`record()` on a meter, and `record_response()` / `record_usage()` against LiteLLM's
`completion_cost()` / `cost_per_token()` on the same calls."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from otel_budget.pricing import PriceTable
from otel_budget.usage import MODEL_ATTR, PROVIDER_ATTR, UsageRecorder

SONNET = "claude-sonnet-4-20250514"


def bench_record_usage(n: int = 20_000, rounds: int = 5) -> dict[str, float]:
    """Time `record_usage()` against `record()` on the same meter (memory store).

    Returns per-call microseconds (best round) and their ratio, for `otel-budget bench`.
    """
    from otel_budget.config import BudgetConfig
    from otel_budget.meter import BudgetMeter
    from otel_budget.stores.memory import MemoryStore

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


class _LockedTotal:
    """A stand-in for the meter's `record`: one locked integer add (~the new meter's cost)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.nano_usd = 0

    def record(self, cost_usd: float, attributes: Mapping[str, Any] | None) -> None:
        with self._lock:
            self.nano_usd += int(cost_usd * 1e9)


def bench_vs_litellm(n: int = 2_000, rounds: int = 5) -> dict[str, float]:
    """`record_response()` vs LiteLLM `completion_cost(completion_response=...)` on the same
    response, and `record_usage()` (token histogram on and off) vs LiteLLM
    `cost_per_token()`, interleaved rounds, best round per figure. Needs LiteLLM."""
    import os

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm
    from opentelemetry.sdk.metrics import MeterProvider

    model = "gpt-4o"
    response = litellm.ModelResponse(**{
        "id": "c1", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
                  "prompt_tokens_details": {"cached_tokens": 1000}},
    })
    prices = PriceTable.load_default(environ={})
    provider = MeterProvider()  # no reader: like an app whose exporter is elsewhere
    try:
        otel_meter = provider.get_meter("bench")
        total = _LockedTotal()
        with_hist = UsageRecorder(record=total.record, otel_meter=otel_meter, prices=prices,
                                  token_metrics=True, day=_today)
        without = UsageRecorder(record=total.record, otel_meter=otel_meter, prices=prices,
                                token_metrics=False, day=_today)
        attrs = {"agent": "cloud_lu"}
        completion_cost: Callable[..., Any] = litellm.completion_cost
        cost_per_token: Callable[..., Any] = litellm.cost_per_token
        ours = with_hist.record_response(response, attrs)
        theirs = float(completion_cost(completion_response=response))

        def run(fn: Callable[[], Any]) -> Callable[[], None]:
            def loop() -> None:
                for _ in range(n):
                    fn()
            return loop

        runs = {
            "record_response": run(lambda: with_hist.record_response(response, attrs)),
            "completion_cost": run(lambda: completion_cost(completion_response=response)),
            "record_usage_hist": run(lambda: with_hist.record_usage(
                model, 200, 300, cached_input_tokens=1000, attributes=attrs)),
            "record_usage_nohist": run(lambda: without.record_usage(
                model, 200, 300, cached_input_tokens=1000, attributes=attrs)),
            "cost_per_token": run(lambda: cost_per_token(
                model=model, prompt_tokens=1200, completion_tokens=300,
                cache_read_input_tokens=1000)),
        }
        best = dict.fromkeys(runs, float("inf"))
        for _ in range(rounds):
            for name, fn in runs.items():
                best[name] = min(best[name], _per_call(fn, n))
    finally:
        provider.shutdown()
    us = {f"{k}_us": round(v * 1e6, 3) for k, v in best.items()}
    return {
        **us,
        "record_response_vs_completion_cost": round(
            best["record_response"] / best["completion_cost"], 4),
        "record_usage_vs_cost_per_token_hist": round(
            best["record_usage_hist"] / best["cost_per_token"], 4),
        "record_usage_vs_cost_per_token_nohist": round(
            best["record_usage_nohist"] / best["cost_per_token"], 4),
        "ours_usd": ours,
        "litellm_usd": theirs,
    }


def _today() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC).date()


if __name__ == "__main__":  # python -m otel_budget.cli_bench_pricing
    import json

    print(json.dumps(bench_vs_litellm(), indent=2))
