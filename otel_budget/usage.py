"""Token usage for BudgetMeter: `record_usage`, the hard-cap `guard`/`reserve`, and the
GenAI `gen_ai.client.token.usage` histogram.

Kept out of meter.py: BudgetMeter inherits :class:`UsageMixin` and calls
``self._init_usage(otel_meter, prices)`` once in its constructor.

Token counts follow the disjoint convention documented in :mod:`otel_budget.pricing`:
``input_tokens`` excludes cache reads and writes (Anthropic's reporting); split OpenAI's
``prompt_tokens`` or Gemini's ``promptTokenCount`` with ``TokenUsage.from_openai`` /
``from_gemini`` first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import date
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import Counter, Histogram, Meter

from .pricing import ModelPrice, PriceTable, check_token_counts, price_call_decimal
from .reservations import Reservation, ReservationBook

if TYPE_CHECKING:
    from .config import BudgetConfig
    from .reader import BudgetReader

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
# Attributes from the caller that the token histogram carries too (semconv-recommended);
# anything else (agent, tenant, ...) stays on the spend counter only.
_HISTOGRAM_PASSTHROUGH = ("gen_ai.response.model", "server.address", "server.port")

Attributes = Mapping[str, Any]


class UsageMixin:
    """record_usage / guard / reserve, for BudgetMeter."""

    if TYPE_CHECKING:
        _config: BudgetConfig
        _reader: BudgetReader

        def record(self, cost_usd: float, attributes: Attributes | None = None) -> None: ...
        def daily_spend(self) -> float: ...

    def _init_usage(self, otel_meter: Meter, prices: PriceTable | None) -> None:
        if prices is not None and not isinstance(prices, PriceTable):
            raise TypeError(f"prices must be a PriceTable, got {type(prices).__name__}")
        self._prices = prices
        self._prices_lock = threading.Lock()
        self._price_cache: dict[str, ModelPrice] = {}
        self._price_cache_day: date | None = None
        self._warned_unpriced: set[str] = set()
        self._token_histogram: Histogram = otel_meter.create_histogram(
            TOKEN_USAGE_INSTRUMENT, unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self._unpriced: Counter = otel_meter.create_counter(
            UNPRICED_INSTRUMENT, unit="{call}",
            description="Calls priced with the fallback price because their model is not "
                        "in the price table",
        )
        self._book = ReservationBook(
            spend_now=self.daily_spend,
            cap_usd=lambda: self._config.daily_cap_usd,
            record=self.record,
            day=lambda: self._reader.day.isoformat(),
        )

    # --- prices -------------------------------------------------------------------

    @property
    def prices(self) -> PriceTable:
        """The price table in use (the packaged one plus $OTEL_BUDGET_PRICES by default,
        loaded on first use)."""
        table = self._prices
        if table is None:
            with self._prices_lock:
                if self._prices is None:
                    self._prices = PriceTable.load_default()
                table = self._prices
        return table

    def price_for(self, model: str) -> ModelPrice:
        """The model's price today (the meter's day): raises UnknownModelError unless the
        table has a fallback price."""
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"model must be a non-empty string, got {model!r}")
        day = self._reader.day
        if day != self._price_cache_day:
            # A new day may bring a scheduled price change: resolve everything again.
            self._price_cache = {}
            self._price_cache_day = day
        price = self._price_cache.get(model)
        if price is None:
            price = self.prices.resolve(model, on=day)
            if len(self._price_cache) < 1024:  # unknown ids must not grow it forever
                self._price_cache[model] = price
        return price

    # --- recording -----------------------------------------------------------------

    def record_usage(
        self,
        model: str,
        input_tokens: int,
        output_tokens: int,
        *,
        cached_input_tokens: int = 0,
        cache_write_tokens: int = 0,
        attributes: Attributes | None = None,
        reservation: Reservation | None = None,
    ) -> float:
        """Price one call from its token counts, record the cost and the token usage, and
        return the cost in USD (exact to 1e-9).

        ``input_tokens`` excludes cache reads (``cached_input_tokens``) and cache writes
        (``cache_write_tokens``); ``output_tokens`` includes reasoning tokens. Counts must be
        non-negative ints: anything else raises TypeError/ValueError and records nothing.
        An unknown model raises UnknownModelError and records nothing, unless the price
        table has a fallback price: then the call is recorded at that price and counted in
        ``llm.spend.unpriced`` (with one warning per model).

        The spend carries ``attributes`` plus ``gen_ai.request.model`` and
        ``gen_ai.provider.name`` (the table's provider unless ``attributes`` names one).
        Pass ``reservation`` (from :meth:`reserve`) to settle it with this cost instead of
        recording the cost separately.
        """
        usage = check_token_counts(input_tokens, output_tokens, cached_input_tokens,
                                   cache_write_tokens)
        if attributes is not None and not isinstance(attributes, Mapping):
            raise TypeError(f"attributes must be a mapping, got {type(attributes).__name__}")
        if reservation is not None and reservation.book is not self._book:
            raise ValueError("the reservation belongs to another BudgetMeter")
        price = self.price_for(model)
        cost = float(price_call_decimal(price, usage))

        spend_attrs: dict[str, Any] = dict(attributes) if attributes else {}
        spend_attrs[MODEL_ATTR] = model
        provider = spend_attrs.setdefault(PROVIDER_ATTR, price.provider)
        if reservation is not None:
            reservation.settle(cost, spend_attrs)
        else:
            self.record(cost, spend_attrs)

        token_attrs: dict[str, Any] = {
            OPERATION_ATTR: spend_attrs.get(OPERATION_ATTR, DEFAULT_OPERATION),
            PROVIDER_ATTR: provider,
            MODEL_ATTR: model,
        }
        for key in _HISTOGRAM_PASSTHROUGH:
            if key in spend_attrs:
                token_attrs[key] = spend_attrs[key]
        histogram = self._token_histogram
        histogram.record(
            usage.input_tokens + usage.cached_input_tokens + usage.cache_write_tokens,
            {**token_attrs, TOKEN_TYPE_ATTR: "input"},
        )
        histogram.record(usage.output_tokens, {**token_attrs, TOKEN_TYPE_ATTR: "output"})

        if price.is_fallback:
            self._unpriced.add(1, {MODEL_ATTR: model, PROVIDER_ATTR: provider})
            with self._prices_lock:
                first = model not in self._warned_unpriced
                self._warned_unpriced.add(model)
            if first:
                _log.warning(
                    "otel_budget: model %r is not in price table %s; recorded at the "
                    "fallback price (input $%s, output $%s per MTok)", model,
                    self.prices.version, price.rates.input, price.rates.output,
                )
        return cost

    # --- the hard cap ----------------------------------------------------------------

    def guard(self, estimated_usd: float = 0.0) -> None:
        """Raise BudgetExceeded when today's fleet spend + open reservations + the estimate
        would pass the cap (landing exactly on it is allowed; zero cost always passes)."""
        self._book.guard(estimated_usd)

    def reserve(self, max_usd: float, attributes: Attributes | None = None) -> Reservation:
        """Hold `max_usd` against the cap while a call is in flight, checking the cap and
        holding in one atomic step (raises BudgetExceeded if it would pass)::

            with meter.reserve(0.50) as r:
                response = call_the_model()
                r.settle(actual_usd)          # or meter.record_usage(..., reservation=r)

        Leaving the block without settle() or cancel() records `max_usd`.
        """
        return self._book.reserve(max_usd, attributes)

    def reserved_usd(self) -> float:
        """USD held by open reservations in this process."""
        return self._book.held_usd()


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
        model = "claude-sonnet-4-20250514"
        attrs = {"agent": "cloud_lu"}
        spend_attrs = {**attrs, MODEL_ATTR: model, PROVIDER_ATTR: "anthropic"}
        record: Callable[..., Any] = meter.record
        record_usage: Callable[..., Any] = meter.record_usage
        record_usage(model, 1, 1, attributes=attrs)  # loads the table outside the timing

        def run_record() -> None:
            for _ in range(n):
                record(0.0126, spend_attrs)

        def run_usage() -> None:
            for _ in range(n):
                record_usage(model, 1000, 500, cached_input_tokens=2000, attributes=attrs)

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
