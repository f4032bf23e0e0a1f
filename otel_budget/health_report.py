"""A meter's health report and its server: which parts of the meter feed
`health()` (health.build_health lays the report out), and `serve_health()`'s
pages (/healthz, /metrics and, unless turned off, the status page)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import BudgetConfig
from .health import MatchKeyWatch, build_health
from .notify import NotifierDispatcher
from .perkey import PerKey
from .reader import BudgetReader
from .reservations import ReservationBook
from .tracker import BudgetTracker

if TYPE_CHECKING:
    from .health_server import HealthServer
    from .meter import BudgetMeter


@dataclass(frozen=True)
class HealthSources:
    config: BudgetConfig
    instance_id: str
    tracker: BudgetTracker
    reader: BudgetReader
    dispatcher: NotifierDispatcher
    book: ReservationBook
    match_watch: MatchKeyWatch
    perkey: PerKey | None

    def report(self, budgets: Sequence[dict[str, Any]], *, timer_expected: bool,
               unpriced_calls: int) -> dict[str, Any]:
        config = self.config
        out = build_health(
            self.tracker.state(), budgets, instance_id=self.instance_id,
            timezone=config.timezone, timer_expected=timer_expected,
            timer_running=self.reader.timer_running,
            overdue_after_s=2 * config.checkpoint_every * config.collect_interval_s
            + config.collect_interval_s,
            spool=self.tracker.spool_summary(),
            pending_nudges=self.dispatcher.pending(),
            unpriced_calls=unpriced_calls,
            unsettled_usd=self.book.unsettled_usd(),
            unmatched_match_keys=self.match_watch.unmatched(),
        )
        if self.perkey is not None:
            # The per-key budgets' keys today, key leases held, the last read of the
            # fleet's keys and any failure of it or of an alert claim per key.
            out["per_key"] = self.perkey.describe()
        return out


def serve(meter: BudgetMeter, host: str, port: int, *, status_page: bool) -> HealthServer:
    """GET /healthz (`meter.health()`) and GET /metrics, and with `status_page` the
    status page at GET / and its JSON at GET /api/status."""
    from .health_server import serve_health

    pages = None
    if status_page:
        from functools import partial

        from .web.app import respond
        from .web.status import StatusSource

        pages = partial(respond, StatusSource(meter))
    return serve_health(meter.health, meter.render_metrics, host=host, port=port,
                        pages=pages)


__all__ = ["HealthSources", "serve"]
