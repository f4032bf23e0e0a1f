"""The last fleet view, kept in a small file beside the spool.

A process that starts while the store does not answer enforces and reports at least
what the fleet had spent, from this copy, instead of $0: every budget's spend over
its window (this writer's own included: a restarted process is a new writer, and
what its predecessor spent is the fleet's) and the day's total, as last read.

Written atomically (a temporary file, fsync, rename; 0600) in the spool's root
directory, one file per store (keyed by `spool.store_locator`: where the store
leads as far as can be told offline, so a process starting during an outage finds
the copy whatever the URL's spelling; it carries no secret). A missing, unreadable
or malformed copy is ignored: it only ever raises the floor the fleet view starts
from, and the store's answer replaces it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from types import MappingProxyType

from . import money
from .fleet import SOURCE_LOCAL, FleetView, Spend
from .private_files import check_private_chain, ensure_private_dir, write_atomic

_log = logging.getLogger("otel_budget")
_VERSION = 1
_MAX_BYTES = 1 << 20


def cache_path(spool_root: Path, store_locator: str) -> Path:
    """The copy's file, in the spool's root directory."""
    digest = hashlib.sha256(store_locator.encode("utf-8", "backslashreplace")).hexdigest()[:24]
    return spool_root / f"fleet-{digest}.json"


def save(path: Path, *, day: date, total_usd: float, windows: Mapping[str, tuple[str, float]],
         read_at: str | None) -> None:
    """Write the copy: `windows` is budget name -> (window id, fleet spend in it)."""
    content = {
        "version": _VERSION, "day": day.isoformat(), "total_usd": money.round_usd(total_usd),
        "read_at": read_at,
        "budgets": {name: {"window": w, "spend_usd": money.round_usd(s)}
                    for name, (w, s) in sorted(windows.items())},
    }
    data = json.dumps(content, sort_keys=True, allow_nan=False).encode()
    ensure_private_dir(path.parent)
    write_atomic(path, data, prefix=".fleet-")


def load(path: Path, *, day: date, windows: Mapping[str, str]) -> FleetView | None:
    """The view the copy gives for `day` (budget name -> its current window id), or
    None when there is no usable copy. Only windows still current count."""
    try:
        # A copy another user could have planted or changed must not set the floor.
        check_private_chain(path.parent)
        st = path.stat()
        if st.st_size > _MAX_BYTES or st.st_uid != os.getuid() or st.st_mode & 0o022:
            return None
        content = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(content, dict) or content.get("version") != _VERSION:
        return None
    budgets = content.get("budgets")
    if not isinstance(budgets, dict):
        return None
    prior: dict[str, float] = {}
    for name, window in windows.items():
        item = budgets.get(name)
        if isinstance(item, dict) and item.get("window") == window and money.is_stored_amount(
                item.get("spend_usd")):
            prior[name] = float(item["spend_usd"])
    total = content.get("total_usd")
    today_total = 0.0
    if content.get("day") == day.isoformat() and money.is_stored_amount(total):
        today_total = float(total)
    if not prior and not today_total:
        return None
    read_at = content.get("read_at")
    return FleetView(
        day=day, others=Spend.of(today_total, {}), prior=MappingProxyType(prior),
        source=SOURCE_LOCAL, read_at=read_at if isinstance(read_at, str) else None)


__all__ = ["cache_path", "load", "save"]
