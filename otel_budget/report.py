"""A picture of the budget drawn from the stored documents alone: each day's spend
against the cap and the alert ratios, and today's spend by model and by agent.

No metrics backend is needed, only the store the meters checkpoint to (read_day).
matplotlib is an optional extra (`pip install otel-budget[report]`); it is imported
only here, through the object API and the Agg canvas, so the host's pyplot backend
is never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from . import ledger, money
from .budgets import Budget
from .errors import BudgetError, CheckpointError, ConfigError, StoreError
from .read import read_day
from .stores import layout, legacy
from .stores.base import PatchStore
from .windows import read_window_spend

__all__ = ["BudgetReport", "BudgetSpend", "DaySpend", "breakdown", "load_report",
           "render_png", "window_spend"]

_log = logging.getLogger("otel_budget")

MODEL_KEY = "gen_ai.request.model"
AGENT_KEY = "agent"
UNSET = "(unset)"
_TOP = 8  # bars per breakdown; the rest is folded into "other"


@dataclass(frozen=True)
class DaySpend:
    day: date
    spend_usd: float | None  # None: no document for that day
    cap_usd: float | None  # the configured one (a budget's cap is configuration)
    by_model: dict[str, float] = field(default_factory=dict)
    by_agent: dict[str, float] = field(default_factory=dict)
    by_budget: dict[str, float] = field(default_factory=dict)  # each budget's spend that day


@dataclass(frozen=True)
class BudgetSpend:
    """One configured budget in its current window, as the fleet's rows have it."""

    name: str
    period: str
    window: str
    spend_usd: float
    cap_usd: float
    alert_ratios: tuple[float, ...]


@dataclass(frozen=True)
class BudgetReport:
    days: tuple[DaySpend, ...]  # oldest first; the last is today
    alert_ratios: tuple[float, ...]
    timezone: str
    unreadable: tuple[str, ...] = ()  # document names skipped as corrupt
    budgets: tuple[BudgetSpend, ...] = ()  # every configured budget, current window

    @property
    def today(self) -> DaySpend:
        return self.days[-1]

    @property
    def days_with_data(self) -> int:
        return sum(1 for d in self.days if d.spend_usd is not None)


def breakdown(by_attributes: Iterable[Mapping[str, Any]], key: str) -> dict[str, float]:
    """Spend per value of attribute `key` in a day's breakdown (read_day's
    `by_attributes`). Spend recorded without that attribute is shown as "(unset)"."""
    totals: dict[str, float] = {}
    for item in by_attributes:
        value = (item.get("attributes") or {}).get(key)
        label = UNSET if value is None else str(value)
        totals[label] = totals.get(label, 0.0) + float(item["spend_usd"])
    return {k: money.round_usd(v) for k, v in totals.items() if money.round_usd(v) > 0}


def window_spend(store: PatchStore, budgets: Sequence[Budget], today: date
                 ) -> tuple[list[BudgetSpend], list[str]]:
    """Each budget's spend in its window up to `today` (windows.read_window_spend,
    with the days an upgraded store still holds as version 1 documents), and the
    names of the malformed rows left out."""
    spent = read_window_spend(store, today, budgets, legacy=True)
    rows = [BudgetSpend(b.name, b.period, ledger.window_id(today, b.period),
                        spent.spend_usd[b.name], b.cap_usd, b.alert_ratios)
            for b in budgets]
    return rows, list(spent.quarantined)


def load_report(
    store: PatchStore,
    *,
    days: int = 30,
    timezone_name: str = "UTC",
    cap_usd: float | None = None,
    alert_ratios: Sequence[float] = (0.8,),
    today: date | None = None,
    budgets: Sequence[Budget] = (),
) -> BudgetReport:
    """Read the last `days` days (today included) from `store`, whatever their layout,
    and each of `budgets` in its current window."""
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 366:
        raise ConfigError(f"days must be an integer from 1 to 366, got {days!r}")
    tz = ZoneInfo(timezone_name)
    if today is None:
        today = ledger.day_of(datetime.now(UTC), tz)
    out: list[DaySpend] = []
    unreadable: list[str] = []
    for offset in range(days - 1, -1, -1):
        day = today - timedelta(days=offset)
        try:
            spent = read_day(store, day)
        except CheckpointError as exc:
            # One corrupt old row must not hide the other 29 days; it is reported.
            _log.warning("otel_budget report: skipping %s: %s", day, exc)
            unreadable.append(legacy.document_name(day))
            spent = None
        if spent is not None:
            unreadable.extend(name for name in spent.get("quarantined", ())
                              if name not in unreadable)
        if spent is None or not spent["instances"]:
            out.append(DaySpend(day, None, cap_usd))
            continue
        items = spent["by_attributes"]
        out.append(DaySpend(
            day, spent["total_usd"], cap_usd,
            by_model=breakdown(items, MODEL_KEY), by_agent=breakdown(items, AGENT_KEY),
            by_budget=dict(spent["by_budget"]),
        ))
    spends: list[BudgetSpend] = []
    if budgets:
        try:
            spends, bad = window_spend(store, budgets, today)
        except StoreError as exc:
            _log.warning("otel_budget report: reading the budgets' windows failed: %s", exc)
            bad = []
        unreadable.extend(name for name in bad if name not in unreadable)
    return BudgetReport(tuple(out), tuple(sorted(alert_ratios)), timezone_name,
                        tuple(unreadable), tuple(spends))


