"""`otel-budget report --png FILE [--days 30] [--store URL]`: draw the stored budget."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..config import BudgetConfig
from ..errors import ConfigError
from ..report import load_report, render_png
from ..stores.base import open_store, redact_url
from .text import printable


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report",
        help="draw daily spend against the cap, and today's spend by model and agent (PNG)",
        description=(
            "Draw each day's spend against the cap and the alert ratios, and today's "
            "spend by model and by agent, from the stored budget documents alone. "
            "Needs matplotlib: pip install 'otel-budget[report]'."
        ),
    )
    parser.add_argument("--png", required=True, type=Path, metavar="FILE",
                        help="the PNG file to write")
    parser.add_argument("--days", type=int, default=30,
                        help="how many days to show, today included (default 30)")
    parser.add_argument("--store", metavar="URL",
                        help="store URL (default: $OTEL_BUDGET_STORE or sqlite:///otel_budget.db)")
    parser.add_argument("--cap", type=float, metavar="USD",
                        help="the cap to draw (default: $OTEL_BUDGET_DAILY_CAP_USD; "
                             "none drawn otherwise)")
    parser.add_argument("--timezone", metavar="TZ",
                        help="budget time zone (default: $OTEL_BUDGET_TIMEZONE or UTC)")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    cap_known = args.cap is not None or bool(os.environ.get("OTEL_BUDGET_DAILY_CAP_USD"))
    if args.cap is not None:
        overrides["daily_cap_usd"] = args.cap
    elif not cap_known:
        # No cap to draw; a placeholder lets BudgetConfig validate the rest of the
        # environment.
        overrides["daily_cap_usd"] = 1.0
    if args.store:
        overrides["store_url"] = args.store
    if args.timezone:
        overrides["timezone"] = args.timezone
    config = BudgetConfig.from_env(**overrides)
    _refuse_missing_sqlite(config.store_url)

    store = open_store(config.store_url)
    try:
        report = load_report(
            store, days=args.days, timezone_name=config.timezone,
            cap_usd=config.daily_cap_usd if cap_known else None,
            alert_ratios=config.alert_ratios,
            budgets=[b for b in config.all_budgets if cap_known or b.name != "daily"],
        )
    finally:
        store.close()
    path = render_png(report, args.png)
    today = report.today
    spent = f"${today.spend_usd:,.2f}" if today.spend_usd is not None else "nothing recorded"
    cap = f" of ${today.cap_usd:,.2f}" if today.cap_usd else ""
    print(f"wrote {printable(path)} ({report.days_with_data}/{len(report.days)} days with data; "
          f"today {spent}{cap})")
    for budget in report.budgets:
        print(f"  budget {budget.name} ({budget.window}): ${budget.spend_usd:,.6f} "
              f"of ${budget.cap_usd:,.2f}")
    # Budgets the writers reported that this configuration does not know: no cap.
    configured = {budget.name for budget in report.budgets}
    for name, usd in sorted(today.by_budget.items()):
        if name not in configured:
            print(f"  budget {printable(name)}: ${usd:,.6f} today")
    for name in report.unreadable:
        print(f"warning: skipped unreadable document {printable(name)}")
    return 0


def _refuse_missing_sqlite(url: str) -> None:
    # Opening a SQLite URL creates the file; a report must not leave an empty
    # database behind because of a typo in the path.
    if url.lower().startswith("sqlite://"):
        path = url.split("://", 1)[1][1:]
        if path and not Path(path).exists():
            raise ConfigError(f"store: no SQLite database at {redact_url(url)!r}")
