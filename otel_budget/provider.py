"""Where a meter's instruments live: on the app's MeterProvider when one is given
(its resource and exporters), else on a private one this meter builds; and the
private provider behind `/metrics` and the collection timer.

Reach-ins into the SDK's private state, each checked against opentelemetry-sdk
1.43 (the test suite pins the behaviour they rely on):
- `MeterProvider._metric_readers`: to find a BudgetReader the app put on its own
  provider (`_all_metric_readers` is a class attribute shared by every provider);
- `MeterProvider._sdk_config.resource`: after a fork the child is a new writer, hence
  a new `service.instance.id`; the SDK keeps the resource there, shared by every
  reader's storage, and has no public way to change it.
`ScrapeTimePrometheus` (scrape.py) overrides the exporter's `collect()`, marked
`@final`; it is never registered on a provider.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, MetricsData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import CollectorRegistry

from ._version import __version__
from .instruments import INSTANCE_ATTRIBUTE
from .reader import SCOPE_NAME, BudgetReader, LedgerReader, SpendPoints

__all__ = ["Wiring", "find_budget_reader", "make_resource", "set_resource", "wire"]


@dataclass
class Wiring:
    reader: BudgetReader          # the collection timer
    export_provider: MeterProvider  # the instruments the app's exporters see
    local_provider: MeterProvider   # /metrics (the same as export_provider when ours)
    owns_export_provider: bool
    #: A private reader building llm.spend from the ledger for /metrics, when the
    #: export provider is the app's.
    local_reader: MetricReader | None
    resource: Resource
    registry: CollectorRegistry
    providers_to_shutdown: list[MeterProvider] = field(default_factory=list)

    def new_writer(self, service_name: str, writer_id: str, instance_id: str) -> None:
        """A forked child is a new writer, hence a new OTel service instance."""
        self.resource = make_resource(service_name, writer_id, instance_id)
        set_resource(self.providers_to_shutdown, self.resource)

    def register(self, register_instruments: Callable[[Meter], bool]) -> tuple[Meter, bool]:
        """The instruments on the export provider, and on the local one when it is
        another; returns the export provider's meter and whether `llm.spend` goes
        through the ledger readers there (register_instruments' answer)."""
        export_meter = self.export_provider.get_meter(SCOPE_NAME, __version__)
        spend_exported = register_instruments(export_meter)
        if self.local_provider is not self.export_provider:
            register_instruments(self.local_provider.get_meter(SCOPE_NAME, __version__))
        return export_meter, spend_exported

    def feed_spend(self, spend_points: Callable[[], SpendPoints]) -> None:
        """The readers that build llm.spend from the ledger (reader.py) get its points."""
        scope = InstrumentationScope(SCOPE_NAME, __version__)
        self.reader.set_spend_source(spend_points, resource=self.resource, scope=scope)
        local = self.local_reader
        if isinstance(local, LedgerReader) and local is not self.reader:
            local.set_spend_source(spend_points, resource=self.resource, scope=scope)


def make_resource(service_name: str, writer_id: str, instance_id: str) -> Resource:
    return Resource.create({
        "service.name": service_name,
        # Unique per process (the specification requires it); the human label
        # travels as an attribute.
        "service.instance.id": writer_id,
        INSTANCE_ATTRIBUTE: instance_id,
    })


def find_budget_reader(provider: MeterProvider) -> BudgetReader | None:
    readers = getattr(provider, "_metric_readers", ()) or ()
    for reader in readers:
        if isinstance(reader, BudgetReader):
            return reader
    return None


def set_resource(providers: Sequence[MeterProvider], resource: Resource) -> None:
    """Give our own providers a new resource (a forked child is a new writer)."""
    for provider in providers:
        config = getattr(provider, "_sdk_config", None)
        if config is not None:
            config.resource = resource


def wire(*, resource: Resource, app_provider: MeterProvider | None,
         metric_readers: Sequence[MetricReader]) -> Wiring:
    from .scrape import ScrapeTimePrometheus

    bound = find_budget_reader(app_provider) if app_provider is not None else None
    # /metrics renders a collection of the reader below at scrape time instead of
    # keeping a Prometheus reader on the provider: each reader aggregates every
    # synchronous measurement again (the token histogram's two per call).
    scrape: Callable[[], MetricsData | None]
    local_reader: MetricReader | None = None
    shutdown: list[MeterProvider] = []
    if app_provider is None:
        reader = BudgetReader()
        provider = MeterProvider(resource=resource, metric_readers=[reader, *metric_readers],
                                 shutdown_on_exit=False)
        shutdown.append(provider)
        export_provider = local_provider = provider
        owns = True
        scrape = reader.collect_data
    else:
        export_provider, owns = app_provider, False
        # The app's provider exports; /metrics and the collections of a provider we
        # cannot add readers to come from a private one over the same ledger.
        if bound is not None:
            reader = bound
            local_reader = LedgerReader()
            scrape = local_reader.collect_data
        else:
            reader = BudgetReader()
            local_reader = reader
            scrape = reader.collect_data
        local_provider = MeterProvider(resource=resource, metric_readers=[local_reader],
                                       shutdown_on_exit=False)
        shutdown.append(local_provider)
    # A private registry: two meters in one process must not collide in the global one.
    registry = CollectorRegistry(auto_describe=True)
    ScrapeTimePrometheus(scrape, registry=registry)
    return Wiring(reader=reader, export_provider=export_provider,
                  local_provider=local_provider, owns_export_provider=owns,
                  local_reader=local_reader, resource=resource, registry=registry,
                  providers_to_shutdown=shutdown)
