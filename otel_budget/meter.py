"""BudgetMeter: the one object a dispatcher holds. It owns a MeterProvider with the
BudgetReader, a Prometheus reader for /metrics, and whatever readers you pass."""

from __future__ import annotations

import atexit
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from numbers import Real
from types import TracebackType
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from . import ledger
from .config import BudgetConfig
from .errors import BudgetError
from .health import build_health
from .notify import Notifier
from .pricing import PriceTable
from .reader import SCOPE_NAME, SPEND_INSTRUMENT, BudgetReader, BudgetSnapshot, LiveTotal
from .stores.base import PatchStore, open_store
from .usage import UsageMixin

if TYPE_CHECKING:
    from .health_server import HealthServer

__version__ = "0.1.0"

_log = logging.getLogger("otel_budget")
_INF = math.inf

Attributes = Mapping[str, Any]


class BudgetMeter(UsageMixin):
    """Records LLM spend and keeps the daily budget. See README for the lifecycle."""

    def __init__(
        self,
        config: BudgetConfig,
        *,
        store: PatchStore | None = None,
        notifiers: Sequence[Notifier] = (),
        metric_readers: Sequence[MetricReader] = (),
        clock: Callable[[], datetime] | None = None,
        prices: PriceTable | None = None,
    ) -> None:
        if not isinstance(config, BudgetConfig):
            raise TypeError(f"config must be a BudgetConfig, got {type(config).__name__}")
        for notifier in notifiers:
            if not callable(notifier):
                raise TypeError(f"notifier {notifier!r} is not callable")
        self._config = config
        self._owns_store = store is None
        self._store: PatchStore = store if store is not None else open_store(config.store_url)
        self._instance_id = config.resolved_instance_id()
        self._live = LiveTotal()
        self._reader = BudgetReader(
            config, self._store, instance_id=self._instance_id,
            notifiers=notifiers, clock=clock, live=self._live,
        )
        # A private registry: two meters in one process must not collide in the
        # global one, and the reader is attached now so /metrics shows everything
        # recorded since construction, whenever the server is started.
        self._registry = CollectorRegistry(auto_describe=True)
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        self._prometheus_reader = PrometheusMetricReader(registry=self._registry)
        resource = Resource.create(
            {"service.name": config.service_name, "service.instance.id": self._instance_id}
        )
        self._provider = MeterProvider(
            resource=resource,
            metric_readers=[self._reader, self._prometheus_reader, *metric_readers],
            shutdown_on_exit=False,
        )
        otel_meter = self._provider.get_meter(SCOPE_NAME, __version__)
        self._counter = otel_meter.create_counter(
            SPEND_INSTRUMENT, unit="USD", description="Money spent on LLM calls"
        )
        self._otel_meter = otel_meter
        self._init_usage(otel_meter, prices)  # record_usage, guard, reserve (usage.py)
        self._register_gauges()
        self._started = False
        self._closed = False

    # --- lifecycle ------------------------------------------------------------

    def start(self) -> BudgetMeter:
        """Restore today's document and start the collection timer. A corrupt
        document raises CheckpointError and leaves it untouched."""
        if self._closed:
            raise BudgetError("this BudgetMeter has been shut down; create a new one")
        if not self._started:
            self._reader.restore()
            self._reader.start_timer()
            atexit.register(self.shutdown)
            self._started = True
        return self

    def shutdown(self) -> None:
        """Write the final checkpoint and stop. Idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.shutdown)
        try:
            self._provider.shutdown()
        except Exception:
            _log.exception("otel_budget: shutting down the MeterProvider failed")
        finally:
            if self._owns_store:
                self._store.close()

    def __enter__(self) -> BudgetMeter:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    # --- the hot path ---------------------------------------------------------

    def record(self, cost_usd: float, attributes: Attributes | None = None) -> None:
        """Count one call's cost. A cost that is not a finite real number >= 0
        raises ValueError/TypeError and changes nothing. No I/O."""
        if type(cost_usd) is not float or not (0.0 <= cost_usd < _INF):
            cost_usd = _checked_amount(cost_usd)
        if attributes is not None and type(attributes) is not dict:
            attributes = _checked_attributes(attributes)
        if self._closed:
            raise BudgetError("record() after shutdown(): this spend would be lost")
        self._counter.add(cost_usd, attributes)
        nanos = round(cost_usd * 1e9)
        live = self._live
        with live.lock:
            live.nanos += nanos

    # --- on demand ------------------------------------------------------------

    def collect(self) -> None:
        """One collection now: what the timer does every collect_interval_s."""
        self._reader.run_collection(counted=True)

    def checkpoint(self) -> bool:
        """Write this instance's entry now; True if the store accepted it."""
        self._reader.run_collection(counted=False, checkpoint=True)
        return self._reader.snapshot().last_checkpoint.get("ok") is True

    def daily_spend(self) -> float:
        """Fleet-wide spend today as known now (USD, rounded to 1e-9)."""
        return self._reader.daily_spend()

    def remaining(self) -> float:
        return ledger.remaining_usd(self.daily_spend(), self._config.daily_cap_usd)

    def health(self) -> dict[str, Any]:
        return build_health(
            self._reader.snapshot(), daily_cap_usd=self._config.daily_cap_usd,
            instance_id=self._instance_id, timezone=self._config.timezone,
        )

    def render_metrics(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of everything this meter records."""
        return generate_latest(self._registry), CONTENT_TYPE_LATEST

    def serve_health(self, host: str = "127.0.0.1", port: int = 0) -> HealthServer:
        """Serve GET /healthz (200 ok / 503 degraded) and GET /metrics."""
        from .health_server import serve_health

        return serve_health(self.health, self.render_metrics, host=host, port=port)

    # --- accessors --------------------------------------------------------------

    @property
    def config(self) -> BudgetConfig:
        return self._config

    @property
    def instance_id(self) -> str:
        return self._instance_id

    @property
    def store(self) -> PatchStore:
        return self._store

    @property
    def reader(self) -> BudgetReader:
        return self._reader

    @property
    def meter_provider(self) -> MeterProvider:
        return self._provider

    def __repr__(self) -> str:
        return (
            f"BudgetMeter(instance_id={self._instance_id!r}, "
            f"daily_cap_usd={self._config.daily_cap_usd}, store={self._store!r})"
        )

    # --- gauges -----------------------------------------------------------------

    def _register_gauges(self) -> None:
        cap = self._config.daily_cap_usd

        def gauge(
            name: str, unit: str, description: str, value: Callable[[BudgetSnapshot], float]
        ) -> None:
            def callback(options: CallbackOptions) -> Iterable[Observation]:
                return [Observation(value(self._reader.snapshot()))]

            self._otel_meter.create_observable_gauge(
                name, callbacks=[callback], unit=unit, description=description
            )

        gauge("llm.budget.daily_spend", "USD", "Fleet-wide spend today",
              lambda s: s.daily_spend_usd)
        gauge("llm.budget.daily_cap", "USD", "Daily spend cap", lambda s: cap)
        gauge("llm.budget.remaining", "USD", "Cap minus spend today, never below 0",
              lambda s: ledger.remaining_usd(s.daily_spend_usd, cap))
        gauge("llm.budget.utilization.ratio", "1", "Spend today divided by the cap",
              lambda s: ledger.utilization(s.daily_spend_usd, cap))
        gauge("llm.budget.unflushed", "USD", "This instance's spend not yet checkpointed",
              lambda s: s.unflushed_usd)
        gauge("llm.budget.checkpoint.age", "s", "Seconds since the last successful checkpoint",
              lambda s: s.checkpoint_age_s)
        gauge("llm.budget.store.up", "{status}", "1 while the store answers, else 0",
              lambda s: 1 if s.store_up else 0)
        gauge("llm.budget.alerts.sent", "{alert}", "Alert thresholds claimed today",
              lambda s: len(s.alerts_sent))


def _checked_amount(cost: Any) -> float:
    if isinstance(cost, bool) or not isinstance(cost, (Real, Decimal)):
        raise TypeError(f"cost_usd must be a real number, got {type(cost).__name__}")
    try:
        value = float(cost)
    except (OverflowError, ValueError):
        raise ValueError(f"cost_usd must be a finite number >= 0, got {cost!r}") from None
    if not (0.0 <= value < _INF):
        raise ValueError(f"cost_usd must be a finite number >= 0, got {cost!r}")
    return value


def _checked_attributes(attributes: Any) -> dict[str, Any]:
    if not isinstance(attributes, Mapping):
        raise TypeError(f"attributes must be a mapping, got {type(attributes).__name__}")
    return dict(attributes)
