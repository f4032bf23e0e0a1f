"""Token prices: an offline, versioned price table and exact per-call pricing.

Pure: the only I/O is reading TOML price files. Nothing is ever fetched.

Token convention (the one rule callers must follow)
----------------------------------------------------
The four token counts are **disjoint**; every prompt token is counted in exactly one of
``input_tokens``, ``cached_input_tokens`` and ``cache_write_tokens``:

* ``input_tokens``: prompt tokens billed at the plain input rate, i.e. **excluding** tokens
  read from or written to a prompt cache. This is what Anthropic reports as
  ``usage.input_tokens``.
* ``cached_input_tokens``: prompt tokens read from a cache (Anthropic
  ``cache_read_input_tokens``, OpenAI ``prompt_tokens_details.cached_tokens``, Gemini
  ``cachedContentTokenCount``).
* ``cache_write_tokens``: prompt tokens written to a cache (Anthropic
  ``cache_creation_input_tokens``).
* ``output_tokens``: everything generated, reasoning/thinking tokens included.

OpenAI's ``prompt_tokens`` and Gemini's ``promptTokenCount`` *include* the cached tokens,
so they must be split first; :meth:`TokenUsage.from_openai` and
:meth:`TokenUsage.from_gemini` do that (passing ``prompt_tokens`` straight in as
``input_tokens`` would bill the cached part twice). The disjoint form was chosen because
each token then has exactly one rate and no combination of counts can be inconsistent.

Beyond the four counts, a :class:`TokenUsage` carries what else the provider bills:
``cache_write_long_tokens`` (cache writes with the long TTL: Anthropic's 1-hour writes,
OpenAI's 12-hour retention; disjoint from ``cache_write_tokens``, which are the default
5-minute / 30-minute writes), ``web_search_requests`` (server-side web searches, priced per
request) and ``service_tier`` (``standard``, ``batch``, ``flex``, ``priority``, ...; the
table's tier multiplier applies to every token rate).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import ConfigError, UnknownModelError
from .ids import candidates, family_lines, normalize, provider_family

PRICES_ENV = "OTEL_BUDGET_PRICES"
FALLBACK_ENV = "OTEL_BUDGET_FALLBACK_PRICE"
PACKAGED_NAME = "prices.toml"
STANDARD_TIER = "standard"

_MILLION = Decimal(1_000_000)
_NANO_USD = Decimal("0.000000001")
_FEMTO_PER_MILLIONTH = Decimal(1_000_000_000)
_RATE_FIELDS = ("input", "output", "cached_input", "cache_write", "cache_write_long")
_MODEL_FIELDS = frozenset(
    {*_RATE_FIELDS, "provider", "source", "checked", "note", "aliases", "prefixes",
     "long_context", "changes", "service_tiers", "server_tools"}
)
_PROVIDER_FIELDS = frozenset({"service_tiers", "server_tools", "source", "checked", "note"})
_THOUSAND = Decimal(1000)
_MISS = object()


@dataclass(frozen=True)
class Rates:
    """USD per million tokens for each token kind."""

    input: Decimal
    output: Decimal
    cached_input: Decimal
    cache_write: Decimal
    cache_write_long: Decimal

    @classmethod
    def of(
        cls, input: float | str | Decimal, output: float | str | Decimal,
        cached_input: float | str | Decimal | None = None,
        cache_write: float | str | Decimal | None = None,
        cache_write_long: float | str | Decimal | None = None,
    ) -> Rates:
        """Rates from plain numbers; cache rates default to the input rate and the
        long-TTL cache write to the cache-write rate."""
        write = input if cache_write is None else cache_write
        values = [_to_decimal(v, name) for v, name in (
            (input, "input"), (output, "output"),
            (input if cached_input is None else cached_input, "cached_input"),
            (write, "cache_write"),
            (write if cache_write_long is None else cache_write_long, "cache_write_long"),
        )]
        return cls(*values)

    def as_dict(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in _RATE_FIELDS}

    @cached_property
    def femto_usd_per_token(self) -> tuple[int, int, int, int, int] | None:
        """The rates in integers of 1e-15 USD per token (USD per million tokens x 1e9),
        in field order, or None when a rate is finer than that: the integer pricing
        path, exact like the Decimal one and several times faster."""
        scaled = []
        for name in _RATE_FIELDS:
            value = getattr(self, name) * _FEMTO_PER_MILLIONTH
            if value != value.to_integral_value():
                return None
            scaled.append(int(value))
        return (scaled[0], scaled[1], scaled[2], scaled[3], scaled[4])


@dataclass(frozen=True)
class LongContext:
    """Rates for the whole request once its prompt exceeds ``threshold_tokens``."""

    threshold_tokens: int
    rates: Rates


@dataclass(frozen=True)
class PriceChange:
    """A scheduled price: ``rates`` apply from ``effective_from`` (a calendar day) on."""

    effective_from: date
    rates: Rates


@dataclass(frozen=True)
class ModelPrice:
    """One model's price. ``rates`` are the ones in effect for the day it was resolved for
    (see :meth:`PriceTable.resolve`); ``changes`` keeps the whole schedule for display.

    ``service_tiers`` maps a tier name (``batch``, ``flex``, ``priority``, ...) to the
    multiplier applied to every token rate for calls in that tier; ``server_tools`` maps a
    server tool (``web_search``) to its price in USD per 1,000 requests. Both come from the
    provider's defaults in the table unless the model overrides them.
    """

    model: str
    provider: str
    rates: Rates
    source: str = ""
    checked: str = ""
    note: str = ""
    aliases: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    long_context: LongContext | None = None
    changes: tuple[PriceChange, ...] = ()
    is_fallback: bool = False
    service_tiers: tuple[tuple[str, Decimal], ...] = ()
    server_tools: tuple[tuple[str, Decimal], ...] = ()
    #: For the conservative default (:meth:`PriceTable.estimate`): the entry priced as.
    estimated_from: str = ""

    @classmethod
    def flat(
        cls, input: float | str | Decimal, output: float | str | Decimal,
        cached_input: float | str | Decimal | None = None,
        cache_write: float | str | Decimal | None = None, *,
        provider: str = "unknown", model: str = "fallback", note: str = "",
        source: str = "configured",
    ) -> ModelPrice:
        """A simple price, e.g. a fallback: ``ModelPrice.flat(3, 15)``."""
        return cls(model=model, provider=provider,
                   rates=Rates.of(input, output, cached_input, cache_write),
                   source=source, note=note)

    def as_of(self, day: date) -> ModelPrice:
        """This price with the rates in effect on `day`."""
        rates = self.rates
        for change in self.changes:
            if change.effective_from <= day:
                rates = change.rates
        return replace(self, rates=rates) if rates is not self.rates else self

    def tier_multiplier(self, tier: str) -> Decimal:
        """The multiplier for `tier` (1 for ``standard`` and for tiers the table does not
        price differently)."""
        for name, multiplier in self.service_tiers:
            if name == tier:
                return multiplier
        return _ONE

    def tool_price(self, tool: str) -> Decimal:
        """USD per 1,000 requests of server tool `tool` (0 when not priced)."""
        for name, usd in self.server_tools:
            if name == tool:
                return usd
        return _ZERO

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model, "provider": self.provider, **self.rates.as_dict(),
            "source": self.source, "checked": self.checked,
        }
        if self.note:
            out["note"] = self.note
        if self.aliases:
            out["aliases"] = list(self.aliases)
        if self.prefixes:
            out["prefixes"] = list(self.prefixes)
        if self.long_context is not None:
            out["long_context"] = {
                "threshold_tokens": self.long_context.threshold_tokens,
                **self.long_context.rates.as_dict(),
            }
        if self.changes:
            out["changes"] = [
                {"from": c.effective_from.isoformat(), **c.rates.as_dict()}
                for c in self.changes
            ]
        if self.service_tiers:
            out["service_tiers"] = {k: float(v) for k, v in self.service_tiers}
        if self.server_tools:
            out["server_tools"] = {k: float(v) for k, v in self.server_tools}
        if self.is_fallback:
            out["is_fallback"] = True
        if self.estimated_from:
            out["estimated_from"] = self.estimated_from
        return out


_ONE = Decimal(1)
_ZERO = Decimal(0)


class TokenUsage(NamedTuple):
    """What one call used, in this module's disjoint convention (see the module docstring).

    Build it from a provider's usage object (SDK object or its dict form; ``None`` fields
    count as 0) with :meth:`from_anthropic`, :meth:`from_openai`, :meth:`from_gemini` or
    :meth:`from_bedrock`, or from a whole response with
    :func:`otel_budget.pricing.usage_from_response`.
    """

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_long_tokens: int = 0
    web_search_requests: int = 0
    service_tier: str = STANDARD_TIER

    @property
    def prompt_tokens(self) -> int:
        """Every prompt token: plain input, cache reads and both kinds of cache writes."""
        return (self.input_tokens + self.cached_input_tokens + self.cache_write_tokens
                + self.cache_write_long_tokens)

    @classmethod
    def from_anthropic(
        cls, usage: Any = None, output_tokens: int | None = None,
        cache_read_input_tokens: int = 0, cache_creation_input_tokens: int = 0, *,
        input_tokens: int | None = None,
    ) -> TokenUsage:
        """From an Anthropic ``Usage`` (``message.usage``) or its dict form.

        Anthropic's counts are already disjoint. ``cache_creation.ephemeral_1h_input_tokens``
        become ``cache_write_long_tokens`` (the rest of ``cache_creation_input_tokens`` are
        5-minute writes); ``server_tool_use.web_search_requests`` and ``service_tier`` are
        kept. The legacy form ``from_anthropic(input_tokens, output_tokens, cache_read,
        cache_creation)`` with ints still works.
        """
        if usage is None or isinstance(usage, int):
            return check_token_counts(
                usage if input_tokens is None else input_tokens,
                output_tokens, cache_read_input_tokens, cache_creation_input_tokens)
        from .responses import anthropic_usage

        return anthropic_usage(usage)

    @classmethod
    def from_openai(
        cls, usage: Any = None, completion_tokens: int | None = None,
        cached_tokens: int = 0, *, prompt_tokens: int | None = None,
    ) -> TokenUsage:
        """From an OpenAI ``CompletionUsage`` (Chat Completions) or ``ResponseUsage``
        (Responses API), or their dict forms.

        OpenAI's prompt/input count *includes* cached tokens and cache writes; they are
        split out (12-hour writes become ``cache_write_long_tokens``). Reasoning tokens are
        already inside the completion/output count. The legacy form
        ``from_openai(prompt_tokens=, completion_tokens=, cached_tokens=)`` still works.
        """
        if usage is None or isinstance(usage, int):
            prompt = usage if prompt_tokens is None else prompt_tokens
            return cls(_split(prompt, cached_tokens, "prompt_tokens", "cached_tokens"),
                       _check_count("completion_tokens", completion_tokens), cached_tokens)
        from .responses import openai_usage

        return openai_usage(usage)

    @classmethod
    def from_gemini(
        cls, usage: Any = None, candidates_token_count: int | None = None,
        cached_content_token_count: int = 0, thoughts_token_count: int = 0, *,
        prompt_token_count: int | None = None,
    ) -> TokenUsage:
        """From a Gemini ``GenerateContentResponseUsageMetadata`` (``usage_metadata``) or
        its dict form (snake_case or the REST API's camelCase).

        The prompt count includes cached tokens, which are split out; thoughts are billed
        as output; ``tool_use_prompt_token_count`` (tool results fed back) is billed as
        input. ``traffic_type`` gives the service tier. The legacy int form still works.
        """
        if usage is None or isinstance(usage, int):
            _check_count("thoughts_token_count", thoughts_token_count)
            _check_count("candidates_token_count", candidates_token_count)
            assert isinstance(candidates_token_count, int)
            prompt = usage if prompt_token_count is None else prompt_token_count
            return cls(
                _split(prompt, cached_content_token_count,
                       "prompt_token_count", "cached_content_token_count"),
                candidates_token_count + thoughts_token_count, cached_content_token_count,
            )
        from .responses import gemini_usage

        return gemini_usage(usage)

    @classmethod
    def from_bedrock(cls, usage: Any) -> TokenUsage:
        """From a Bedrock Converse ``usage`` dict (``inputTokens``, ``outputTokens``,
        ``cacheReadInputTokens``, ``cacheWriteInputTokens``); ``inputTokens`` excludes
        cache reads and writes, as on Anthropic's API."""
        from .responses import bedrock_usage

        return bedrock_usage(usage)


def _split(total: object, part: object, total_name: str, part_name: str) -> int:
    total = _check_count(total_name, total)
    part = _check_count(part_name, part)
    if part > total:
        raise ValueError(f"{part_name} ({part}) cannot exceed {total_name} ({total})")
    return total - part


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_token_counts(
    input_tokens: object, output_tokens: object,
    cached_input_tokens: object = 0, cache_write_tokens: object = 0,
    cache_write_long_tokens: object = 0, web_search_requests: object = 0,
    service_tier: object = STANDARD_TIER,
) -> TokenUsage:
    """Validate token counts (non-negative ints, not bool/float/str) and return them.

    Raises TypeError or ValueError naming the offending argument.
    """
    # The usual call, plain non-negative ints on the standard tier, without the
    # per-argument checks (bool is not `int` by type, so it takes the long way).
    if (type(input_tokens) is int and type(output_tokens) is int
            and type(cached_input_tokens) is int and type(cache_write_tokens) is int
            and type(cache_write_long_tokens) is int and type(web_search_requests) is int
            and input_tokens >= 0 and output_tokens >= 0 and cached_input_tokens >= 0
            and cache_write_tokens >= 0 and cache_write_long_tokens >= 0
            and web_search_requests >= 0 and service_tier == STANDARD_TIER):
        return TokenUsage(input_tokens, output_tokens, cached_input_tokens,
                          cache_write_tokens, cache_write_long_tokens, web_search_requests,
                          STANDARD_TIER)
    if not isinstance(service_tier, str):
        raise TypeError(f"service_tier must be a str, got {type(service_tier).__name__}")
    return TokenUsage(
        _check_count("input_tokens", input_tokens),
        _check_count("output_tokens", output_tokens),
        _check_count("cached_input_tokens", cached_input_tokens),
        _check_count("cache_write_tokens", cache_write_tokens),
        _check_count("cache_write_long_tokens", cache_write_long_tokens),
        _check_count("web_search_requests", web_search_requests),
        normalize_tier(service_tier),
    )


def check_usage(usage: object) -> TokenUsage:
    """Validate a TokenUsage (it is a tuple, so anyone can build a bad one)."""
    if not isinstance(usage, TokenUsage):
        raise TypeError(f"usage must be a TokenUsage, got {type(usage).__name__}")
    return check_token_counts(*usage)


_TIER_NAMES = {
    "": STANDARD_TIER, "standard": STANDARD_TIER, "default": STANDARD_TIER,
    "auto": STANDARD_TIER, "on_demand": STANDARD_TIER, "traffic_type_unspecified": STANDARD_TIER,
    "on_demand_flex": "flex", "on_demand_priority": "priority", "on_demand_offpeak": "flex",
}


def normalize_tier(tier: str | None) -> str:
    """A provider's service-tier name in the table's vocabulary: None/default/auto/
    ON_DEMAND -> ``standard``, Gemini ``ON_DEMAND_FLEX`` -> ``flex``,
    ``ON_DEMAND_PRIORITY`` -> ``priority``; anything else lower-cased as is."""
    if tier is None:
        return STANDARD_TIER
    key = tier.strip().lower()
    if key.startswith("traffictype."):
        key = key[len("traffictype."):]
    return _TIER_NAMES.get(key, key)


def price_call(
    price: ModelPrice, input_tokens: int, output_tokens: int,
    cached_input_tokens: int = 0, cache_write_tokens: int = 0,
    cache_write_long_tokens: int = 0, web_search_requests: int = 0,
    service_tier: str = STANDARD_TIER,
) -> float:
    """The USD cost of one call, exact to 1e-9 USD.

    Counts follow the disjoint convention of this module: ``input_tokens`` excludes cache
    reads and writes. When the model has a long-context tier and the prompt
    (input + cached + cache-write tokens) is above its threshold, the whole request,
    output included, is billed at the long-context rates. The service tier's multiplier
    applies to every token rate; web searches cost the table's per-1,000 price. Uses
    ``price.rates`` as they are, so resolve the price for the right day first
    (:meth:`PriceTable.resolve`).
    """
    usage = check_token_counts(input_tokens, output_tokens, cached_input_tokens,
                               cache_write_tokens, cache_write_long_tokens,
                               web_search_requests, service_tier)
    return float(price_call_decimal(price, usage))


def _rates_for(price: ModelPrice, usage: TokenUsage) -> Rates:
    """The long-context rates when the prompt is above the model's threshold."""
    lc = price.long_context
    if lc is not None and usage.prompt_tokens > lc.threshold_tokens:
        return lc.rates
    return price.rates


def price_call_nanos(price: ModelPrice, usage: TokenUsage) -> int:
    """:func:`price_call_decimal` in integer nano-USD (the same rounding, half to even),
    on already validated counts; integer arithmetic when the rates allow it."""
    femto = _rates_for(price, usage).femto_usd_per_token
    if femto is None or usage.service_tier != STANDARD_TIER or usage.web_search_requests:
        return int(price_call_decimal(price, usage).scaleb(9))
    total = (usage.input_tokens * femto[0] + usage.output_tokens * femto[1]
             + usage.cached_input_tokens * femto[2] + usage.cache_write_tokens * femto[3]
             + usage.cache_write_long_tokens * femto[4])
    nanos, rest = divmod(total, 1_000_000)
    if rest > 500_000 or (rest == 500_000 and nanos & 1):
        nanos += 1
    return nanos


def price_call_decimal(price: ModelPrice, usage: TokenUsage) -> Decimal:
    """:func:`price_call` on already validated counts, as a Decimal rounded to 1e-9."""
    rates = _rates_for(price, usage)
    total = (
        usage.input_tokens * rates.input
        + usage.output_tokens * rates.output
        + usage.cached_input_tokens * rates.cached_input
        + usage.cache_write_tokens * rates.cache_write
        + usage.cache_write_long_tokens * rates.cache_write_long
    ) / _MILLION
    if usage.service_tier != STANDARD_TIER:
        total *= price.tier_multiplier(usage.service_tier)
    if usage.web_search_requests:
        total += usage.web_search_requests * price.tool_price("web_search") / _THOUSAND
    return total.quantize(_NANO_USD, rounding=ROUND_HALF_EVEN)


# --- the table -----------------------------------------------------------------------------

@dataclass(frozen=True)
class PriceTable:
    """Model prices by id, with aliases, dated-id and prefix resolution and a fallback."""

    models: Mapping[str, ModelPrice]
    version: str
    sources: tuple[str, ...] = ()
    fallback: ModelPrice | None = None
    _aliases: Mapping[str, str] = field(default_factory=dict, repr=False)
    _prefixes: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    _memo: dict[str, tuple[ModelPrice, str] | None] = field(
        default_factory=dict, repr=False, compare=False)

    @classmethod
    def build(
        cls, models: Mapping[str, ModelPrice], *, version: str,
        sources: tuple[str, ...] = (), fallback: ModelPrice | None = None,
    ) -> PriceTable:
        aliases: dict[str, str] = {}
        prefixes: dict[str, str] = {}
        for model_id, price in models.items():
            for alias in price.aliases:
                aliases[alias.lower()] = model_id
            for prefix in price.prefixes:
                prefixes[prefix.lower()] = model_id
        ordered = tuple(sorted(prefixes.items(), key=lambda kv: -len(kv[0])))
        if fallback is not None and not fallback.is_fallback:
            fallback = replace(fallback, is_fallback=True)
        return cls(dict(models), version, sources, fallback, aliases, ordered, {})

    # loading

    @classmethod
    def packaged(cls, *, fallback: ModelPrice | None = None) -> PriceTable:
        """The price table shipped with otel_budget."""
        resource = resources.files("otel_budget.pricing").joinpath(PACKAGED_NAME)
        text = resource.read_text(encoding="utf-8")
        version, models = _parse(text, where=f"packaged {PACKAGED_NAME}", require_version=True)
        return cls.build(models, version=version, sources=(f"packaged {PACKAGED_NAME}",),
                         fallback=fallback)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str] | None = None, *,
        fallback: ModelPrice | None = None, include_packaged: bool = True,
    ) -> PriceTable:
        """The packaged table, overridden and extended by the file at `path` if given.

        A model id in the user file replaces the packaged entry of that id whole.
        With ``include_packaged=False`` only the user file is used.
        """
        base = cls.packaged() if include_packaged or path is None else None
        if path is None:
            assert base is not None
            return cls.build(base.models, version=base.version, sources=base.sources,
                             fallback=fallback)
        where = os.fspath(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read price file: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{where}: price file is not UTF-8 ({exc.reason})") from None
        user_version, user_models = _parse(text, where=where, require_version=False)
        if base is None:
            return cls.build(user_models, version=user_version or "user",
                             sources=(where,), fallback=fallback)
        # User entries go last so their aliases and prefixes win over packaged ones.
        merged = {k: v for k, v in base.models.items() if k not in user_models}
        merged.update(user_models)
        version = base.version + (f"+{user_version}" if user_version else "+user")
        return cls.build(merged, version=version, sources=(*base.sources, where),
                         fallback=fallback)

    @classmethod
    def load_default(
        cls, environ: Mapping[str, str] | None = None, *,
        fallback: ModelPrice | None = None,
    ) -> PriceTable:
        """The packaged table plus the file named by ``OTEL_BUDGET_PRICES``, if set, with
        the fallback price from ``OTEL_BUDGET_FALLBACK_PRICE="in,out"`` (USD per million
        input, output tokens) unless `fallback` is given. Bad values raise ConfigError
        naming the variable."""
        env = os.environ if environ is None else environ
        path = env.get(PRICES_ENV, "").strip()
        if fallback is None:
            fallback = parse_fallback_price(env.get(FALLBACK_ENV))
        return cls.load(path or None, fallback=fallback)

    from_env = load_default

    @classmethod
    def from_litellm(
        cls, base: PriceTable | None = None, *, model_cost: Mapping[str, Any] | None = None,
    ) -> PriceTable:
        """`base` (default :meth:`load_default`) extended with LiteLLM's price map for the
        models `base` does not know; where both know a model, `base` wins.

        Needs ``pip install litellm`` (ConfigError otherwise). LiteLLM's bundled copy of
        its map is used (``LITELLM_LOCAL_MODEL_COST_MAP=True`` is set before import):
        nothing is fetched. `model_cost` replaces LiteLLM's map (tests)."""
        from .litellm_source import litellm_models

        base = cls.load_default() if base is None else base
        extra = {k: v for k, v in litellm_models(model_cost).items()
                 if base.match(k) is None}
        merged = {**extra, **base.models}
        return cls.build(merged, version=f"{base.version}+litellm",
                         sources=(*base.sources, "litellm model_cost"),
                         fallback=base.fallback)

    def with_fallback(self, fallback: ModelPrice | None) -> PriceTable:
        return PriceTable.build(self.models, version=self.version, sources=self.sources,
                                fallback=fallback)

    # lookup

    def __len__(self) -> int:
        return len(self.models)

    def __iter__(self) -> Iterator[ModelPrice]:
        return iter(self.models[k] for k in sorted(self.models))

    def match(self, model: str) -> tuple[ModelPrice, str] | None:
        """(entry, how) where how is 'exact', 'alias', 'normalized', 'dated'
        or 'prefix'; None if no entry.

        Each id from :func:`otel_budget.pricing.ids.candidates` (as given, then without a
        route/publisher path or Bedrock decorations, then without a version tag or date
        stamp) is tried as an exact id or alias; then the longest declared prefix. Matching
        ignores case and surrounding whitespace. Results are memoized per table.
        """
        if not isinstance(model, str):
            raise TypeError(f"model must be a str, got {type(model).__name__}")
        memo = self._memo
        found = memo.get(model, _MISS)
        if found is not _MISS:
            return found  # type: ignore[return-value]
        found = self._match(model)
        if len(memo) < 4096:  # unknown ids must not grow it forever
            memo[model] = found
        return found

    def _match(self, model: str) -> tuple[ModelPrice, str] | None:
        keys = candidates(model)
        for i, key in enumerate(keys):
            found = self._exact_or_alias(key)
            if found is not None:
                if i == 0:
                    return found
                return found[0], ("normalized" if key == normalize(model) else "dated")
        for key in keys:
            for prefix, model_id in self._prefixes:
                if key.startswith(prefix):
                    return self.models[model_id], "prefix"
        return None

    def _exact_or_alias(self, key: str) -> tuple[ModelPrice, str] | None:
        price = self.models.get(key)
        if price is not None:
            return price, "exact"
        target = self._aliases.get(key)
        if target is not None:
            return self.models[target], "alias"
        return None

    def find(self, model: str, *, on: date | None = None) -> ModelPrice | None:
        """The model's price for day `on` (default: today in UTC), or None."""
        found = self.match(model)
        return found[0].as_of(on or _today()) if found else None

    def resolve(self, model: str, *, on: date | None = None) -> ModelPrice:
        """The model's price for day `on` (default: today in UTC).

        Falls back to the configured fallback price (returned with ``is_fallback=True``
        and ``model`` set to the requested name); without one raises UnknownModelError.
        """
        price = self.find(model, on=on)
        if price is not None:
            return price
        if self.fallback is not None:
            return replace(self.fallback, model=model.strip())
        raise UnknownModelError(
            f"no price for model {model!r} in price table {self.version}; add it in a "
            f"file named by {PRICES_ENV} or configure a fallback price"
        )


    def price(self, model: str, *, on: date | None = None) -> ModelPrice:
        """The price a call of `model` is recorded at: the table's entry, else the
        fallback price if one is configured, else :meth:`estimate`. Never raises for an
        unknown id (``is_fallback`` tells an unknown one)."""
        found = self.find(model, on=on)
        if found is not None:
            return found
        if self.fallback is not None:
            return replace(self.fallback, model=model.strip())
        return self.estimate(model, on=on)

    def estimate(self, model: str, *, on: date | None = None) -> ModelPrice:
        """The conservative default for an id the table does not know: the most
        expensive entry (input + output rate on day `on`) of the narrowest scope that has
        one: the id's model line (``claude-sonnet-4-7-20261201`` -> the ``claude-sonnet-4``
        entries), else its provider (``azure/my-deployment`` -> OpenAI), else the whole
        table. Counting too little is the dangerous direction for a budget. Returned with
        ``is_fallback=True`` and ``estimated_from`` naming the entry."""
        day = on or _today()
        pool: list[ModelPrice] = []
        scope = "model in the table"
        for line in family_lines(model):
            pool = [p for p in self.models.values()
                    if p.model == line or p.model.startswith((line + "-", line + "."))]
            if pool:
                scope = f"{line} model"
                break
        if not pool:
            family = provider_family(model)
            if family is not None:
                pool = [p for p in self.models.values() if p.provider == family]
                scope = f"{family} model"
        if not pool:
            pool, scope = list(self.models.values()), "model in the table"
        if not pool:
            return replace(ModelPrice.flat(0, 0, model=model.strip(),
                                           source="empty price table"), is_fallback=True)
        dated = [p.as_of(day) for p in pool]
        best = max(dated, key=lambda p: (p.rates.input + p.rates.output, p.model))
        return replace(
            best, model=model.strip(), is_fallback=True, estimated_from=best.model,
            aliases=(), prefixes=(),
            note=f"not in price table {self.version}: priced as {best.model}, the most "
                 f"expensive {scope} (conservative default)")


def _today() -> date:
    return datetime.now(UTC).date()


def parse_fallback_price(text: str | None) -> ModelPrice | None:
    """``"3,15"`` (USD per million input, output tokens) -> a fallback ModelPrice; None or
    blank -> None. Anything else raises ConfigError naming OTEL_BUDGET_FALLBACK_PRICE."""
    if text is None or not text.strip():
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2:
        raise ConfigError(
            f"{FALLBACK_ENV}: expected 'input,output' USD per million tokens, e.g. '3,15'; "
            f"got {text!r}")
    try:
        values = [_to_decimal(p, name) for p, name in zip(parts, ("input", "output"),
                                                           strict=True)]
    except ValueError as exc:
        raise ConfigError(f"{FALLBACK_ENV}: {exc} (in {text!r})") from None
    return replace(ModelPrice.flat(values[0], values[1], source=f"${FALLBACK_ENV}"),
                   is_fallback=True)


# --- parsing ---------------------------------------------------------------------------------

def _to_decimal(value: object, name: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    except ArithmeticError:
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not number.is_finite() or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def _parse(text: str, *, where: str, require_version: bool) -> tuple[str, dict[str, ModelPrice]]:
    try:
        doc = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: invalid TOML: {exc}") from None
    unknown = set(doc) - {"version", "models", "providers"}
    if unknown:
        raise ConfigError(f"{where}: unknown top-level field(s) {sorted(unknown)}")
    version = doc.get("version")
    if version is None and require_version:
        raise ConfigError(f"{where}: missing field 'version'")
    if version is not None and (not isinstance(version, str) or not version.strip()):
        raise ConfigError(f"{where}: field 'version' must be a non-empty string")
    raw_models = doc.get("models")
    if not isinstance(raw_models, dict) or not raw_models:
        raise ConfigError(f"{where}: missing field 'models' (a table of model entries)")
    defaults = _parse_providers(doc.get("providers", {}), where=where)
    models: dict[str, ModelPrice] = {}
    claimed: dict[str, str] = {}
    for raw_id, entry in raw_models.items():
        model_id = raw_id.strip().lower()
        field_prefix = f'models."{raw_id}"'
        if not model_id:
            raise ConfigError(f"{where}: {field_prefix}: model id must not be empty")
        if model_id in models:
            raise ConfigError(f"{where}: {field_prefix}: duplicate model id (ids ignore case)")
        price = _parse_model(model_id, entry, where=where, field_prefix=field_prefix,
                             defaults=defaults)
        for name in (*price.aliases, *price.prefixes):
            other = claimed.get(name)
            if other is not None and other != model_id:
                raise ConfigError(
                    f"{where}: {field_prefix}: alias/prefix {name!r} is already used by "
                    f"{other!r}"
                )
            claimed[name] = model_id
        models[model_id] = price
    for name, owner in claimed.items():
        if name in models and name != owner:
            raise ConfigError(
                f"{where}: models.\"{owner}\".aliases: {name!r} is itself a model id"
            )
    return (version.strip() if isinstance(version, str) else ""), models


_Pairs = tuple[tuple[str, Decimal], ...]


def _parse_providers(raw: object, *, where: str) -> dict[str, tuple[_Pairs, _Pairs]]:
    """``[providers.NAME]``: service_tiers / server_tools every model of NAME inherits."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: providers: must be a table of provider tables")
    out: dict[str, tuple[_Pairs, _Pairs]] = {}
    for name, entry in raw.items():
        def fail(field_name: str, problem: str, name: str = name) -> ConfigError:
            return ConfigError(f"{where}: providers.{name}.{field_name}: {problem}")

        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: providers.{name}: must be a table")
        unknown = set(entry) - _PROVIDER_FIELDS
        if unknown:
            raise fail(sorted(unknown)[0], f"unknown field (expected some of "
                                           f"{sorted(_PROVIDER_FIELDS)})")
        out[name.strip()] = (_number_map(entry, "service_tiers", fail),
                             _number_map(entry, "server_tools", fail))
    return out


def _number_map(entry: Mapping[str, Any], name: str, fail: Any) -> _Pairs:
    raw = entry.get(name, {})
    if not isinstance(raw, dict):
        raise fail(name, "must be a table of numbers")
    pairs = []
    for key, value in raw.items():
        try:
            pairs.append((normalize_tier(key) if name == "service_tiers" else key.strip(),
                          _to_decimal(value, f"{name}.{key}")))
        except ValueError as exc:
            raise fail(f"{name}.{key}", str(exc)) from None
    return tuple(sorted(pairs))


def _merge_pairs(base: _Pairs, override: _Pairs) -> _Pairs:
    merged = dict(base)
    merged.update(override)
    return tuple(sorted(merged.items()))


def _parse_model(
    model_id: str, entry: object, *, where: str, field_prefix: str,
    defaults: Mapping[str, tuple[_Pairs, _Pairs]] | None = None,
) -> ModelPrice:
    def fail(name: str, problem: str) -> ConfigError:
        return ConfigError(f"{where}: {field_prefix}.{name}: {problem}")

    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: {field_prefix}: must be a table")
    unknown = set(entry) - _MODEL_FIELDS
    if unknown:
        raise fail(sorted(unknown)[0], f"unknown field (expected some of {sorted(_MODEL_FIELDS)})")
    rates = _parse_rates(entry, fail)
    provider = _required_str(entry, "provider", fail)
    source = _required_str(entry, "source", fail)
    checked = entry.get("checked")
    if checked is None:
        raise fail("checked", "missing field (the day the price was checked)")
    if isinstance(checked, datetime) or not isinstance(checked, (date, str)):
        raise fail("checked", f"must be a date like 2026-11-25, got {checked!r}")
    if isinstance(checked, str):
        try:
            checked = date.fromisoformat(checked)
        except ValueError:
            raise fail("checked", f"must be a date like 2026-11-25, got {checked!r}") from None
    note = entry.get("note", "")
    if not isinstance(note, str):
        raise fail("note", "must be a string")
    aliases = _str_list(entry, "aliases", fail)
    prefixes = _str_list(entry, "prefixes", fail)
    long_context = _parse_long_context(entry.get("long_context"), fail)
    changes = _parse_changes(entry.get("changes"), fail)
    if long_context is not None and changes:
        raise fail("changes", "cannot be combined with long_context")
    tiers, tools = (defaults or {}).get(provider, ((), ()))
    return ModelPrice(
        model=model_id, provider=provider, rates=rates, source=source,
        checked=checked.isoformat(), note=note, aliases=aliases, prefixes=prefixes,
        long_context=long_context, changes=changes,
        service_tiers=_merge_pairs(tiers, _number_map(entry, "service_tiers", fail)),
        server_tools=_merge_pairs(tools, _number_map(entry, "server_tools", fail)),
    )


def _parse_rates(table: Mapping[str, Any], fail: Any, prefix: str = "") -> Rates:
    values: list[Decimal] = []
    for name in _RATE_FIELDS:
        if name not in table:
            if name == "cache_write_long":
                values.append(values[3])  # no long-TTL write price: the cache-write rate
                continue
            raise fail(prefix + name, "missing field (USD per million tokens)")
        try:
            values.append(_to_decimal(table[name], prefix + name))
        except ValueError as exc:
            raise fail(prefix + name, str(exc)) from None
    return Rates(*values)


def _required_str(entry: Mapping[str, Any], name: str, fail: Any) -> str:
    value = entry.get(name)
    if value is None:
        raise fail(name, "missing field")
    if not isinstance(value, str) or not value.strip():
        raise fail(name, "must be a non-empty string")
    return value.strip()


def _str_list(entry: Mapping[str, Any], name: str, fail: Any) -> tuple[str, ...]:
    value = entry.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise fail(name, "must be a list of non-empty strings")
    return tuple(v.strip().lower() for v in value)


def _parse_long_context(raw: object, fail: Any) -> LongContext | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise fail("long_context", "must be a table")
    unknown = set(raw) - {"threshold_tokens", *_RATE_FIELDS}
    if unknown:
        raise fail(f"long_context.{sorted(unknown)[0]}", "unknown field")
    threshold = raw.get("threshold_tokens")
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold <= 0:
        raise fail("long_context.threshold_tokens", f"must be an integer > 0, got {threshold!r}")
    return LongContext(threshold, _parse_rates(raw, fail, "long_context."))


def _parse_changes(raw: object, fail: Any) -> tuple[PriceChange, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise fail("changes", "must be an array of tables ([[models.\"id\".changes]])")
    changes = []
    for i, item in enumerate(raw):
        name = f"changes[{i}]"
        if not isinstance(item, dict):
            raise fail(name, "must be a table")
        unknown = set(item) - {"from", *_RATE_FIELDS}
        if unknown:
            raise fail(f"{name}.{sorted(unknown)[0]}", "unknown field")
        start = item.get("from")
        if isinstance(start, datetime) or not isinstance(start, date):
            raise fail(f"{name}.from", f"must be a date like 2026-12-01, got {start!r}")
        changes.append(PriceChange(start, _parse_rates(item, fail, f"{name}.")))
    starts = [c.effective_from for c in changes]
    if starts != sorted(set(starts)):
        raise fail("changes", "dates must be strictly increasing")
    return tuple(changes)

