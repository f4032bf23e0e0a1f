"""BudgetMeter: the one object a dispatcher holds, composed of the ledger (what this
process recorded), the tracker (budgets, checkpoints, alerts), the reader (the
collection timer), the notifier dispatcher and the reservation book.

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
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import date, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from . import ledger, lifecycle, money
from . import provider as provider_wiring
from ._version import __version__
from .config import BudgetConfig
from .errors import BudgetError, BudgetExceeded, ConfigError
from .health import MatchKeyWatch, build_health
from .instruments import WRITER_ATTRIBUTE, register_instruments
from .leases import FleetLease, LeaseStore, supports_leases
from .money import UsdAmount
from .notify import Notifier, NotifierDispatcher
from .perkey import KEY_FIELD, PerKey
from .reader import (
    SCOPE_NAME,
    BudgetReader,
    LedgerReader,
    SpendPoints,
)
from .refusals import ENTRY_KEY as REFUSALS_KEY
from .refusals import RefusalLog
from .reservations import RESERVE_ATTEMPTS, Reservation, ReservationBook
from .spool import Spool
from .stores.base import PatchStore, open_store
from .tracker import BudgetTracker

if TYPE_CHECKING:
    from .health_server import HealthServer
    from .pricing import ModelPrice, PriceTable, TokenUsage
    from .usage import UsageRecorder


_log = logging.getLogger("otel_budget")

Attributes = Mapping[str, Any]
DEFAULT_SHUTDOWN_TIMEOUT_S = 10.0


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
        self._leases = self._make_leases(config)
        # None without a per-key budget: record() then pays nothing for them.
        self._perkey = self._make_perkey(config)
        tracker = self._tracker
        self._refusals = RefusalLog(
            writer=lambda: tracker.writer_id, clock=clock,
            day_of=lambda at: ledger.day_of(at, config.tzinfo).isoformat())
        # Each day's entry carries that day's refusals, so every worker's page and
        # `otel-budget status` see the fleet's.
        self._tracker.add_entry_field(REFUSALS_KEY, self._refusals.day_field)
        self._book = ReservationBook(
            budgets=config.all_budgets, spend_of=self._spend_of,
            window_of=self._window_of, record=self.record,
            check_amount=self._check_amount, leases=self._leases,
            on_refusal=self._refusals.record_exception,
            day=lambda: self._tracker.day, keyed=self._perkey,
        )
        if self._leases:
            self._tracker.add_round_hook(self._lease_round)
        if self._perkey is not None:
            self._tracker.add_entry_field(KEY_FIELD, self._perkey.book.entry_field)
            self._tracker.add_round_hook(self._perkey_round)
        self._match_watch = MatchKeyWatch(config.all_budgets, config.collect_interval_s)
        self._tracker.add_round_hook(self._watch_match_keys)
        self._providers_to_shutdown: list[MeterProvider] = []
        self._wire_provider(meter_provider, metric_readers)
        self._prices = prices
        self._usage: UsageRecorder | None = None
        self._usage_lock = threading.Lock()
        self._started = False
        self._closed = False

    # --- wiring -------------------------------------------------------------------

    def _lease_timing(self, config: BudgetConfig) -> tuple[float, float]:
        ttl = config.resolved_lease_ttl_s
        # An idle writer's lease goes back within seconds: its surplus is what a busy
        # writer would otherwise be refused.
        return ttl, max(2 * config.collect_interval_s, min(ttl / 3, 5.0))

    def _make_perkey(self, config: BudgetConfig) -> PerKey | None:
        if not any(b.per is not None for b in config.all_budgets):
            return None
        tracker = self._tracker
        ttl, idle = self._lease_timing(config)
        return PerKey(
            config.all_budgets, max_keys=config.max_keys_per_budget, store=self._store,
            writer_id=lambda: tracker.writer_id, day=self._current_day, now=tracker.now,
            window_of=tracker.window_of, ttl_s=ttl, idle_s=idle,
            # Other writers' entries change at their checkpoints: re-read no more often
            # (and at least every 30 s, whatever the collection interval).
            refresh_s=min(30.0, max(0.5, config.checkpoint_every * config.collect_interval_s)),
            sibling=config.sibling, instance_id=self._instance_id,
            submit_nudge=self._dispatcher.submit, first_wait_s=config.start_timeout_s,
            watch_claim=tracker.watch_claim,
        )

    def _perkey_round(self) -> None:
        if self._closed or self._perkey is None:
            return
        self._perkey.on_round(self._config.collect_interval_s,
                              store_suspect=not self._tracker.store_answers())

    def _spend_of(self, name: str) -> float:
        if self._perkey is not None and PerKey.owns(name):
            return self._perkey.spend(name)
        return self._tracker.budget_spend(name)

    def _window_of(self, name: str) -> str:
        if self._perkey is not None and PerKey.owns(name):
            return self._perkey.window(name)
        return self._tracker.window_of(name)

    def _make_leases(self, config: BudgetConfig) -> dict[str, FleetLease]:
        fleet = [b for b in config.all_budgets if b.hard and b.enforce == "fleet"]
        if not fleet:
            return {}
        if not supports_leases(self._store):
            raise ConfigError(
                f"budget {fleet[0].name!r}: enforce='fleet' (the default of a hard budget) "
                f"needs a store that grants leases (memory, SQLite, PostgreSQL or Supabase), "
                f"got {type(self._store).__name__}; pass enforce='process' for a per-process cap")
        store = cast(LeaseStore, self._store)
        ttl = config.resolved_lease_ttl_s
        # An idle writer's lease goes back within seconds: its surplus is what a busy
        # writer would otherwise be refused.
        idle = max(2 * config.collect_interval_s, min(ttl / 3, 5.0))
        tracker = self._tracker
        leases = {}
        for budget in fleet:
            if budget.per is not None:
                continue  # each key has its own lease (perkey.PerKey), made when used
            name = budget.name
            leases[name] = FleetLease(
                budget=name, cap_usd=budget.cap_usd, store=store,
                writer_id=lambda: tracker.writer_id,
                window_of=lambda name=name: tracker.window_of(name),  # type: ignore[misc]
                seen_of=lambda name=name: tracker.budget_spend(name),  # type: ignore[misc]
                ttl_s=ttl, idle_s=idle,
            )
        return leases

    def _watch_match_keys(self) -> None:
        self._match_watch.observe(attrs for attrs, _ in self._ledger.export_points())

    def _lease_round(self) -> None:
        """At each store round (after the checkpoint): renew, report, give back. Not
        in shutdown's round: its view of the fleet is mid-update (the spool replay
        reloads the day before the final entry is stored), and release follows."""
        if self._closed:
            return
        # The round failed on the store: probe it now, so that the next fleet call is
        # refused at once if it is down instead of waiting on it.
        suspect = not self._tracker.store_answers()
        for lease in self._leases.values():
            try:
                lease.on_round(self._config.collect_interval_s, store_suspect=suspect)
            except Exception as exc:
                _log.warning("otel_budget: renewing the lease on budget %r failed: %s",
                             lease.budget, type(exc).__name__ if not isinstance(exc, BudgetError)
                             else exc)

    def _release_leases(self) -> None:
        if self._perkey is not None:
            self._perkey.close()
        for lease in self._leases.values():
            try:
                lease.close()
            except Exception as exc:  # it expires after its TTL instead
                _log.warning("otel_budget: giving back the lease on budget %r failed: %s",
                             lease.budget, type(exc).__name__)

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
        self._export_meter = wiring.export_provider.get_meter(SCOPE_NAME, __version__)
        self._spend_exported = self._register_instruments(self._export_meter)
        if wiring.local_provider is not wiring.export_provider:
            self._register_instruments(wiring.local_provider.get_meter(SCOPE_NAME, __version__))
        if self._spend_exported:
            self._feed_ledger_readers(wiring.local_reader)
        token_metrics = self._config.token_metrics
        self._token_metrics = (wiring.owns_export_provider if token_metrics is None
                               else token_metrics)

    def _feed_ledger_readers(self, local_reader: MetricReader | None) -> None:
        """The readers that build llm.spend from the ledger (reader.py) get its points."""
        scope = InstrumentationScope(SCOPE_NAME, __version__)
        ledger_ = self._ledger
        tracker = self._tracker

        def spend_points() -> SpendPoints:
            # Each process's series of its own (see the observable callback).
            return (ledger_.export_columns(), {WRITER_ATTRIBUTE: tracker.writer_id},
                    ledger_.export_start_ns)

        resource = self._wiring.resource
        self._reader.set_spend_source(spend_points, resource=resource, scope=scope)
        if isinstance(local_reader, LedgerReader) and local_reader is not self._reader:
            local_reader.set_spend_source(spend_points, resource=resource, scope=scope)

    def _register_instruments(self, otel_meter: Meter) -> bool:
        tracker = self._tracker
        return register_instruments(
            otel_meter, spend_ledger=self._ledger, writer_id=lambda: tracker.writer_id,
            refusals=self._refusals, budget_rows=self._gauge_rows, state=tracker.state)

    def _gauge_rows(self) -> list[dict[str, Any]]:
        rows = self._tracker.budgets()
        if self._perkey is not None:
            for row in rows:
                budget = self._budget_index.get(row["name"])
                if budget is not None and budget.per:
                    self._per_key_row(row, budget)  # its biggest key against the cap
        return rows

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
            lifecycle.register(self)
            self._started = True
        return self

    def shutdown(self, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT_S) -> None:
        """Stop, writing this process's final entries within `timeout` seconds in all.
        Entries the store does not take in time are spooled locally (replayed by the
        next meter on this host with this store). Idempotent."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + max(0.0, float(timeout))
        atexit.unregister(self.shutdown)
        lifecycle.stopping(self)
        self._reader.stop_timer(_left(deadline) * 0.2)
        entries = self._tracker.final_entries()
        # Spool first: a store that hangs past the deadline must not lose the tail.
        self._tracker.spool_entries(entries)
        done = self._final_write_done = threading.Event()

        def write() -> None:
            try:
                if self._tracker.store_round(checkpoint=False, wait=True,
                                             timeout_s=_left(deadline)):
                    self._tracker.write_entries(entries)
                self._release_leases()
            except Exception:
                _log.exception("otel_budget: final checkpoint failed (spooled)")
            finally:
                done.set()

        worker = threading.Thread(target=write, name="OtelBudgetShutdown", daemon=True)
        worker.start()
        if not done.wait(_left(deadline) * 0.8):
            _log.warning("otel_budget: the store did not take the final checkpoint within "
                         "%.1f s; it stays spooled", timeout)
        self._dispatcher.close(_left(deadline))
        for provider in self._providers_to_shutdown:
            try:
                provider.shutdown(timeout_millis=max(1.0, _left(deadline) * 1000))
            except Exception:
                _log.exception("otel_budget: shutting down the MeterProvider failed")
        if self._owns_store and done.is_set():
            self._store.close()
        lifecycle.stopped(self)

    def _wait_final_write(self, timeout: float) -> bool:
        """For a stop signal that interrupts shutdown(): wait for its final write."""
        done: threading.Event | None = getattr(self, "_final_write_done", None)
        return done is None or done.wait(max(0.0, timeout))

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
        for lease in self._leases.values():
            lease.after_fork_in_child()  # the parent's lease stays the parent's
        if self._perkey is not None:
            self._perkey.after_fork_in_child()
        # A new writer is a new OTel service instance.
        resource = provider_wiring.make_resource(self._config.service_name,
                                                 self._tracker.writer_id, self._instance_id)
        provider_wiring.set_resource(self._providers_to_shutdown, resource)
        self._wiring.resource = resource
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

    @asynccontextmanager
    async def areserve(self, max_usd: UsdAmount, attributes: Attributes | None = None, *,
                       on_error: str = "record") -> AsyncIterator[Reservation]:
        """`reserve` for asyncio: the check is in memory, so a refusal is immediate and
        nothing blocks the event loop; a fleet budget's lease round trip (rare: chunks
        are prefetched in the background) runs in a thread. Cancellation counts as an
        error (on_error)."""
        book = self._book
        amount, budgets = book.prepare(max_usd, attributes, on_error)
        try:
            for _ in range(RESERVE_ATTEMPTS):
                result = book.try_reserve(amount, budgets, attributes, on_error=on_error)
                if isinstance(result, Reservation):
                    reservation = result
                    break
                # A fleet lease needs a store round trip: in a thread, never on the loop.
                await asyncio.to_thread(book.fill, result, amount)
            else:  # the lease kept being drawn by others between our round trips
                raise book.refusal(budgets, amount)
        except BudgetExceeded as exc:
            book.refused(exc)
            raise
        try:
            yield reservation
        except BaseException as exc:
            reservation.close(exc)
            raise
        else:
            reservation.close()

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
        if self._perkey is not None:
            self._perkey.wait_first_read()  # the fleet's keys, read beside start()
        rows = self._tracker.budgets()
        for row in rows:
            row["reserved_usd"] = self._book.held_usd(row["name"]) if row["hard"] else 0.0
            row["unsettled_usd"] = self._book.unsettled_usd(row["name"])
            lease = self._leases.get(row["name"])
            if lease is not None:
                info = lease.describe()
                row["leased_usd"] = info["leased_usd"]
                row["lease"] = info
            budget = self._budget_index.get(row["name"])
            if self._perkey is not None and budget is not None and budget.per is not None:
                self._per_key_row(row, budget)
        return rows

    def _per_key_row(self, row: dict[str, Any], budget: Any) -> None:
        """A per-key budget's row: its cap is each key's, so its spend, remaining and
        utilization are those of its biggest key (what health and the gauges compare
        with the cap); `top_keys` the 10 biggest, fleet-wide as known; `key_count` how
        many keys are known in the window and `total_spend_usd` their sum."""
        assert self._perkey is not None
        top, count, total = self._perkey.top_keys(budget)
        biggest = top[0]["spend_usd"] if top else 0.0
        row.update({
            "per": list(budget.per), "top_keys": top, "key_count": count,
            "total_spend_usd": total, "spend_usd": biggest,
            "remaining_usd": money.remaining_usd(biggest, budget.cap_usd),
            "utilization": money.utilization(biggest, budget.cap_usd),
            "alerts_sent": [],
        })

    def budget(self, name: str, attributes: Attributes | None = None) -> dict[str, Any]:
        """One budget's state, in the shape of a `budgets()` entry; for a per-key budget,
        the state of the key `attributes` select (a missing `per` attribute selects its
        "(unset)" key; without attributes, the budget's row with its top keys).
        An unknown name raises ConfigError."""
        budget = self._budget_index.get(name) if isinstance(name, str) else None
        if budget is None:
            raise ConfigError(f"no budget named {name!r:.120} (configured: "
                              f"{', '.join(self._budget_index) or 'none'})")
        if attributes is not None:
            attributes = ledger.check_attributes(attributes)
        row = next(r for r in self.budgets() if r["name"] == name)
        if budget.per is None or attributes is None or self._perkey is None:
            return row
        state = self._perkey.key_state(budget, attributes)
        for drop in ("top_keys", "key_count", "total_spend_usd", "lease", "leased_usd"):
            row.pop(drop, None)
        row.update(state)
        row["reserved_usd"] = self._book.held_usd(state.pop("lease_row"))
        row.pop("lease_row", None)
        return row

    def refusals(self, limit: int | None = None) -> list[dict[str, Any]]:
        """This process's recent refusals, newest first (budget, key, amount_usd,
        at, writer, window, reason)."""
        return self._refusals.recent(limit)

    @property
    def refusal_log(self) -> RefusalLog:
        return self._refusals

    def lease_stats(self) -> dict[str, Any]:
        """Store round trips per reservation of the fleet budgets' leases (this process)."""
        leases = list(self._leases.values())
        if self._perkey is not None:
            leases += self._perkey.leases()  # the keys' leases held now
        trips = sum(lease.round_trips for lease in leases)
        draws = sum(lease.draws for lease in leases)
        return {"round_trips": trips, "reservations": draws,
                "round_trips_per_reservation": round(trips / draws, 4) if draws else None}

    def health(self) -> dict[str, Any]:
        out = self._health()
        if self._perkey is not None:
            # The per-key budgets' keys today, key leases held, the last read of the
            # fleet's keys and any failure of it or of an alert claim per key.
            out["per_key"] = self._perkey.describe()
        return out

    def _health(self) -> dict[str, Any]:
        return build_health(
            self._tracker.state(), self.budgets(), instance_id=self._instance_id,
            timezone=self._config.timezone,
            timer_expected=self._started and not self._closed,
            timer_running=self._reader.timer_running,
            overdue_after_s=2 * self._config.checkpoint_every * self._config.collect_interval_s
            + self._config.collect_interval_s,
            spool=self._tracker.spool_summary(),
            pending_nudges=self._dispatcher.pending(),
            unpriced_calls=self.unpriced_calls(),
            unsettled_usd=self._book.unsettled_usd(),
            unmatched_match_keys=self._match_watch.unmatched(),
        )

    def render_metrics(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of this meter's instruments (one collection of
        its local provider at scrape time)."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self._wiring.registry), CONTENT_TYPE_LATEST

    def serve_health(self, host: str = "127.0.0.1", port: int = 0, *,
                     status_page: bool = True) -> HealthServer:
        """Serve GET /healthz (200 ok / 503 degraded) and GET /metrics, and (unless
        `status_page=False`) the status page at GET / and its JSON at GET /api/status."""
        from .health_server import serve_health

        pages = None
        if status_page:
            from functools import partial

            from .web.app import respond
            from .web.status import StatusSource

            pages = partial(respond, StatusSource(self))
        return serve_health(self.health, self.render_metrics, host=host, port=port,
                            pages=pages)

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


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())
