"""LiteLLM's price map as a second, optional price source (``pip install litellm``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from ..errors import ConfigError
from .table import ModelPrice, Rates

_PROVIDERS = {
    "anthropic": "anthropic", "openai": "openai", "text-completion-openai": "openai",
    "gemini": "gcp.gemini", "vertex_ai-language-models": "gcp.vertex_ai",
    "vertex_ai-anthropic_models": "gcp.vertex_ai", "bedrock": "aws.bedrock",
    "bedrock_converse": "aws.bedrock", "azure": "azure.ai.openai",
}
_MILLION = Decimal(1_000_000)
LITELLM_SOURCE = "litellm model_prices_and_context_window.json"


def load_model_cost() -> Mapping[str, Any]:
    """LiteLLM's bundled ``model_cost`` map, never fetched (ConfigError without LiteLLM)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import litellm
    except ImportError:
        raise ConfigError(
            "PriceTable.from_litellm() / --diff-litellm need LiteLLM: pip install litellm"
        ) from None
    cost: Mapping[str, Any] = litellm.model_cost
    return cost


def _per_million(entry: Mapping[str, Any], key: str) -> Decimal | None:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return None
    return (Decimal(repr(float(value))) * _MILLION).normalize()


def litellm_rates(entry: Mapping[str, Any]) -> Rates | None:
    """USD per million tokens from a LiteLLM entry, or None when it has no token prices."""
    inp = _per_million(entry, "input_cost_per_token")
    out = _per_million(entry, "output_cost_per_token")
    if inp is None or out is None:
        return None
    cached = _per_million(entry, "cache_read_input_token_cost")
    write = _per_million(entry, "cache_creation_input_token_cost")
    write_long = _per_million(entry, "cache_creation_input_token_cost_above_1hr")
    return Rates.of(inp, out, cached, write, write_long)


def litellm_models(model_cost: Mapping[str, Any] | None = None) -> dict[str, ModelPrice]:
    """Chat/responses models of LiteLLM's map as ModelPrice entries keyed by lower-case id."""
    cost = load_model_cost() if model_cost is None else model_cost
    out: dict[str, ModelPrice] = {}
    for key, entry in cost.items():
        if not isinstance(entry, Mapping) or entry.get("mode") not in ("chat", "responses"):
            continue
        rates = litellm_rates(entry)
        if rates is None:
            continue
        provider = str(entry.get("litellm_provider", "unknown"))
        model_id = key.strip().lower()
        out[model_id] = ModelPrice(
            model=model_id, provider=_PROVIDERS.get(provider, provider), rates=rates,
            source=str(entry.get("source") or LITELLM_SOURCE), checked="",
            note="from LiteLLM's price map",
        )
    return out
