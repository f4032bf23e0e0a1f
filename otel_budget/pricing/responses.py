"""Provider response adapters: token usage (and the model) from what an SDK returned.

Duck-typed: nothing here imports a provider SDK. Each adapter reads attributes of the SDK
objects or keys of their dict forms (``model_dump()``, raw JSON: snake_case or Gemini's
camelCase), and a missing or ``None`` field counts as 0.

========================  ======================================================  ==========
response                  recognised by                                           model from
========================  ======================================================  ==========
Anthropic ``Message``     ``type == "message"`` (also a stream's final message)   ``model``
OpenAI ``ChatCompletion`` ``object`` is ``chat.completion`` or
                          ``chat.completion.chunk`` (the last chunk carries
                          ``usage`` with ``stream_options={"include_usage": True}``)  ``model``
OpenAI ``Response``       ``object == "response"``; a ``response.completed``
                          stream event is unwrapped                               ``model``
Gemini                    ``usage_metadata`` / ``usageMetadata``                  ``model_version``
``GenerateContentResponse``                                                       (else attrs)
Bedrock Converse dict     ``usage`` with ``inputTokens``                          see below
========================  ======================================================  ==========

A Bedrock Converse response does not name its model: it is taken from
``attributes["gen_ai.request.model"]``, else from a ``modelId`` or ``model`` key you add to
the dict (``{**response, "modelId": model_id}``); without either, ValueError.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from .table import STANDARD_TIER, TokenUsage, normalize_tier

MODEL_ATTR = "gen_ai.request.model"
SERVICE_TIER_ATTR = "llm.service_tier"

PROVIDER_ANTHROPIC = "anthropic"
PROVIDER_OPENAI = "openai"
PROVIDER_GEMINI = "gcp.gemini"
PROVIDER_BEDROCK = "aws.bedrock"

_STREAM_DONE = frozenset({"response.completed", "response.incomplete", "response.failed"})


class ResponseUsage(NamedTuple):
    """What :func:`usage_from_response` found: the model id, the provider the response
    came from (a ``gen_ai.provider.name`` value) and the usage. ``response_model`` is the
    id the response itself names (None when the model came from ``attributes``)."""

    model: str
    provider: str
    usage: TokenUsage
    response_model: str | None = None


def _get(obj: Any, *names: str) -> Any:
    """The first of `names` present and not None, as an attribute or a mapping key."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        for name in names:
            value = obj.get(name)
            if value is not None:
                return value
        return None
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    return None


def _count(obj: Any, *names: str) -> int:
    value = _get(obj, *names)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer() and value >= 0:
            return int(value)  # JSON numbers parsed as float
        raise TypeError(f"{names[0]} must be an int, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{names[0]} must be >= 0, got {value}")
    return value


def _minus(total: int, part: int, total_name: str, part_name: str) -> int:
    if part > total:
        raise ValueError(f"{part_name} ({part}) cannot exceed {total_name} ({total})")
    return total - part


def _tier(value: Any) -> str:
    if value is None:
        return STANDARD_TIER
    value = getattr(value, "value", value)  # enums (Gemini TrafficType)
    return normalize_tier(str(value))


# --- usage objects --------------------------------------------------------------------------

def anthropic_usage(usage: Any) -> TokenUsage:
    """Anthropic ``Usage`` or dict: see :meth:`TokenUsage.from_anthropic`."""
    creation = _count(usage, "cache_creation_input_tokens")
    split = _get(usage, "cache_creation")
    one_hour = _count(split, "ephemeral_1h_input_tokens")
    if creation == 0 and split is not None:  # only the breakdown was given
        creation = one_hour + _count(split, "ephemeral_5m_input_tokens")
    five_min = _minus(creation, one_hour, "cache_creation_input_tokens",
                      "cache_creation.ephemeral_1h_input_tokens")
    tier = _tier(_get(usage, "service_tier"))
    if tier == STANDARD_TIER and _get(usage, "speed") == "fast":
        tier = "fast"
    return TokenUsage(
        _count(usage, "input_tokens"), _count(usage, "output_tokens"),
        _count(usage, "cache_read_input_tokens"), five_min, one_hour,
        _count(_get(usage, "server_tool_use"), "web_search_requests"), tier,
    )


