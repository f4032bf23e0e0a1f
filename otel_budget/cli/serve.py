"""`otel-budget serve [--host 127.0.0.1] [--port 9464]`: a budget meter built from the
environment (see otel_budget.autoconfig) serving the status page (/ and
/api/status), /healthz and /metrics (its own instruments and the fleet's spend read
from the store) until SIGINT or SIGTERM, then shutting down cleanly with a final
checkpoint."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from functools import partial
from types import FrameType
from typing import TYPE_CHECKING, Any

from ..autoconfig import from_env
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..health_server import HealthServer
    from ..meter import BudgetMeter

DEFAULT_PORT = 9464  # the port OpenTelemetry's Prometheus exporters conventionally use


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve /healthz and /metrics for a budget meter configured from the environment",
        description=(
            "Build a budget meter from OTEL_BUDGET_* and OTEL_* variables, serve GET "
            "/healthz (200 ok, 503 degraded) and GET /metrics (Prometheus text), export "
            "over OTLP if OTEL_EXPORTER_OTLP_ENDPOINT is set, and write a final "
            "checkpoint on SIGINT/SIGTERM."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; use 0.0.0.0 deliberately)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port to bind (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--store", metavar="URL",
                        help="store URL (default: $OTEL_BUDGET_STORE or sqlite:///otel_budget.db)")
    parser.set_defaults(func=handle)


def serve_with_fleet(meter: BudgetMeter, host: str, port: int) -> HealthServer:
    """The meter's /healthz, the status page, and a /metrics that adds the fleet's
    spend read from the store (`llm_fleet_*`, see otel_budget.web.fleet_metrics)
    to the meter's own instruments."""
    from prometheus_client import CONTENT_TYPE_LATEST

    from ..health_server import serve_health
    from ..web.app import respond
    from ..web.fleet_metrics import FleetMetrics
    from ..web.status import StatusSource

    config = meter.config
    fleet = FleetMetrics(StatusSource(meter.store, budgets=config.all_budgets,
                                      timezone_name=config.timezone))

    def metrics() -> tuple[bytes, str]:
        own, _ = meter.render_metrics()
        try:
            extra = fleet.render()
        except Exception as exc:  # the process's own metrics still answer
            extra = (b"# fleet metrics unavailable: " + type(exc).__name__.encode() + b"\n")
        return own + extra, CONTENT_TYPE_LATEST

    return serve_health(meter.health, metrics, host=host, port=port,
                        pages=partial(respond, StatusSource(meter)))


def handle(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be 0-65535, got {args.port}")
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    # Installed before anything starts, so a signal during start-up still gets a
    # clean shutdown instead of killing the process mid-checkpoint.
    previous = {
        sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        # A corrupt stored row must not stop a server: it starts degraded and says why.
        overrides = {"store_url": args.store} if args.store else {}
        meter = from_env(start=False, **overrides)
        try:
            meter.start(strict=False)
            try:
                server = serve_with_fleet(meter, host=args.host, port=args.port)
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
                ) from None
            try:
                print(
                    f"otel-budget serve: instance {meter.instance_id} on {server.url} "
                    "(GET / status page, GET /api/status, GET /healthz, GET /metrics "
                    "with the fleet's spend from the store); Ctrl-C to stop",
                    flush=True,
                )
                stop.wait()
            finally:
                server.shutdown()
        finally:
            meter.shutdown()
        checkpoint = meter.health().get("last_checkpoint") or {}
        name = signal.Signals(received[0]).name if received else "stop"
        print(
            f"otel-budget serve: {name}, final checkpoint "
            f"{'written' if checkpoint.get('ok') else 'FAILED: ' + str(checkpoint.get('error'))}",
            file=sys.stderr, flush=True,
        )
        return 0 if checkpoint.get("ok") else 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
