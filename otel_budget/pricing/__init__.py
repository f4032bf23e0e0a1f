"""Token prices: an offline, versioned price table, exact per-call pricing, model-id
resolution and provider response adapters.

* :mod:`.table`: :class:`PriceTable`, :class:`ModelPrice`, :class:`TokenUsage`, pricing.
* :mod:`.ids`: how ``us.anthropic.claude-sonnet-4-20250514-v1:0`` or
  ``publishers/google/models/gemini-2.5-pro`` find their entry.
* :mod:`.responses`: usage and model from an Anthropic, OpenAI, Gemini or Bedrock response.
* ``prices.toml``: the packaged table (each rate with its source page and checked date).
"""

from __future__ import annotations

from .ids import candidates, normalize
from .responses import (
    PROVIDER_ANTHROPIC,
    PROVIDER_BEDROCK,
    PROVIDER_GEMINI,
    PROVIDER_OPENAI,
    SERVICE_TIER_ATTR,
    ResponseUsage,
    usage_from_response,
)
from .table import (
    FALLBACK_ENV,
    PACKAGED_NAME,
    PRICES_ENV,
    STANDARD_TIER,
    LongContext,
    ModelPrice,
    PriceChange,
    PriceTable,
    Rates,
    TokenUsage,
    check_token_counts,
    check_usage,
    normalize_tier,
    parse_fallback_price,
    price_call,
    price_call_decimal,
)

__all__ = [
    "FALLBACK_ENV",
    "PACKAGED_NAME",
    "PRICES_ENV",
    "PROVIDER_ANTHROPIC",
    "PROVIDER_BEDROCK",
    "PROVIDER_GEMINI",
    "PROVIDER_OPENAI",
    "SERVICE_TIER_ATTR",
    "STANDARD_TIER",
    "LongContext",
    "ModelPrice",
    "PriceChange",
    "PriceTable",
    "Rates",
    "ResponseUsage",
    "TokenUsage",
    "candidates",
    "check_token_counts",
    "check_usage",
    "normalize",
    "normalize_tier",
    "parse_fallback_price",
    "price_call",
    "price_call_decimal",
    "usage_from_response",
]
