"""Pricing against LiteLLM, the same call on both sides, interleaved in one run:

- `meter.record_response(r)` vs `litellm.completion_cost(completion_response=r)` on
  the same real `openai.types.chat.ChatCompletion` object (gpt-4o);
- `meter.record_usage("gpt-4o", 1200, 300)` vs `litellm.cost_per_token(model="gpt-4o",
  prompt_tokens=1200, completion_tokens=300)`;
- `meter.record_response(m)` on a real `anthropic.types.Message` (Claude Sonnet 4):
  ours only, LiteLLM's completion_cost prices that object at $0 (shown).
Our side is a default meter (its one reader aggregates the token histogram) and one
with token_metrics=False. LiteLLM prices are its bundled map (no network)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from otel_budget import BudgetConfig, BudgetMeter
from otel_budget.pricing import PriceTable
from otel_budget.stores.memory import MemoryStore
from tests.bench.stats import Row, Spread, interleaved, per_call, ratios

MODEL = "gpt-4o"
SONNET = "claude-sonnet-4-20250514"
ATTRS = {"agent": "cloud_lu"}


def openai_response() -> Any:
    from openai.types.chat import ChatCompletion

    return ChatCompletion.model_validate({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": MODEL,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
                  "prompt_tokens_details": {"cached_tokens": 1000}},
    })


def anthropic_message() -> Any:
    from anthropic.types import Message

    return Message.model_validate({
        "id": "msg_1", "type": "message", "role": "assistant", "model": SONNET,
        "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 1200, "output_tokens": 300, "cache_read_input_tokens": 1000,
                  "cache_creation_input_tokens": 0},
    })


def _meter(token_metrics: bool) -> BudgetMeter:
    config = BudgetConfig(daily_cap_usd=1e12, instance_id="bench", checkpoint_every=10**9,
                          collect_interval_s=3600, token_metrics=token_metrics)
    return BudgetMeter(config, store=MemoryStore(), prices=PriceTable.load_default(environ={}))


def _loop(fn: Callable[[], Any], calls: int) -> Callable[[], float]:
    def run() -> float:
        def body() -> None:
            for _ in range(calls):
                fn()
        return per_call(body, calls)
    return run


def bench(calls: int = 2000, rounds: int = 9) -> tuple[list[Row], dict[str, Any]]:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import litellm
    except ImportError:
        return [Row("LiteLLM", "not installed")], {"litellm": "not installed"}
    response, message = openai_response(), anthropic_message()
    completion_cost: Callable[..., Any] = litellm.completion_cost
    cost_per_token: Callable[..., Any] = litellm.cost_per_token
    meter, bare = _meter(True), _meter(False)
    try:
        usd = {
            "record_response": meter.record_response(response, ATTRS),
            "completion_cost": float(completion_cost(completion_response=response)),
            "record_usage": meter.record_usage(MODEL, 1200, 300, attributes=ATTRS),
            "cost_per_token": sum(cost_per_token(model=MODEL, prompt_tokens=1200,
                                                 completion_tokens=300)),
            "record_response_anthropic": meter.record_response(message, ATTRS),
            "completion_cost_anthropic": float(completion_cost(completion_response=message)),
        }
        samples = interleaved({
            "record_response": _loop(lambda: meter.record_response(response, ATTRS), calls),
            "completion_cost": _loop(lambda: completion_cost(completion_response=response),
                                     calls),
            "record_usage": _loop(lambda: meter.record_usage(MODEL, 1200, 300,
                                                             attributes=ATTRS), calls),
            "record_usage_nohist": _loop(lambda: bare.record_usage(MODEL, 1200, 300,
                                                                   attributes=ATTRS), calls),
            "cost_per_token": _loop(lambda: cost_per_token(model=MODEL, prompt_tokens=1200,
                                                           completion_tokens=300), calls),
            "record_response_anthropic": _loop(lambda: meter.record_response(message, ATTRS),
                                               calls),
        }, rounds)
    finally:
        meter.shutdown()
        bare.shutdown()

    def row(label: str, ours: str, peer: str | None) -> Row:
        o = Spread.of(samples[ours])
        if peer is None:
            return Row(label, o.text(1e6))
        p = Spread.of(samples[peer])
        return Row(label, o.text(1e6), p.text(1e6), Spread.of(ratios(samples[ours],
                                                                   samples[peer])).text())

    rows = [
        row("record_response(ChatCompletion) vs completion_cost, us", "record_response",
            "completion_cost"),
        row("record_usage vs cost_per_token (gpt-4o), us", "record_usage", "cost_per_token"),
        row("  same, token_metrics=False, us", "record_usage_nohist", "cost_per_token"),
        row("record_response(anthropic Message), us (LiteLLM: $0)",
            "record_response_anthropic", None),
        Row("USD per call: ours / LiteLLM (ChatCompletion; usage)",
            f"{usd['record_response']:.6g}; {usd['record_usage']:.6g}",
            f"{usd['completion_cost']:.6g}; {usd['cost_per_token']:.6g}"),
        Row("USD per call, anthropic Message: ours / LiteLLM",
            f"{usd['record_response_anthropic']:.6g}", f"{usd['completion_cost_anthropic']:.6g}"),
    ]
    figures: dict[str, Any] = {f"{k}_us": Spread.of(v).as_dict(1e6) for k, v in samples.items()}
    figures["ratios"] = {
        f"{ours}_vs_{peer}": Spread.of(ratios(samples[ours], samples[peer])).as_dict()
        for ours, peer in (("record_response", "completion_cost"),
                           ("record_usage", "cost_per_token"),
                           ("record_usage_nohist", "cost_per_token"))}
    figures["usd"] = usd
    figures["litellm_version"] = _version("litellm")
    return rows, figures


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    from tests.bench.stats import print_table

    print_table(bench()[0])
