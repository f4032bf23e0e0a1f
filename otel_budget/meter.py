"""BudgetMeter: the one object a dispatcher holds, a facade over the ledger (what this
process recorded), the tracker (budgets, checkpoints, alerts; tracker.py), the
reader (the collection timer; reader.py, wired by provider.py), the notifier
dispatcher, the hard budgets (leases, per-key books, reservations; enforcement.py)
and the shutdown sequence (shutdown.py). Its own code checks input on the hot path
and hands everything else to those.

Instruments are observable (asynchronous): `record()` adds to the ledger and touches
no SDK aggregation, so its cost does not grow with the number of readers; each
collection reads the ledger. They live on the app's MeterProvider when one is given
(its resource and exporters), else on one this meter builds.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import date, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader

from . import enforcement, health_report, ledger, lifecycle, money
from . import provider as provider_wiring
from .config import BudgetConfig
from .enforcement import Enforcement
from .errors import BudgetError
from .health import MatchKeyWatch
from .health_report import HealthSources
from .instruments import WRITER_ATTRIBUTE, register_instruments
from .money import UsdAmount
from .notify import Notifier, NotifierDispatcher
from .reader import (
    BudgetReader,
    SpendPoints,
)
from .refusals import ENTRY_KEY as REFUSALS_KEY
from .refusals import RefusalLog
from .reservations import Reservation
from .shutdown import DEFAULT_SHUTDOWN_TIMEOUT_S, MeterStop
from .spool import Spool
from .stores.base import PatchStore, open_store
from .tracker import BudgetTracker

if TYPE_CHECKING:
    from .health_server import HealthServer
    from .pricing import ModelPrice, PriceTable, TokenUsage
    from .usage import UsageRecorder


_log = logging.getLogger("otel_budget")

Attributes = Mapping[str, Any]


class BudgetMeter:
    """Records LLM spend and keeps the budgets. See README for the lifecycle."""

    def __init__(
        self,
        config: BudgetConfig,
        *,
        store: PatchStore | None = None,
        notifiers: Sequence[Notifier] | NotifierDispatcher = (),
        metric_readers: Sequence[MetricReader] = (),
        clock: Callable[[], datetime] | None = None,
        prices: PriceTable | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        _check_arguments(config, notifiers, metric_readers, prices, meter_provider)
        self._config = config
        self._owns_store = store is None
        self._store: PatchStore = store if store is not None else open_store(config.store_url)
        try:
            self._compose(config, notifiers, metric_readers, clock, prices, meter_provider)
        except BaseException:
            if self._owns_store:
                self._store.close()  # a store we opened must not outlive a failed construction
            raise
        self_ref = weakref.ref(self)

        def after_fork() -> None:
            meter = self_ref()
            if meter is not None:
                meter._after_fork_in_child()

        os.register_at_fork(after_in_child=after_fork)

    def _compose(
        self, config: BudgetConfig, notifiers: Sequence[Notifier] | NotifierDispatcher,
        metric_readers: Sequence[MetricReader], clock: Callable[[], datetime] | None,
        prices: PriceTable | None, meter_provider: MeterProvider | None,
    ) -> None:
        self._instance_id = config.resolved_instance_id()
        self._max_call = config.max_call_usd
        # Pass a NotifierDispatcher to tune delivery (timeouts, backoff); it is closed
        # at shutdown either way.
        self._dispatcher = (notifiers if isinstance(notifiers, NotifierDispatcher)
                            else NotifierDispatcher(list(notifiers)))
        self._tracker = BudgetTracker(
            config, self._store, instance_id=self._instance_id,
            submit_nudge=self._dispatcher.submit, pending_nudges=self._dispatcher.pending,
            clock=clock,
            spool=Spool(config.spool_dir, store=self._store),
        )
        self._ledger = self._tracker.ledger
        self._budget_index = {b.name: b for b in config.all_budgets}
        tracker = self._tracker
        self._refusals = RefusalLog(
            writer=lambda: tracker.writer_id, clock=clock,
            day_of=lambda at: ledger.day_of(at, config.tzinfo).isoformat())
        # Each day's entry carries that day's refusals, so every worker's page and
        # `otel-budget status` see the fleet's.
        self._tracker.add_entry_field(REFUSALS_KEY, self._refusals.day_field)
        self._enforcement = Enforcement(
            config, self._store, tracker, instance_id=self._instance_id,
            submit_nudge=self._dispatcher.submit, record=self.record,
            check_amount=self._check_amount, refusals=self._refusals,
            current_day=self._current_day)
        self._book = self._enforcement.book
        # None without a per-key budget: record() then pays nothing for them.
        self._perkey = self._enforcement.perkey
        self._match_watch = MatchKeyWatch(config.all_budgets, config.collect_interval_s)
        self._tracker.add_round_hook(self._watch_match_keys)
        self._providers_to_shutdown: list[MeterProvider] = []
        self._wire_provider(meter_provider, metric_readers)
        self._health = HealthSources(
            config, self._instance_id, tracker, self._reader, self._dispatcher, self._book,
            self._match_watch, self._perkey)
        self._prices = prices
        self._usage: UsageRecorder | None = None
        self._usage_lock = threading.Lock()
        self._started = False
        self._closed = False
        self._shut_down = threading.Event()
        self._stop = MeterStop(self.shutdown)

    # --- wiring -------------------------------------------------------------------

    def _watch_match_keys(self) -> None:
        self._match_watch.observe(attrs for attrs, _ in self._ledger.export_points())

    def _wire_provider(
        self, app_provider: MeterProvider | None, metric_readers: Sequence[MetricReader]
    ) -> None:
        wiring = provider_wiring.wire(
            resource=provider_wiring.make_resource(self._config.service_name,
                                                   self._tracker.writer_id, self._instance_id),
            app_provider=app_provider, metric_readers=metric_readers)
        self._wiring = wiring
        self._reader = wiring.reader
        self._providers_to_shutdown = wiring.providers_to_shutdown
        self._reader.bind(self._tracker, interval_s=self._config.collect_interval_s,
                          clock=self._tracker.now, tz=self._config.tzinfo)
        self._export_meter, spend_exported = wiring.register(self._register_instruments)
        if spend_exported:
            wiring.feed_spend(self._spend_points)
        token_metrics = self._config.token_metrics
        self._token_metrics = (wiring.owns_export_provider if token_metrics is None
                               else token_metrics)

    def _spend_points(self) -> SpendPoints:
        # Each process's series of its own (see the observable callback).
        ledger_ = self._ledger
        return (ledger_.export_columns(), {WRITER_ATTRIBUTE: self._tracker.writer_id},
                ledger_.export_start_ns)

    def _register_instruments(self, otel_meter: Meter) -> bool:
        tracker = self._tracker
        return register_instruments(
            otel_meter, spend_ledger=self._ledger, writer_id=lambda: tracker.writer_id,
            refusals=self._refusals, budget_rows=self._enforcement.gauge_rows,
            state=tracker.state)

    # --- lifecycle ----------------------------------------------------------------

    def start(self, *, strict: bool = False) -> BudgetMeter:
        """Read the fleet's spend for every budget's window and start the collection
        timer, within `BudgetConfig.start_timeout_s`. A malformed stored row is
        quarantined (left out, named in health, status degraded) unless
        `strict=True`, which raises CheckpointError naming it (and leaves it
        untouched); a store that does not answer in time only degrades health
        (retried every collection), enforcing meanwhile from the last fleet view
        kept beside the spool."""
        if self._closed:
            raise BudgetError("this BudgetMeter has been shut down; create a new one")
        if not self._started:
            self._tracker.start(strict=strict, timeout_s=self._config.start_timeout_s)
            self._reader.start_timer()
            atexit.register(self.shutdown)
            # atexit misses a death by signal and os._exit: see lifecycle.py.
            lifecycle.register(self._stop)
            self._started = True
        return self

    def shutdown(self, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT_S) -> None:
        """Stop, writing this process's final entries within `timeout` seconds in all.
        Entries the store does not take in time are spooled locally (replayed by the
        next meter on this host with this store). Idempotent: a call while another
        thread's shutdown runs (a signal handler's and the app's own, say) waits for
        that one, up to `timeout`, instead of writing the final entries twice or
        returning before they are stored or spooled."""
        # Before the mark, and once (atomically, where a stop signal is held rather
        # than raced): a stop signal from here on waits for this shutdown rather than
        # finding no live meter and ending the process with nothing stored.
        if not lifecycle.begin_stop(self._stop):
            self._shut_down.wait(max(0.0, float(timeout)))
            return
        self._closed = True
        try:
            self._enforcement.stop_rounds()
            atexit.unregister(self.shutdown)
            self._stop.run(
                timeout, reader=self._reader, tracker=self._tracker,
                release=self._enforcement.release, dispatcher=self._dispatcher,
                providers=self._providers_to_shutdown,
                store_to_close=self._store if self._owns_store else None)
        finally:
            self._shut_down.set()

    def __enter__(self) -> BudgetMeter:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    async def astart(self) -> BudgetMeter:
        """start() without blocking the event loop on store I/O."""
        lifecycle.arm()  # signal handlers only install from the main thread: not in start()'s
        return await asyncio.to_thread(self.start)

    async def acheckpoint(self) -> bool:
        return await asyncio.to_thread(self.checkpoint)

    async def ashutdown(self, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT_S) -> None:
        await asyncio.to_thread(self.shutdown, timeout)

    async def __aenter__(self) -> BudgetMeter:
        return await self.astart()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.ashutdown()

    def _after_fork_in_child(self) -> None:
        self._tracker.after_fork_in_child()
        self._refusals.after_fork_in_child()
        self._enforcement.after_fork_in_child()
        self._wiring.new_writer(self._config.service_name, self._tracker.writer_id,
                                self._instance_id)
        if self._started and not self._closed:
            self._reader.after_fork_in_child()

    # --- the hot path ---------------------------------------------------------------

    def record(self, cost_usd: UsdAmount, attributes: Attributes | None = None) -> None:
        """Count one call's cost. A cost that is not a real number, finite, >= 0 and at
        most max_call_usd, or attributes OpenTelemetry would refuse, raise
        ValueError/TypeError and change nothing. No I/O."""
        if type(cost_usd) is not float or not (0.0 <= cost_usd <= self._max_call):
            cost_usd = self._check_amount(cost_usd, "cost_usd")
        if attributes is not None and type(attributes) is not dict:
            attributes = ledger.check_attributes(attributes)
        if self._closed:
            raise BudgetError("record() after shutdown(): this spend would be lost")
        nanos = round(cost_usd * 1e9)
        self._ledger.add(nanos, attributes)
        if self._perkey is not None:
            self._perkey.add(nanos, attributes, self._current_day())

    def _current_day(self) -> date:
        # Priced on every record_usage: the ledger's lock-free read while the day is open.
        return self._ledger.current_day() or self._tracker.day

    def _check_amount(self, value: object, name: str) -> float:
        return money.check_amount(value, name, self._max_call)

    # --- usage and pricing (composed, see usage.py) ---------------------------------

    @property
    def usage(self) -> UsageRecorder:
        recorder = self._usage
        if recorder is None:
            with self._usage_lock:
                if self._usage is None:
                    from .usage import UsageRecorder

                    self._usage = UsageRecorder(
                        record=self.record, otel_meter=self._export_meter,
                        prices=self._prices, token_metrics=self._token_metrics,
                        day=self._current_day, aliases=self._config.model_aliases,
                    )
                recorder = self._usage
        return recorder

    @property
    def prices(self) -> PriceTable:
        return self.usage.prices

    def price_for(self, model: str) -> ModelPrice:
        return self.usage.price_for(model)

    def record_usage(
        self, model: str, input_tokens: int | TokenUsage | None = None,
        output_tokens: int | None = None, *, cached_input_tokens: int = 0,
        cache_write_tokens: int = 0, cache_write_long_tokens: int = 0,
        web_search_requests: int = 0, service_tier: str = "standard",
        usage: TokenUsage | None = None, attributes: Attributes | None = None,
        reservation: Reservation | None = None,
    ) -> float:
        """Price one call from its token counts (or a TokenUsage) and record it; returns
        its cost in USD. See UsageRecorder.record_usage. `reservation` settles it with
        the cost."""
        if reservation is not None:
            self._own_reservation(reservation)
        return self.usage.record_usage(
            model, input_tokens, output_tokens, cached_input_tokens=cached_input_tokens,
            cache_write_tokens=cache_write_tokens,
            cache_write_long_tokens=cache_write_long_tokens,
            web_search_requests=web_search_requests, service_tier=service_tier, usage=usage,
            attributes=attributes, reservation=reservation)

    def record_response(self, response: Any, attributes: Attributes | None = None, *,
                        reservation: Reservation | None = None) -> float:
        """Price and record a provider's response object (Anthropic, OpenAI, Gemini,
        Bedrock Converse); returns the cost in USD. Never raises after a paid call
        because of the response (an unknown model, no usage): see README "Pricing from
        responses"."""
        self._own_reservation(reservation)
        return self.usage.record_response(response, attributes, reservation=reservation)

    def estimate_usd(self, model: str, input_tokens: int, max_output_tokens: int) -> float:
        """A call's maximum cost before it is made (for guard/reserve); an unknown
        model is priced by the conservative default (never UnknownModelError)."""
        return self.usage.estimate_usd(model, input_tokens, max_output_tokens)

    def unpriced_calls(self) -> int:
        """Today's calls in this process recorded without a known price."""
        return self._usage.unpriced_calls() if self._usage is not None else 0

    def _own_reservation(self, reservation: Reservation | None) -> None:
        if reservation is not None and reservation.book is not self._book:
            raise ValueError("the reservation belongs to another BudgetMeter")

    # --- hard budgets -----------------------------------------------------------------

    def guard(self, estimated_usd: UsdAmount = 0.0, attributes: Attributes | None = None) -> None:
        """Raise BudgetExceeded when a hard budget covering `attributes` (with None, the
        budgets that match every call) would pass its cap: spend in its window +
        open reservations + the estimate. Landing exactly on a cap is allowed."""
        self._book.guard(estimated_usd, attributes)

    def reserve(self, max_usd: UsdAmount, attributes: Attributes | None = None, *,
                on_error: str = "record") -> Reservation:
        """Hold `max_usd` against every hard budget covering `attributes` while a call
        is in flight, checking and holding in one atomic step::

            with meter.reserve(0.50, {"agent": "coder"}) as r:
                response = call_the_model()
                r.settle(actual_usd)

        Leaving the block without settle() or cancel() records `max_usd`. Leaving it by
        an exception that means the provider did not bill (the SDKs' HTTP status and
        connection errors) releases the hold; any other exception records `max_usd`
        marked otel_budget.settlement="unsettled" (with on_error="release", every
        exception releases the hold)."""
        return self._book.reserve(max_usd, attributes, on_error=on_error)

    def areserve(self, max_usd: UsdAmount, attributes: Attributes | None = None, *,
                 on_error: str = "record") -> AbstractAsyncContextManager[Reservation]:
        """`reserve` for asyncio (`async with meter.areserve(...) as r:`): the check is
        in memory, so a refusal is immediate and nothing blocks the event loop; a fleet
        budget's lease round trip (rare: chunks are prefetched in the background) runs
        in a thread. Cancellation counts as an error (on_error)."""
        return enforcement.areserve(self._book, max_usd, attributes, on_error=on_error)

    def reserved_usd(self, budget: str | None = None) -> float:
        """USD held by open reservations in this process."""
        return self._book.held_usd(budget)

    # --- on demand ----------------------------------------------------------------------

    def collect(self) -> None:
        """One collection now: what the timer does every collect_interval_s."""
        self._reader.run_collection(counted=True)

    def checkpoint(self, timeout: float = 30.0) -> bool:
        """Write this process's entry now; True if the store took it within `timeout`
        seconds (past it the entry is spooled locally and False returned, even
        against a hung server)."""
        def work() -> bool:
            if self._perkey is not None:
                self._perkey.fleet.invalidate()  # "now" reads the fleet's keys too
            if not self._reader.run_collection(counted=False, checkpoint=True, wait=True):
                return False
            return bool(self._tracker.state()["last_checkpoint"]["ok"])

        return self._tracker.within(work, timeout)

    def daily_spend(self) -> float:
        """The "daily" budget's spend today (fleet-wide, as known now); without a
        "daily" budget, the fleet's whole spend today."""
        if "daily" in self._budget_index:
            return self._tracker.budget_spend("daily")
        return self._tracker.day_total()

    def remaining(self) -> float:
        """The "daily" budget's cap minus its spend, never below 0 (inf without one)."""
        budget = self._budget_index.get("daily")
        if budget is None:
            return float("inf")
        return money.remaining_usd(self.daily_spend(), budget.cap_usd)

    def budgets(self) -> list[dict[str, Any]]:
        """One dict per budget: name, period, window, match, cap_usd, spend_usd,
        remaining_usd, utilization, alerts_sent, hard (and enforce, reserved_usd)."""
        return self._enforcement.budgets()

    def budget(self, name: str, attributes: Attributes | None = None) -> dict[str, Any]:
        """One budget's state, in the shape of a `budgets()` entry; for a per-key budget,
        the state of the key `attributes` select (a missing `per` attribute selects its
        "(unset)" key; without attributes, the budget's row with its top keys).
        An unknown name raises ConfigError."""
        return self._enforcement.budget(name, attributes)

    def refusals(self, limit: int | None = None) -> list[dict[str, Any]]:
        """This process's recent refusals, newest first (budget, key, amount_usd,
        at, writer, window, reason)."""
        return self._refusals.recent(limit)

    @property
    def refusal_log(self) -> RefusalLog:
        return self._refusals

    def lease_stats(self) -> dict[str, Any]:
        """Store round trips per reservation of the fleet budgets' leases (this process)."""
        return self._enforcement.lease_stats()

    def health(self) -> dict[str, Any]:
        return self._health.report(self.budgets(),
                                   timer_expected=self._started and not self._closed,
                                   unpriced_calls=self.unpriced_calls())

    def render_metrics(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of this meter's instruments (one collection of
        its local provider at scrape time)."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self._wiring.registry), CONTENT_TYPE_LATEST

    def serve_health(self, host: str = "127.0.0.1", port: int = 0, *,
                     status_page: bool = True) -> HealthServer:
        """Serve GET /healthz (200 ok / 503 degraded) and GET /metrics, and (unless
        `status_page=False`) the status page at GET / and its JSON at GET /api/status."""
        return health_report.serve(self, host, port, status_page=status_page)

    # --- accessors ------------------------------------------------------------------------

    @property
    def config(self) -> BudgetConfig:
        return self._config

    @property
    def instance_id(self) -> str:
        return self._instance_id

    @property
    def writer_id(self) -> str:
        return self._tracker.writer_id

    @property
    def store(self) -> PatchStore:
        return self._store

    @property
    def reader(self) -> BudgetReader:
        return self._reader

    @property
    def meter_provider(self) -> MeterProvider:
        """The provider the exported instruments live on (the app's, if given)."""
        return self._wiring.export_provider

    @property
    def day(self) -> date:
        return self._tracker.day

    def __repr__(self) -> str:
        names = ", ".join(self._budget_index)
        return (f"BudgetMeter(instance_id={self._instance_id!r}, writer_id={self.writer_id!r}, "
                f"budgets=[{names}], store={self._store!r})")


def _check_arguments(
    config: BudgetConfig, notifiers: Sequence[Notifier] | NotifierDispatcher,
    metric_readers: Sequence[MetricReader], prices: PriceTable | None,
    meter_provider: MeterProvider | None,
) -> None:
    """Bad arguments raise before anything is opened or started."""
    if not isinstance(config, BudgetConfig):
        raise TypeError(f"config must be a BudgetConfig, got {type(config).__name__}")
    if not isinstance(notifiers, NotifierDispatcher):
        for notifier in notifiers:
            if not callable(notifier):
                raise TypeError(f"notifier {notifier!r} is not callable")
    if meter_provider is not None and metric_readers:
        raise ValueError("pass metric_readers to your own MeterProvider, not here, "
                         "when you pass meter_provider")
    from .pricing import PriceTable

    if prices is not None and not isinstance(prices, PriceTable):
        raise TypeError(f"prices must be a PriceTable, got {type(prices).__name__}")
