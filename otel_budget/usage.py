"""Token usage -> USD for a meter: :class:`UsageRecorder` (composition, no meter import).

The meter builds one ``UsageRecorder(record=..., otel_meter=..., prices=..., token_metrics=...,
day=...)`` and delegates ``record_usage``, ``record_response``, ``price_for``,
``estimate_usd`` and ``unpriced_calls`` to it. ``record`` is the meter's own validated
``record(cost_usd, attributes)``.

Token counts follow the disjoint convention documented in :mod:`otel_budget.pricing`:
``input_tokens`` excludes cache reads and writes (Anthropic's reporting); for OpenAI,
Gemini and Bedrock usage objects use ``TokenUsage.from_openai`` / ``from_gemini`` /
``from_bedrock``, or pass the whole response to ``record_response``.

Never drop a paid call: after a call, a model missing from the price table is recorded
with the fallback price if one is set, else at $0; either way its tokens are recorded, the
call is counted in ``llm.spend.unpriced`` and in :meth:`UsageRecorder.unpriced_calls`, and
one warning per model is logged. Only :meth:`UsageRecorder.price_for` and
:meth:`UsageRecorder.estimate_usd` (before a call) raise UnknownModelError.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import date
from typing import Any, Protocol

from opentelemetry.metrics import Counter, Histogram, Meter

from .errors import UnknownModelError
from .pricing import (
    ModelPrice,
    PriceTable,
    TokenUsage,
    check_token_counts,
    check_usage,
    price_call_decimal,
    usage_from_response,
)
from .pricing.table import STANDARD_TIER, price_call_nanos

_log = logging.getLogger("otel_budget")

TOKEN_USAGE_INSTRUMENT = "gen_ai.client.token.usage"
UNPRICED_INSTRUMENT = "llm.spend.unpriced"
# The GenAI semantic conventions' recommended boundaries: powers of 4 up to 4**13.
TOKEN_BUCKETS: tuple[float, ...] = tuple(float(4**i) for i in range(14))
DEFAULT_OPERATION = "chat"

MODEL_ATTR = "gen_ai.request.model"
PROVIDER_ATTR = "gen_ai.provider.name"
OPERATION_ATTR = "gen_ai.operation.name"
TOKEN_TYPE_ATTR = "gen_ai.token.type"
SERVICE_TIER_ATTR = "llm.service_tier"
# Attributes from the caller that the token histogram carries too (semconv-recommended);
# anything else (agent, tenant, ...) stays on the spend counter only.
_HISTOGRAM_PASSTHROUGH = ("gen_ai.response.model", "server.address", "server.port")

Attributes = Mapping[str, Any]


class Settles(Protocol):
    """What ``reservation=`` needs: ``settle(cost_usd, attributes)``."""

    def settle(self, actual_usd: float, attributes: Attributes | None = None) -> float: ...


_UNPRICED = ModelPrice.flat(0, 0, model="unpriced", source="none: unknown model, recorded at $0")


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
        day: Callable[[], date],
    ) -> None:
        if prices is not None and not isinstance(prices, PriceTable):
            raise TypeError(f"prices must be a PriceTable, got {type(prices).__name__}")
        self._record = record
        self._prices = prices
        self._day = day
        self._lock = threading.Lock()
        self._price_cache: dict[str, ModelPrice | None] = {}
        self._token_attr_cache: dict[tuple[str, str, str],
                                     tuple[Mapping[str, Any], Mapping[str, Any]]] = {}
        self._price_cache_day: date | None = None
        self._warned: set[str] = set()
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
            description="Calls recorded without a known price (fallback price or $0) "
                        "because their model is not in the price table",
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

    def _lookup(self, model: str) -> ModelPrice | None:
        """The table's price for `model` today, the fallback if the table has one, else
        None. Cached per day (scheduled price changes take effect at the boundary)."""
        day = self._day()
        cache = self._price_cache
        if day != self._price_cache_day:
            cache = self._price_cache = {}
            self._price_cache_day = day
        try:
            return cache[model]
        except KeyError:
            pass
        table = self.prices
        price = table.find(model, on=day)
        if price is None and table.fallback is not None:
            price = table.resolve(model, on=day)
        if len(cache) < 1024:  # unknown ids must not grow it forever
            cache[model] = price
        return price

    def price_for(self, model: str) -> ModelPrice:
        """The model's price today: raises UnknownModelError unless the table has a
        fallback price (then returned with ``is_fallback=True``)."""
        _check_model(model)
        price = self._lookup(model)
        if price is None:
            self.prices.resolve(model, on=self._day())  # raises with the usual message
            raise UnknownModelError(model)  # pragma: no cover
        return price

    def estimate_usd(self, model: str, input_tokens: int, max_output_tokens: int) -> float:
        """The most a call can cost, before making it (for ``guard``/``reserve``):
        `input_tokens` at the input rate plus `max_output_tokens` at the output rate (long
        context tier applied). Raises UnknownModelError for an unknown model without a
        fallback price."""
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
        needed. The model comes from the response (Gemini: ``model_version``, else
        ``attributes["gen_ai.request.model"]``; Bedrock: ``attributes
        ["gen_ai.request.model"]``, else a ``modelId``/``model`` key in the dict). The
        service tier comes from ``attributes["llm.service_tier"]`` if given (e.g.
        ``"batch"`` for batch results), else from the response. Everything the response
        reports is billed: cache reads, 5-minute and 1-hour cache writes, reasoning/
        thinking tokens as output, Gemini tool-use prompt tokens as input, web searches.
        A response none of the adapters recognise raises TypeError, one without usage
        ValueError, and nothing is recorded.
        """
        if attributes is not None and not isinstance(attributes, Mapping):
            raise TypeError(f"attributes must be a mapping, got {type(attributes).__name__}")
        found = usage_from_response(response, attributes)
        provider = found.provider if found.provider == "aws.bedrock" else None
        return self._record_checked(found.model, found.usage, attributes, reservation,
                                    provider)

    def _record_checked(
        self, model: str, usage: TokenUsage, attributes: Attributes | None,
        reservation: Settles | None, provider_hint: str | None,
    ) -> float:
        _check_model(model)
        if (attributes is not None and type(attributes) is not dict
                and not isinstance(attributes, Mapping)):
            raise TypeError(f"attributes must be a mapping, got {type(attributes).__name__}")
        price = self._lookup(model)
        unpriced = price is None or price.is_fallback
        cost = price_call_nanos(price or _UNPRICED, usage) / 1e9  # the float nearest it

        spend_attrs: dict[str, Any] = dict(attributes) if attributes else {}
        spend_attrs[MODEL_ATTR] = model
        if PROVIDER_ATTR not in spend_attrs:
            spend_attrs[PROVIDER_ATTR] = provider_hint or (
                price.provider if price is not None else "unknown")
        provider = spend_attrs[PROVIDER_ATTR]
        if usage.service_tier != STANDARD_TIER:
            spend_attrs.setdefault(SERVICE_TIER_ATTR, usage.service_tier)
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
        if unpriced:
            self._count_unpriced(model, provider, price)
        return cost

    def _token_attributes(self, spend_attrs: Mapping[str, Any]
                          ) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
        """The token histogram's input and output attribute sets for a call. The usual
        ones (string operation and provider, no passthrough key) are built once per
        set: the SDK copies what it is given, so sharing them is safe."""
        operation = spend_attrs.get(OPERATION_ATTR, DEFAULT_OPERATION)
        provider = spend_attrs[PROVIDER_ATTR]
        model = spend_attrs[MODEL_ATTR]
        cacheable = (type(operation) is str and type(provider) is str
                     and not any(name in spend_attrs for name in _HISTOGRAM_PASSTHROUGH))
        if cacheable:
            cached = self._token_attr_cache.get((operation, provider, model))
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
            self._token_attr_cache[(operation, provider, model)] = pair
        return pair

    def _count_unpriced(self, model: str, provider: str, price: ModelPrice | None) -> None:
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
        if first:
            if price is None:
                _log.warning(
                    "otel_budget: model %r is not in price table %s and no fallback price is "
                    "set; its calls are recorded at $0 and counted in %s (set "
                    "OTEL_BUDGET_FALLBACK_PRICE or add it via OTEL_BUDGET_PRICES)",
                    model, self.prices.version, UNPRICED_INSTRUMENT)
            else:
                _log.warning(
                    "otel_budget: model %r is not in price table %s; recorded at the "
                    "fallback price (input $%s, output $%s per MTok)", model,
                    self.prices.version, price.rates.input, price.rates.output)

    def unpriced_calls(self) -> int:
        """Calls recorded today (the ``day()`` in effect) without a known price."""
        with self._lock:
            return self._unpriced_count if self._unpriced_day == self._day() else 0


def _check_model(model: object) -> None:
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"model must be a non-empty string, got {model!r}")