def _require_matplotlib() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise BudgetError(
            "the report needs matplotlib: pip install 'otel-budget[report]'"
        ) from None
    return Figure, FigureCanvasAgg


def _top(values: Mapping[str, float], n: int = _TOP) -> list[tuple[str, float]]:
    ranked = sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))
    if len(ranked) <= n:
        return ranked
    rest = sum(v for _, v in ranked[n - 1:])
    return [*ranked[: n - 1], (f"other ({len(ranked) - n + 1})", rest)]


def _bar_colour(spend: float, cap: float | None, ratios: Iterable[float]) -> str:
    if cap is None:
        return "#4c72b0"
    if money.passes_cap(spend, cap) or money.threshold_reached(spend, 1.0, cap):
        return "#c44e52"
    if any(money.threshold_reached(spend, r, cap) for r in ratios):
        return "#dd8452"
    return "#55a868"


def render_png(report: BudgetReport, path: str | Path, *, dpi: int = 110) -> Path:
    """Draw the report into a PNG file at `path` and return the path."""
    figure_cls, canvas_cls = _require_matplotlib()
    path = Path(path)
    budget_rows = len(report.budgets)
    height = 8 + (0.9 + 0.35 * budget_rows if budget_rows else 0)
    fig = figure_cls(figsize=(11, height), dpi=dpi, layout="constrained")
    canvas_cls(fig)
    ratios = [3, 2] + ([0.6 + 0.3 * budget_rows] if budget_rows else [])
    grid = fig.add_gridspec(len(ratios), 2, height_ratios=ratios)
    _draw_days(fig.add_subplot(grid[0, :]), report)
    if budget_rows:
        _draw_budgets(fig.add_subplot(grid[2, :]), report.budgets)
    today = report.today
    _draw_breakdown(fig.add_subplot(grid[1, 0]), today.by_model,
                    f"Today by model ({MODEL_KEY})")
    _draw_breakdown(fig.add_subplot(grid[1, 1]), today.by_agent, f"Today by {AGENT_KEY}")
    fig.suptitle(f"LLM spend, last {len(report.days)} days ({report.timezone})",
                 fontsize=14, fontweight="bold")
    try:
        fig.savefig(path, format="png")
    except OSError as exc:
        raise BudgetError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    return path