def openai_usage(usage: Any) -> TokenUsage:
    """OpenAI ``CompletionUsage`` / ``ResponseUsage`` or dict: see
    :meth:`TokenUsage.from_openai`."""
    if _get(usage, "prompt_tokens") is not None or _get(usage, "input_tokens") is None:
        prompt_name, out_name, details_name = ("prompt_tokens", "completion_tokens",
                                               "prompt_tokens_details")
    else:
        prompt_name, out_name, details_name = ("input_tokens", "output_tokens",
                                               "input_tokens_details")
    prompt = _count(usage, prompt_name)
    details = _get(usage, details_name)
    cached = _count(details, "cached_tokens")
    written = _count(details, "cache_write_tokens")
    ttl = _get(details, "cache_write_tokens_details")
    long_ttl = _count(ttl, "ttl_12h_tokens", "ttl_24h_tokens")
    if written == 0 and ttl is not None:
        written = long_ttl + _count(ttl, "ttl_30m_tokens")
    short_ttl = _minus(written, long_ttl, "cache_write_tokens", "ttl_12h_tokens")
    plain = _minus(prompt, cached + written, prompt_name, "cached_tokens + cache_write_tokens")
    return TokenUsage(plain, _count(usage, out_name), cached, short_ttl, long_ttl)


def gemini_usage(usage: Any) -> TokenUsage:
    """Gemini ``usage_metadata`` or dict: see :meth:`TokenUsage.from_gemini`."""
    prompt = _count(usage, "prompt_token_count", "promptTokenCount")
    cached = _count(usage, "cached_content_token_count", "cachedContentTokenCount")
    plain = _minus(prompt, cached, "prompt_token_count", "cached_content_token_count")
    tool_prompt = _count(usage, "tool_use_prompt_token_count", "toolUsePromptTokenCount")
    output = (_count(usage, "candidates_token_count", "candidatesTokenCount")
              + _count(usage, "thoughts_token_count", "thoughtsTokenCount"))
    return TokenUsage(plain + tool_prompt, output, cached,
                      service_tier=_tier(_get(usage, "traffic_type", "trafficType")))


def bedrock_usage(usage: Any) -> TokenUsage:
    """Bedrock Converse ``usage`` dict: see :meth:`TokenUsage.from_bedrock`.

    ``cacheDetails`` entries with ``ttl == "1h"`` are long-TTL cache writes."""
    written = _count(usage, "cacheWriteInputTokens", "cache_write_input_tokens")
    long_ttl = 0
    details = _get(usage, "cacheDetails", "cache_details")
    if isinstance(details, list):
        long_ttl = sum(_count(d, "inputTokens", "input_tokens") for d in details
                       if str(_get(d, "ttl") or "").lower() in ("1h", "60m", "3600s"))
    return TokenUsage(
        _count(usage, "inputTokens", "input_tokens"),
        _count(usage, "outputTokens", "output_tokens"),
        _count(usage, "cacheReadInputTokens", "cache_read_input_tokens"),
        _minus(written, long_ttl, "cacheWriteInputTokens", "cacheDetails[ttl=1h]"),
        long_ttl,
    )


# --- whole responses ---------------------------------------------------------------------------

def usage_from_response(
    response: Any, attributes: Mapping[str, Any] | None = None, *,
    default_model: str | None = None,
) -> ResponseUsage:
    """The model, provider and usage of one provider response (see the module docstring).

    The service tier comes from ``attributes["llm.service_tier"]`` when given (e.g.
    ``"batch"`` for results of a batch job), else from the response (Anthropic
    ``usage.service_tier``/``speed``, OpenAI ``service_tier``, Gemini ``traffic_type``).
    Web searches: Anthropic ``usage.server_tool_use.web_search_requests``, OpenAI
    ``tool_usage.web_search.num_requests`` (else the number of ``web_search_call`` output
    items), Gemini the number of ``grounding_metadata.web_search_queries``.

    Raises TypeError for an object none of the adapters recognise and ValueError for a
    response without usage (a stream chunk before the last) or without a model (unless
    `default_model` names one to use then).
    """
    if response is None:
        raise TypeError("response must be a provider response object or dict, got None")
    if _get(response, "type") in _STREAM_DONE:
        response = _get(response, "response")
    kind = _get(response, "object")
    if kind in ("chat.completion", "chat.completion.chunk", "response"):
        provider = PROVIDER_OPENAI
        usage = openai_usage(_need_usage(response, "usage"))
        if kind == "response":
            searches = _openai_web_searches(response)
            if searches:
                usage = usage._replace(web_search_requests=searches)
        tier = _tier(_get(response, "service_tier"))
        if tier != STANDARD_TIER:
            usage = usage._replace(service_tier=tier)
        model = named = _get(response, "model")
    elif _get(response, "type") == "message":
        provider = PROVIDER_ANTHROPIC
        usage = anthropic_usage(_need_usage(response, "usage"))
        model = named = _get(response, "model")
    elif _get(response, "usage_metadata", "usageMetadata") is not None or (
            _get(response, "candidates") is not None):
        provider = PROVIDER_GEMINI
        usage = gemini_usage(_need_usage(response, "usage_metadata", "usageMetadata"))
        searches = _gemini_web_searches(response)
        if searches:
            usage = usage._replace(web_search_requests=searches)
        named = _get(response, "model_version", "modelVersion")
        model = named or _attr(attributes, MODEL_ATTR)
    elif isinstance(response, Mapping) and _get(response.get("usage"), "inputTokens",
                                                "outputTokens") is not None:
        provider = PROVIDER_BEDROCK
        usage = bedrock_usage(response["usage"])
        named = _get(response, "modelId", "model")
        model = _attr(attributes, MODEL_ATTR) or named
    elif _get(_get(response, "usage"), "input_tokens") is not None and (
            _get(response, "model") is not None):
        # An Anthropic-shaped message without a type field (e.g. a partial dict).
        provider = PROVIDER_ANTHROPIC
        usage = anthropic_usage(_get(response, "usage"))
        model = named = _get(response, "model")
    else:
        raise TypeError(
            "record_response: not a recognised provider response (Anthropic Message, OpenAI "
            "ChatCompletion/Response, Gemini GenerateContentResponse, Bedrock Converse "
            f"dict): got {type(response).__name__}")
    if (not isinstance(model, str) or not model.strip()) and default_model is not None:
        model = default_model
    if not isinstance(model, str) or not model.strip():
        raise ValueError(
            f"record_response: the {provider} response names no model; pass "
            f"attributes={{{MODEL_ATTR!r}: ...}}")
    tier = _attr(attributes, SERVICE_TIER_ATTR)
    if tier is not None:
        usage = usage._replace(service_tier=_tier(tier))
    # The id the response itself names (not one taken from `attributes`).
    return ResponseUsage(model, provider, usage,
                         named if isinstance(named, str) and named.strip() else None)


