"""`otel-budget status`: one day's spend, per instance and per budget, from any store."""

from __future__ import annotations

import argparse
import json
import os
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from .. import ledger, money
from ..config import BudgetConfig
from ..errors import ConfigError
from ..read import read_day
from ..refusals import ENTRY_KEY as REFUSALS_KEY
from ..refusals import merge_entry_fields
from ..stores import layout, legacy
from ..stores.base import PatchStore, open_store
from ..stores.sqlite import sqlite_path
from .text import printable_data


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("status", help="show a day's spend from any store")
    p.add_argument("--store", help="store URL (default: $OTEL_BUDGET_STORE or sqlite:///otel_budget.db)")
    p.add_argument("--date", help="YYYY-MM-DD (default: today in --timezone)")
    p.add_argument("--timezone", help="IANA zone for 'today' (default: $OTEL_BUDGET_TIMEZONE or UTC)")
    p.add_argument("--budget", action="append", default=None,
                   help="show only this budget (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_status)


def open_existing_store(url: str) -> PatchStore:
    """Open a store for reading without creating an empty SQLite file by mistake."""
    if url.startswith("sqlite:"):
        path = Path(sqlite_path(url))
        if not path.exists():
            raise ConfigError(f"no SQLite store at {str(path)!r}")
    return open_store(url)


def _cmd_status(args: argparse.Namespace) -> int:
    env = os.environ
    url = args.store or env.get("OTEL_BUDGET_STORE") or "sqlite:///otel_budget.db"
    tz_name = args.timezone or env.get("OTEL_BUDGET_TIMEZONE") or "UTC"
    # Validate through BudgetConfig so status and the meter agree on what is valid.
    config = BudgetConfig(daily_cap_usd=1.0, timezone=tz_name, store_url=str(url))
    if args.date:
        try:
            day = date.fromisoformat(args.date)
        except ValueError:
            raise ConfigError(f"--date must be YYYY-MM-DD, got {args.date!r}") from None
    else:
        day = ledger.day_of(datetime.now(timezone.utc), config.tzinfo)
    cap = None
    if env.get("OTEL_BUDGET_DAILY_CAP_USD", "").strip():
        cap = BudgetConfig.from_env(env, store_url=config.store_url).daily_cap_usd
    with open_existing_store(config.store_url) as store:
        report = status_report(store, day, budgets=args.budget, daily_cap_usd=cap)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        # Stored text (attributes, ids, names) must not drive the terminal.
        print(format_status(printable_data(report)))
    return 0


def status_report(store: PatchStore, day: date, budgets: list[str] | None = None,
                  daily_cap_usd: float | None = None) -> dict[str, Any]:
    """read_day's keys (date, total_usd, instances, nudges, ...), plus version 1's
    `document`, `found`, `daily_cap_usd` and `utilization` (of the configured daily
    cap, if any) and, filtered by `budgets`, each budget's spend that day."""
    report = read_day(store, day)
    report["found"] = bool(report["instances"])
    report["document"] = legacy.document_name(day)
    report["daily_cap_usd"] = daily_cap_usd
    report["utilization"] = (money.utilization(report["total_usd"], daily_cap_usd)
                             if daily_cap_usd else None)
    # The refusals each writer stored in its entry (newest first; odd ones skipped).
    entries = store.writer_entries([report["date"]], breakdown=False)
    report["refusals"] = merge_entry_fields([e.get(REFUSALS_KEY) for e in entries],
                                            writers=[e.get("writer_id") for e in entries])
    if budgets:
        report["by_budget"] = {k: v for k, v in report["by_budget"].items() if k in budgets}
        report["nudges"] = [n for n in report["nudges"] if n.get("budget", "daily") in budgets]
        report["refusals"] = [r for r in report["refusals"] if r["budget"] in budgets]
    return report


def format_status(report: dict[str, Any]) -> str:
    quarantined = report.get("quarantined") or []
    warning = (f"quarantined (malformed, not counted): {', '.join(quarantined)}"
               if quarantined else None)
    if not report["found"]:
        return f"{report['date']}: nothing recorded yet" + (f"\n{warning}" if warning else "")
    lines = [f"{report['date']}: ${report['total_usd']:.6f} spent by {report['writers']} "
             f"writer(s) in {len(report['instances'])} instance(s)", "budgets (this day):"]
    for name, usd in report["by_budget"].items():
        lines.append(f"  {name:<32} ${usd:>14.6f}")
    lines.append("instances:")
    for key, entry in report["instances"].items():
        lines.append(f"  {key:<32} ${entry['spend_usd']:>14.6f}  writers {entry['writers']}")
    lines.append("by attributes:")
    for row in report["by_attributes"][:20]:
        attrs = ", ".join(f"{k}={v}" for k, v in sorted(row["attributes"].items())) or "(none)"
        lines.append(f"  ${row['spend_usd']:>14.6f}  {attrs}")
    if len(report["by_attributes"]) > 20:
        lines.append(f"  ... {len(report['by_attributes']) - 20} more (use --json)")
    for nudge in report["nudges"]:
        lines.append(
            f"nudge: {nudge.get('budget', 'daily')} {nudge.get('window', nudge['date'])} "
            f"{layout.ratio_pct(float(nudge['ratio']))}% -> {nudge['to']} "
            f"by {nudge['instance_id']} at {nudge['created_at']}")
    if not report["nudges"]:
        lines.append("nudges: none")
    for item in report.get("refusals", [])[:20]:
        key = ", ".join(f"{k}={v}" for k, v in sorted((item.get("key") or {}).items()))
        amount = item.get("amount_usd")
        lines.append(f"refusal: {item['budget']}{' [' + key + ']' if key else ''} "
                     f"${amount if amount is not None else float('nan'):.6f} "
                     f"at {item['at']} by {item.get('writer') or '?'}")
    if not report.get("refusals"):
        lines.append("refusals: none")
    if warning:
        lines.append(warning)
    return "\n".join(lines)