def _draw_days(ax: Any, report: BudgetReport) -> None:
    from matplotlib.patches import Patch

    days = report.days
    xs = list(range(len(days)))
    edges = [x - 0.5 for x in xs] + [xs[-1] + 0.5]
    spends = [d.spend_usd or 0.0 for d in days]
    colours = [_bar_colour(d.spend_usd or 0.0, d.cap_usd, report.alert_ratios) for d in days]
    ax.bar(xs, spends, color=colours, width=0.8, zorder=2)
    for x, d in zip(xs, days, strict=True):
        if d.spend_usd is None:
            ax.axvspan(x - 0.5, x + 0.5, color="#dddddd", alpha=0.5, zorder=1, linewidth=0)
    handles: list[Any] = []
    caps = [d.cap_usd for d in days]
    if any(c is not None for c in caps):
        cap_line = [c if c is not None else float("nan") for c in caps]
        handles.append(ax.stairs(cap_line, edges, color="#c44e52", linewidth=2, zorder=3,
                                 baseline=None, label="cap"))
        for ratio in report.alert_ratios:
            if abs(ratio - 1.0) < 1e-9:
                continue  # the cap line already is 100%
            handles.append(ax.stairs(
                [c * ratio for c in cap_line], edges, color="#dd8452", linestyle="--",
                linewidth=1.5, zorder=3, baseline=None,
                label=f"alert at {layout.ratio_pct(ratio)}%",
            ))
        handles += [
            Patch(color="#55a868", label="below the alert ratios"),
            Patch(color="#dd8452", label="alert ratio reached"),
            Patch(color="#c44e52", label="cap reached"),
        ]
    else:
        handles.append(Patch(color="#4c72b0", label="spend (no cap known)"))
    if any(d.spend_usd is None for d in days):
        handles.append(Patch(color="#dddddd", label="no document"))
    today = days[-1]
    if today.spend_usd is not None:
        label = f"today ${today.spend_usd:,.2f}"
        if today.cap_usd:
            label += f" ({today.spend_usd / today.cap_usd:.0%})"
        ax.annotate(label, (xs[-1], today.spend_usd), xytext=(-6, 0),
                    textcoords="offset points", ha="right", va="center", fontsize=9,
                    fontweight="bold",
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8})
    step = max(1, len(days) // 15)
    ticks = xs[::-step][::-1]  # counted from today, so today always has a label
    ax.set_xticks(ticks)
    ax.set_xticklabels([days[x].day.strftime("%b %d") for x in ticks], rotation=45, ha="right")
    ax.set_xlim(edges[0], edges[-1])
    ax.set_ylabel("USD per day")
    ax.set_ylim(bottom=0, top=max([*spends, *(c or 0.0 for c in caps), 1e-6]) * 1.12)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    title = "Daily spend against the cap"
    if report.unreadable:
        title += f" ({len(report.unreadable)} unreadable document(s) skipped)"
    ax.set_title(title, loc="left")
    ax.legend(handles=handles, loc="upper left", fontsize=8, ncols=2, framealpha=0.9)


def _draw_budgets(ax: Any, budgets: Sequence[BudgetSpend]) -> None:
    """Each budget's spend against its cap (as a share, so a $5 day and a $500 month
    fit one axis), with its alert ratios marked."""
    ax.set_title("Budgets in their current window (spend against cap)", loc="left")
    rows = list(budgets)[::-1]
    ys = list(range(len(rows)))
    shares = [min(b.spend_usd / b.cap_usd, 1.25) for b in rows]
    colours = [_bar_colour(b.spend_usd, b.cap_usd, b.alert_ratios) for b in rows]
    ax.barh(ys, shares, color=colours, zorder=2, height=0.6)
    for y, b in zip(ys, rows, strict=True):
        for ratio in b.alert_ratios:
            ax.plot([ratio, ratio], [y - 0.38, y + 0.38], color="#dd8452", linewidth=1.5,
                    zorder=3)
        # matplotlib reads text between two "$" as mathtext: escape them
        ax.text(min(b.spend_usd / b.cap_usd, 1.25) + 0.01, y,
                f"\\${b.spend_usd:,.2f} of \\${b.cap_usd:,.2f} "
                f"({b.spend_usd / b.cap_usd:.0%})", va="center", fontsize=8)
    ax.axvline(1.0, color="#c44e52", linewidth=2, zorder=3)
    ax.set_yticks(ys)
    ax.set_yticklabels([_shorten(f"{b.name} ({b.window})", 40) for b in rows], fontsize=8)
    ax.set_xlim(0, 1.5)
    ax.xaxis.set_major_formatter(lambda value, _pos: f"{value:.0%}")
    ax.grid(axis="x", alpha=0.3, zorder=0)


def _draw_breakdown(ax: Any, values: Mapping[str, float], title: str) -> None:
    ax.set_title(title, loc="left")
    rows = _top(values)
    if not rows:
        ax.text(0.5, 0.5, "no spend recorded today", ha="center", va="center",
                transform=ax.transAxes, color="grey")
        ax.set_axis_off()
        return
    labels = [_shorten(label) for label, _ in rows][::-1]
    amounts = [amount for _, amount in rows][::-1]
    bars = ax.barh(labels, amounts, color="#4c72b0", zorder=2)
    ax.bar_label(bars, labels=[f"${a:,.2f}" for a in amounts], padding=3, fontsize=8)
    ax.set_xlabel("USD")
    ax.margins(x=0.2)
    ax.grid(axis="x", alpha=0.3, zorder=0)
    ax.tick_params(axis="y", labelsize=8)


def _shorten(label: str, limit: int = 32) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"