def _unwrap(response: Any) -> Any:
    if _get(response, "type") in _STREAM_DONE:
        return _get(response, "response")
    return response


def response_model_of(response: Any) -> str | None:
    """The model id a response (or stream chunk/event) names, else None."""
    response = _unwrap(response)
    model = _get(response, "model_version", "modelVersion") if (
        _get(response, "usage_metadata", "usageMetadata", "candidates") is not None) else None
    if model is None:
        model = _get(response, "model", "modelId")
    return model if isinstance(model, str) and model.strip() else None


def response_provider_of(response: Any) -> str | None:
    """The provider a response's shape says it came from, else None (no usage needed)."""
    response = _unwrap(response)
    if _get(response, "object") in ("chat.completion", "chat.completion.chunk", "response"):
        return PROVIDER_OPENAI
    if _get(response, "type") in ("message", "message_start", "message_delta",
                                  "message_stop", "content_block_delta"):
        return PROVIDER_ANTHROPIC
    if _get(response, "usage_metadata", "usageMetadata", "candidates") is not None:
        return PROVIDER_GEMINI
    if isinstance(response, Mapping) and _get(response, "output", "stopReason") is not None:
        return PROVIDER_BEDROCK
    return None


def visible_text_chars(response: Any) -> int:
    """Characters of generated text a response (or chunk) shows: the basis of an
    estimate when it carries no usage."""
    response = _unwrap(response)
    total = 0
    for choice in _get(response, "choices") or ():
        for part in (_get(choice, "message"), _get(choice, "delta")):
            text = _get(part, "content")
            if isinstance(text, str):
                total += len(text)
    for block in _get(response, "content") or ():
        text = _get(block, "text")
        if isinstance(text, str):
            total += len(text)
    text = _get(response, "output_text")
    if isinstance(text, str):
        total += len(text)
    return total


def _attr(attributes: Mapping[str, Any] | None, key: str) -> Any:
    return attributes.get(key) if attributes else None


def _need_usage(response: Any, *names: str) -> Any:
    usage = _get(response, *names)
    if usage is None:
        raise ValueError(
            f"record_response: this {type(response).__name__} carries no usage (for a "
            "stream, pass the final message/chunk/event, the one with usage)")
    return usage


def _openai_web_searches(response: Any) -> int:
    tool_usage = _get(response, "tool_usage")
    if tool_usage is not None:
        return _count(_get(tool_usage, "web_search"), "num_requests")
    output = _get(response, "output")
    if not output:
        return 0
    return sum(1 for item in output if _get(item, "type") == "web_search_call")


def _gemini_web_searches(response: Any) -> int:
    candidates = _get(response, "candidates")
    if not candidates:
        return 0
    total = 0
    for candidate in candidates:
        grounding = _get(candidate, "grounding_metadata", "groundingMetadata")
        queries = _get(grounding, "web_search_queries", "webSearchQueries")
        if queries:
            total += len(queries)
    return total
