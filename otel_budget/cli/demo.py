"""`otel-budget demo`: a simulated dispatcher heartbeat against the embedded store."""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from ..config import BudgetConfig
from ..errors import BudgetExceeded, ConfigError
from ..meter import BudgetMeter

# (model id as a dispatcher reports it, typical input, output and cache-read tokens);
# priced by the packaged price table through record_usage().
_MODELS = (
    ("claude-sonnet-4-20250514", 2400, 600, 6000),
    ("claude-haiku-4-5-20251001", 1500, 300, 3000),
    ("gpt-6-sol", 1800, 450, 0),
    ("gemini-4-hydrogen", 3000, 500, 0),
)
_AGENTS = ("cloud_lu", "planner", "coder", "reviewer")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("demo", help="simulate a dispatch loop with checkpoints, a nudge and a restart")
    p.add_argument("--cap", type=float, default=2.5, help="daily cap in USD (default 2.5)")
    p.add_argument("--rate", type=float, default=20.0, help="calls per second (default 20)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds in total (default 20)")
    p.add_argument("--store", default="sqlite:///otel_budget_demo.db", help="store URL")
    p.add_argument("--keep", action="store_true",
                   help="continue today's demo budget instead of starting the demo file afresh")
    p.add_argument("--seed", type=int, default=7, help="random seed for the simulated calls")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    if not (0 < args.duration <= 3600) or not (0 < args.rate <= 10_000):
        raise ConfigError("--duration must be in (0, 3600] and --rate in (0, 10000]")
    if args.store.startswith("sqlite:///") and not args.keep:
        path = Path(args.store[len("sqlite:///"):])
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
    config = BudgetConfig(
        daily_cap_usd=args.cap, collect_interval_s=0.25, checkpoint_every=10,
        instance_id="demo-dispatcher", store_url=args.store, service_name="otel-budget-demo",
    )
    return run_demo(config, rate=args.rate, duration_s=args.duration, seed=args.seed)


def run_demo(
    config: BudgetConfig, *, rate: float, duration_s: float, seed: int, out: TextIO = sys.stdout
) -> int:
    if config.daily_cap_usd is None:
        raise ConfigError("the demo needs a daily cap (--cap)")
    rng = random.Random(seed)
    view = _Progress(out, config.daily_cap_usd)
    nudges: list[dict[str, Any]] = []

    def nudge_printer(nudge: dict[str, Any]) -> None:
        nudges.append(nudge)
        view.event(
            f"NUDGE -> {nudge['to']}: {nudge['ratio']:.0%} of the ${nudge['daily_cap_usd']:.2f} "
            f"cap reached (${nudge['daily_spend_usd']:.4f}), sent once for the whole fleet"
        )

    print(f"otel-budget demo: cap ${config.daily_cap_usd:.2f}, {rate:g} calls/s for "
          f"{duration_s:g}s, store {config.store_url}", file=out)
    print("a collection every 0.25 s, a checkpoint every 10th collection; "
          "halfway through the dispatcher restarts", file=out)
    calls = 0
    for phase in (1, 2):
        with BudgetMeter(config, notifiers=[nudge_printer]) as meter:
            spend = meter.daily_spend()
            if phase == 2:
                view.event(f"RESTART: restored ${spend:.6f} from {config.store_url} "
                           f"(this process is now writer {meter.writer_id}); counting on")
            elif spend:
                view.event(f"continuing today's demo budget: ${spend:.6f} already spent")
            calls += _dispatch(meter, rng, rate, duration_s / 2, view, calls_before=calls)
            if phase == 1:
                view.event("stopping the dispatcher (final checkpoint)")
        health = meter.health()
        view.event(f"checkpoint written at shutdown: this writer ${health['instance_spend_usd']:.6f}"
                   f" (the day: ${health['daily_spend_usd']:.6f})")
    final = meter.health()
    view.finish()
    print(f"done: {calls} calls, ${final['daily_spend_usd']:.6f} spent of "
          f"${final['daily_cap_usd']:.2f} ({final['utilization']:.1%}), "
          f"{len(nudges)} nudge(s) delivered, alerts today: {final['alerts_sent']}", file=out)
    print(f"inspect it: otel-budget status --store {config.store_url}", file=out)
    return 0


def _dispatch(
    meter: BudgetMeter, rng: random.Random, rate: float, seconds: float, view: _Progress,
    *, calls_before: int = 0,
) -> int:
    start = time.monotonic()
    calls = 0
    last_seq = meter.health()["last_checkpoint"]["seq"]
    while (elapsed := time.monotonic() - start) < seconds:
        model, in_tokens, out_tokens, cached_tokens = rng.choice(_MODELS)
        try:
            meter.guard(estimated_usd=0.02)  # the hard cap: refuse calls that could pass it
        except BudgetExceeded as exc:
            view.event(f"HARD CAP: call refused ({exc}); the dispatcher stops for today")
            break
        meter.record_usage(
            model,
            int(in_tokens * rng.uniform(0.3, 1.7)),
            int(out_tokens * rng.uniform(0.2, 1.8)),
            cached_input_tokens=int(cached_tokens * rng.uniform(0.0, 1.0)),
            attributes={"agent": rng.choice(_AGENTS)},
        )
        calls += 1
        health = meter.health()
        checkpoint = health["last_checkpoint"]
        if checkpoint["seq"] != last_seq and checkpoint["at"] is not None:
            last_seq = checkpoint["seq"]
            view.event(f"checkpoint seq {checkpoint['seq']}: this writer's "
                       f"${health['instance_spend_usd']:.6f} stored "
                       f"({'ok' if checkpoint['ok'] else 'FAILED: ' + str(checkpoint['error'])})")
        view.update(health["daily_spend_usd"], calls_before + calls)
        time.sleep(max(0.0, (calls / rate) - elapsed))
    return calls


class _Progress:
    """A one-line bar on a terminal; plain periodic lines when piped."""

    def __init__(self, out: TextIO, cap: float) -> None:
        self._out, self._cap = out, cap
        self._tty = out.isatty()
        self._last_line = 0.0
        self._shown = ""

    def _bar(self, spend: float, calls: int) -> str:
        width = 30
        filled = min(width, int(width * spend / self._cap))
        mark = int(width * 0.8)
        cells = ["#" if i < filled else ("|" if i == mark else "-") for i in range(width)]
        return f"[{''.join(cells)}] ${spend:8.4f} / ${self._cap:.2f} {spend / self._cap:6.1%}  calls {calls}"

    def update(self, spend: float, calls: int) -> None:
        now = time.monotonic()
        self._shown = self._bar(spend, calls)
        if self._tty:
            self._out.write("\r" + self._shown)
            self._out.flush()
        elif now - self._last_line >= 1.0:
            self._last_line = now
            print(self._shown, file=self._out)

    def event(self, text: str) -> None:
        if self._tty and self._shown:
            self._out.write("\r" + " " * len(self._shown) + "\r")
        print(f"  * {text}", file=self._out)
        if self._tty and self._shown:
            self._out.write(self._shown)
            self._out.flush()

    def finish(self) -> None:
        if self._tty and self._shown:
            self._out.write("\n")
