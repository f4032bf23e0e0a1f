"""Token usage -> USD for a meter: :class:`UsageRecorder` (composition, no meter import).

The meter builds one ``UsageRecorder(record=..., otel_meter=..., prices=..., token_metrics=...,
day=...)`` and delegates ``record_usage``, ``record_response``, ``price_for``,
``estimate_usd`` and ``unpriced_calls`` to it. ``record`` is the meter's own validated
``record(cost_usd, attributes)``.

Token counts follow the disjoint convention documented in :mod:`otel_budget.pricing`:
``input_tokens`` excludes cache reads and writes (Anthropic's reporting); for OpenAI,
Gemini and Bedrock usage objects use ``TokenUsage.from_openai`` / ``from_gemini`` /
``from_bedrock``, or pass the whole response to ``record_response``.

Never drop a paid call, never count it at a silent $0: a model missing from the price
table (after aliases, ``BudgetConfig(model_aliases=...)``, and id normalisation) is
recorded at the fallback price if one is set (``OTEL_BUDGET_FALLBACK_PRICE``), else at
the conservative default (:meth:`PriceTable.estimate`: the most expensive entry of its
model line, else of its provider, else of the table). Either way its tokens are recorded,
the spend is marked ``otel_budget.settlement="estimated"``, the call is counted in
``llm.spend.unpriced`` and in :meth:`UsageRecorder.unpriced_calls`, and one warning per
model is logged. :meth:`UsageRecorder.estimate_usd` (before a call) prices the same way.

:meth:`UsageRecorder.record_response` never raises after a paid call because of the
response: one without usage (an OpenAI stream without ``include_usage``) or of a shape
no adapter knows settles the reservation at its maximum, else records an estimate from
the text it shows, marked ``"estimated"`` and counted as unpriced, with one warning.

Attributes the caller passes are never overwritten: ``gen_ai.request.model`` is added
only when absent (the model given, or the response's id) and ``gen_ai.response.model``
carries the id the response names.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import date
from typing import Any, Protocol

from opentelemetry.metrics import Counter, Histogram, Meter

from .pricing import (
    ModelPrice,
    PriceTable,
    TokenUsage,
    check_token_counts,
    check_usage,
    price_call_decimal,
    usage_from_response,
)
from .pricing.ids import normalize, provider_family
from .pricing.responses import response_model_of, response_provider_of, visible_text_chars
from .pricing.table import STANDARD_TIER, price_call_nanos
from .reservations import ESTIMATED, SETTLEMENT_ATTR

_log = logging.getLogger("otel_budget")

TOKEN_USAGE_INSTRUMENT = "gen_ai.client.token.usage"
UNPRICED_INSTRUMENT = "llm.spend.unpriced"
# The GenAI semantic conventions' recommended boundaries: powers of 4 up to 4**13.
TOKEN_BUCKETS: tuple[float, ...] = tuple(float(4**i) for i in range(14))
DEFAULT_OPERATION = "chat"

MODEL_ATTR = "gen_ai.request.model"
RESPONSE_MODEL_ATTR = "gen_ai.response.model"
#: The model id of a response that names none (priced by the conservative default).
UNKNOWN_MODEL = "unknown"
PROVIDER_ATTR = "gen_ai.provider.name"
OPERATION_ATTR = "gen_ai.operation.name"
TOKEN_TYPE_ATTR = "gen_ai.token.type"
SERVICE_TIER_ATTR = "llm.service_tier"
# Attributes from the caller that the token histogram carries too (semconv-recommended);
# anything else (agent, tenant, ...) stays on the spend counter only.
_HISTOGRAM_PASSTHROUGH = (RESPONSE_MODEL_ATTR, "server.address", "server.port")
_SERVER_ATTRS = ("server.address", "server.port")
#: An estimate of output tokens from text when a response carries no usage.
_CHARS_PER_TOKEN = 4
NO_USAGE_HINT = (
    'for an OpenAI stream pass stream_options={"include_usage": True} and record the '
    "last chunk (the one with usage); for an Anthropic stream record "
    "stream.get_final_message(); for the Responses API the response.completed event")

Attributes = Mapping[str, Any]


class Settles(Protocol):
    """What ``reservation=`` needs: ``settle(cost_usd, attributes)`` (and, read when a
    response has no usage, ``max_usd``)."""

    def settle(self, actual_usd: float, attributes: Attributes | None = None) -> float: ...


class UsageRecorder:
    """Prices calls from token counts or provider responses and records them.

    ``record(cost_usd, attributes)`` records spend and raises ValueError/TypeError on bad
    input; nothing else (tokens, unpriced count) is recorded unless it succeeded.
    ``token_metrics=True`` also records the GenAI ``gen_ai.client.token.usage`` histogram
    (leave it off when an instrumentation library already emits it). ``day()`` is the
    meter's current day: prices are resolved for it and :meth:`unpriced_calls` resets when
    it changes.
    """

    def __init__(
        self, *, record: Callable[[float, Mapping[str, Any] | None], None],
        otel_meter: Meter, prices: PriceTable | None, token_metrics: bool,
        day: Callable[[], date], aliases: Mapping[str, str] | None = None,
    ) -> None:
        if prices is not None and not isinstance(prices, PriceTable):
            raise TypeError(f"prices must be a PriceTable, got {type(prices).__name__}")
        self._record = record
        self._prices = prices
        self._day = day
        #: Deployment name -> model id (BudgetConfig.model_aliases), keys lower-case.
        self._aliases = {k.strip().lower(): v.strip() for k, v in (aliases or {}).items()}
        self._lock = threading.Lock()
        self._price_cache: dict[str, ModelPrice] = {}
        self._token_attr_cache: dict[tuple[str, str, str, str | None],
                                     tuple[Mapping[str, Any], Mapping[str, Any]]] = {}
        self._price_cache_day: date | None = None
        self._warned: set[str] = set()
        self._warned_no_usage = False
        self._unpriced_day: date | None = None
        self._unpriced_count = 0
        self._histogram: Histogram | None = None
        if token_metrics:
            self._histogram = otel_meter.create_histogram(
                TOKEN_USAGE_INSTRUMENT, unit="{token}",
                description="Number of input and output tokens used.",
                explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
            )
        self._unpriced: Counter = otel_meter.create_counter(
            UNPRICED_INSTRUMENT, unit="{call}",
            description="Calls recorded without a known price (fallback price or the "
                        "conservative default) or without usage (an estimate)",
        )

    # --- prices -------------------------------------------------------------------

    @property
    def prices(self) -> PriceTable:
        """The price table in use (by default :meth:`PriceTable.load_default`: the packaged
        table, ``$OTEL_BUDGET_PRICES`` and ``$OTEL_BUDGET_FALLBACK_PRICE``, loaded on first
        use)."""
        table = self._prices
        if table is None:
            with self._lock:
                if self._prices is None:
                    self._prices = PriceTable.load_default()
                table = self._prices
        return table

    def _lookup(self, model: str) -> ModelPrice:
        """The price `model` is recorded at today (:meth:`PriceTable.price`, after the
        configured aliases). Cached per day (scheduled price changes take effect at the
        boundary)."""
        day = self._day()
        cache = self._price_cache
        if day != self._price_cache_day:
            cache = self._price_cache = {}
            self._price_cache_day = day
        try:
            return cache[model]
        except KeyError:
            pass
        target = self._alias_of(model)
        price = self.prices.price(target or model, on=day)
        if target is not None and price.is_fallback:
            price = replace(price, model=model.strip())
        if len(cache) < 1024:  # unknown ids must not grow it forever
            cache[model] = price
        return price

    def _alias_of(self, model: str) -> str | None:
        aliases = self._aliases
        if not aliases:
            return None
        key = model.strip().lower()
        return aliases.get(key) or aliases.get(normalize(key))

    def price_for(self, model: str) -> ModelPrice:
        """The price a call of `model` is recorded at today. Never raises for an unknown
        id: the fallback price or the conservative default, with ``is_fallback=True``."""
        _check_model(model)
        return self._lookup(model)

    def estimate_usd(self, model: str, input_tokens: int, max_output_tokens: int) -> float:
        """The most a call can cost, before making it (for ``guard``/``reserve``):
        `input_tokens` at the input rate plus `max_output_tokens` at the output rate (long
        context tier applied). An unknown model is priced as :meth:`price_for` says (the
        conservative default), never an error."""
        usage = check_token_counts(input_tokens, max_output_tokens)
        return float(price_call_decimal(self.price_for(model), usage))

    # --- recording -----------------------------------------------------------------

    def record_usage(
        self,
        model: str,
        input_tokens: int | TokenUsage | None = None,
        output_tokens: int | None = None,
        *,
        cached_input_tokens: int = 0,
        cache_write_tokens: int = 0,
        cache_write_long_tokens: int = 0,
        web_search_requests: int = 0,
        service_tier: str = STANDARD_TIER,
        usage: TokenUsage | None = None,
        attributes: Attributes | None = None,
        reservation: Settles | None = None,
    ) -> float:
        """Price one call, record the cost (and the token usage) and return it in USD
        (exact to 1e-9).

        Either token counts, ``record_usage(model, 1000, 500, cached_input_tokens=...)``, or
        a :class:`TokenUsage`, ``record_usage(model, usage)`` /
        ``record_usage(model, usage=TokenUsage.from_openai(resp.usage))``.
        ``input_tokens`` excludes cache reads (``cached_input_tokens``) and cache writes
        (``cache_write_tokens``: 5-minute/30-minute TTL; ``cache_write_long_tokens``:
        Anthropic 1-hour, OpenAI 12-hour); ``output_tokens`` includes reasoning tokens;
        ``web_search_requests`` are server-side searches; ``service_tier`` (``batch``,
        ``flex``, ``priority``...) applies the table's multiplier. Counts must be
        non-negative ints: anything else raises TypeError/ValueError and records nothing.

        The spend carries ``attributes`` plus ``gen_ai.request.model`` and
        ``gen_ai.provider.name`` (the table's provider unless ``attributes`` names one), and
        ``llm.service_tier`` when the tier is not standard. A model not in the table is
        never an error here (the call has been paid for): see the module docstring.
        Pass ``reservation`` (anything with ``settle(cost, attributes)``) to settle it with
        this cost instead of recording the cost separately.
        """
        if isinstance(input_tokens, TokenUsage):
            if usage is not None:
                raise TypeError("pass the TokenUsage once (positionally or as usage=)")
            usage, input_tokens = input_tokens, None
        if usage is not None:
            if input_tokens is not None or output_tokens is not None:
                raise TypeError("pass either token counts or usage=, not both")
            checked = check_usage(usage)
        else:
            checked = check_token_counts(
                input_tokens, output_tokens, cached_input_tokens, cache_write_tokens,
                cache_write_long_tokens, web_search_requests, service_tier)
        return self._record_checked(model, checked, attributes, reservation, None)

    def record_response(
        self, response: Any, attributes: Attributes | None = None, *,
        reservation: Settles | None = None,
    ) -> float:
        """Price and record one provider response; returns the cost in USD.

        Anthropic ``Message`` (also a stream's final message), OpenAI ``ChatCompletion``
        (or the last stream chunk, the one with usage), OpenAI Responses ``Response`` (or
        its ``response.completed`` event), Gemini ``GenerateContentResponse``, Bedrock
        Converse response dicts, or the dict form of any of them; duck-typed, no SDK
        needed. The price is the response's model's (Gemini: ``model_version``; Bedrock:
        ``attributes["gen_ai.request.model"]``, else a ``modelId``/``model`` key in the
        dict); when the table does not know it but knows the caller's
        ``gen_ai.request.model``, that one's. The service tier comes from
        ``attributes["llm.service_tier"]`` if given (e.g. ``"batch"`` for batch results),
        else from the response. Everything the response reports is billed: cache reads,
        5-minute and 1-hour cache writes, reasoning/thinking tokens as output, Gemini
        tool-use prompt tokens as input, web searches.

        The spend keeps the caller's attributes as given, adding ``gen_ai.request.model``
        (when absent: the response's model) and ``gen_ai.response.model`` (the id the
        response names). It never raises because of the response: one without usage or
        of an unknown shape is recorded as an estimate (see the module docstring). Only
        `attributes` that are not a mapping (or that OpenTelemetry refuses) raise.
        """
        if attributes is not None and not isinstance(attributes, Mapping):
            raise TypeError(f"attributes must be a mapping, got {type(attributes).__name__}")
        try:
            found = usage_from_response(response, attributes)
        except (TypeError, ValueError) as exc:
            try:  # usage but no model (a Bedrock dict without modelId): price it unknown
                found = usage_from_response(response, attributes, default_model=UNKNOWN_MODEL)
            except (TypeError, ValueError):
                return self._record_without_usage(response, attributes, reservation, exc)
        provider = found.provider if found.provider == "aws.bedrock" else None
        return self._record_checked(found.model, found.usage, attributes, reservation,
                                    provider, found.response_model, found.provider)

    def _record_checked(
        self, model: str, usage: TokenUsage, attributes: Attributes | None,
        reservation: Settles | None, provider_hint: str | None,
        response_model: str | None = None, source_provider: str | None = None,
    ) -> float:
        _check_model(model)
        if (attributes is not None and type(attributes) is not dict
                and not isinstance(attributes, Mapping)):
            raise TypeError(f"attributes must be a mapping, got {type(attributes).__name__}")
        price = self._lookup(model)
        if price.is_fallback and source_provider is not None and attributes:
            # The response names an id the table lacks (a deployment's, say); the id the
            # caller asked for may be one it knows.
            requested = attributes.get(MODEL_ATTR)
            if isinstance(requested, str) and requested.strip() and requested != model:
                known = self._lookup(requested)
                if not known.is_fallback:
                    price = known
        unpriced = price.is_fallback
        cost = price_call_nanos(price, usage) / 1e9  # the float nearest it

        spend_attrs: dict[str, Any] = dict(attributes) if attributes else {}
        if MODEL_ATTR not in spend_attrs:
            spend_attrs[MODEL_ATTR] = model
        if response_model is not None and RESPONSE_MODEL_ATTR not in spend_attrs:
            spend_attrs[RESPONSE_MODEL_ATTR] = response_model
        if PROVIDER_ATTR not in spend_attrs:
            spend_attrs[PROVIDER_ATTR] = provider_hint or (
                price.provider if not unpriced or not price.estimated_from
                else source_provider or provider_family(model) or "unknown")
        provider = spend_attrs[PROVIDER_ATTR]
        if usage.service_tier != STANDARD_TIER:
            spend_attrs.setdefault(SERVICE_TIER_ATTR, usage.service_tier)
        if unpriced:
            spend_attrs.setdefault(SETTLEMENT_ATTR, ESTIMATED)
        # Validates cost and attributes; raises before any other side effect.
        if reservation is not None:
            reservation.settle(cost, spend_attrs)
        else:
            self._record(cost, spend_attrs)

        histogram = self._histogram
        if histogram is not None:
            input_attrs, output_attrs = self._token_attributes(spend_attrs)
            histogram.record(usage.prompt_tokens, input_attrs)
            histogram.record(usage.output_tokens, output_attrs)
        if unpriced and self._count_unpriced(model, provider):
            self._warn_unpriced(model, price)
        return cost

    def _record_without_usage(
        self, response: Any, attributes: Attributes | None, reservation: Settles | None,
        problem: Exception,
    ) -> float:
        """A paid call whose response gives no usable usage: the reservation's maximum,
        else an estimate from the text the response shows, marked "estimated"."""
        named = response_model_of(response)
        requested = attributes.get(MODEL_ATTR) if attributes else None
        model = named or (requested if isinstance(requested, str) and requested.strip()
                          else UNKNOWN_MODEL)
        provider = response_provider_of(response) or provider_family(model) or "unknown"
        spend_attrs: dict[str, Any] = dict(attributes) if attributes else {}
        spend_attrs.setdefault(MODEL_ATTR, model)
        if named is not None:
            spend_attrs.setdefault(RESPONSE_MODEL_ATTR, named)
        spend_attrs.setdefault(PROVIDER_ATTR, provider)
        spend_attrs.setdefault(SETTLEMENT_ATTR, ESTIMATED)
        held = getattr(reservation, "max_usd", None) if reservation is not None else None
        if isinstance(held, (int, float)) and not isinstance(held, bool):
            cost, basis = float(held), "the reservation's maximum"
        else:
            tokens = math.ceil(visible_text_chars(response) / _CHARS_PER_TOKEN)
            cost = price_call_nanos(self._lookup(model), TokenUsage(0, tokens)) / 1e9
            basis = f"an estimate from the text it shows (~{tokens} output tokens)"
        if reservation is not None:
            reservation.settle(cost, spend_attrs)
        else:
            self._record(cost, spend_attrs)
        self._count_unpriced(model, spend_attrs[PROVIDER_ATTR])
        with self._lock:
            first, self._warned_no_usage = not self._warned_no_usage, True
        if first:
            _log.warning(
                "otel_budget: record_response: %s (model %r) carries no usable token usage "
                "(%s); recorded at %s, marked %s=%r and counted in %s. To record the real "
                "cost, %s. (Logged once.)", type(response).__name__, model,
                str(problem)[:200], basis, SETTLEMENT_ATTR, ESTIMATED, UNPRICED_INSTRUMENT,
                NO_USAGE_HINT)
        return cost

    def _token_attributes(self, spend_attrs: Mapping[str, Any]
                          ) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
        """The token histogram's input and output attribute sets for a call. The usual
        ones (string operation, provider and models, no server attributes) are built once
        per set: the SDK copies what it is given, so sharing them is safe."""
        operation = spend_attrs.get(OPERATION_ATTR, DEFAULT_OPERATION)
        provider = spend_attrs[PROVIDER_ATTR]
        model = spend_attrs[MODEL_ATTR]
        response_model = spend_attrs.get(RESPONSE_MODEL_ATTR)
        cacheable = (type(operation) is str and type(provider) is str and type(model) is str
                     and (response_model is None or type(response_model) is str)
                     and not any(name in spend_attrs for name in _SERVER_ATTRS))
        key = (operation, provider, model, response_model)
        if cacheable:
            cached = self._token_attr_cache.get(key)
            if cached is not None:
                return cached
        token_attrs: dict[str, Any] = {
            OPERATION_ATTR: operation, PROVIDER_ATTR: provider, MODEL_ATTR: model,
        }
        for name in _HISTOGRAM_PASSTHROUGH:
            if name in spend_attrs:
                token_attrs[name] = spend_attrs[name]
        pair = ({**token_attrs, TOKEN_TYPE_ATTR: "input"},
                {**token_attrs, TOKEN_TYPE_ATTR: "output"})
        if cacheable and len(self._token_attr_cache) < 1024:  # model ids vary: bounded
            self._token_attr_cache[key] = pair
        return pair

    def _count_unpriced(self, model: str, provider: str) -> bool:
        """Count one unpriced call; True the first time `model` is counted."""
        self._unpriced.add(1, {MODEL_ATTR: model, PROVIDER_ATTR: provider})
        day = self._day()
        with self._lock:
            if day != self._unpriced_day:
                self._unpriced_day = day
                self._unpriced_count = 0
            self._unpriced_count += 1
            first = model not in self._warned
            if first and len(self._warned) < 10_000:
                self._warned.add(model)
        return first

    def _warn_unpriced(self, model: str, price: ModelPrice) -> None:
        if price.estimated_from:
            _log.warning(
                "otel_budget: model %r is not in price table %s; recorded at the rates of "
                "%r (input $%s, output $%s per MTok: the most expensive of its line or "
                "provider, a conservative default), marked %s=%r and counted in %s. Map a "
                "deployment name with BudgetConfig(model_aliases=...) / "
                "OTEL_BUDGET_MODEL_ALIASES, add the model via OTEL_BUDGET_PRICES, or set "
                "OTEL_BUDGET_FALLBACK_PRICE", model, self.prices.version,
                price.estimated_from, price.rates.input, price.rates.output,
                SETTLEMENT_ATTR, ESTIMATED, UNPRICED_INSTRUMENT)
        else:
            _log.warning(
                "otel_budget: model %r is not in price table %s; recorded at the "
                "fallback price (input $%s, output $%s per MTok), marked %s=%r", model,
                self.prices.version, price.rates.input, price.rates.output,
                SETTLEMENT_ATTR, ESTIMATED)

    def unpriced_calls(self) -> int:
        """Calls recorded today (the ``day()`` in effect) without a known price."""
        with self._lock:
            return self._unpriced_count if self._unpriced_day == self._day() else 0


def _check_model(model: object) -> None:
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"model must be a non-empty string, got {model!r}")
