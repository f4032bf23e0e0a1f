"""A small durable local spool for checkpoints the store did not take.

Entries are cumulative, so the newest spooled entry of a (writer, day) supersedes
the older ones, and replaying one is idempotent (the store applies a seq once).
Each file is written whole (temporary file, fsync, rename), so a crash leaves
either the old file or the new one, never half of one. Files are named by writer,
day and seq; a replay removes exactly the file it replayed, so it never deletes a
newer one its owner wrote meanwhile.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_log = logging.getLogger("otel_budget")
_SUFFIX = ".json"


def default_spool_dir() -> Path:
    """$XDG_CACHE_HOME/otel_budget/spool, ~/.cache/otel_budget/spool, or a per-user
    directory under the temporary directory when there is no usable home."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if base.startswith("~"):
        base = os.path.join(tempfile.gettempdir(), f"otel_budget-{os.getuid()}")
    return Path(base) / "otel_budget" / "spool"


@dataclass(frozen=True)
class SpooledEntry:
    path: Path
    entry: dict[str, Any]


class Spool:
    """Spooled entries for one store (`store_key` names it; entries for another store
    live in another directory and are never replayed here)."""

    def __init__(self, directory: str | os.PathLike[str] | None, store_key: str) -> None:
        root = Path(directory) if directory is not None else default_spool_dir()
        digest = hashlib.sha256(store_key.encode("utf-8", "backslashreplace")).hexdigest()[:24]
        self._dir = root / digest
        self._store_key = store_key

    @property
    def directory(self) -> Path:
        return self._dir

    def __repr__(self) -> str:
        return f"Spool({str(self._dir)!r})"

    @staticmethod
    def _name(writer_id: str, day: str, seq: int) -> str:
        return f"{writer_id}_{day}_{seq:012d}{_SUFFIX}"

    def put(self, entry: dict[str, Any]) -> Path:
        """Write `entry` durably; remove this (writer, day)'s older files. OSError if
        the directory cannot be written."""
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = self._name(entry["writer_id"], entry["date"], int(entry["seq"]))
        path = self._dir / name
        payload = json.dumps(entry, separators=(",", ":"), sort_keys=True, allow_nan=False)
        fd, tmp = tempfile.mkstemp(dir=self._dir, prefix=".tmp-", suffix=_SUFFIX)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._fsync_dir()
        self.discard(entry["writer_id"], entry["date"], below_seq=int(entry["seq"]))
        return path

    def discard(self, writer_id: str, day: str, *, below_seq: int) -> None:
        """Remove this (writer, day)'s files with a seq below `below_seq` (the store,
        or a newer spooled file, holds at least as much)."""
        prefix = f"{writer_id}_{day}_"
        try:
            names = os.listdir(self._dir)
        except FileNotFoundError:
            return
        for name in names:
            if name.startswith(prefix) and name.endswith(_SUFFIX):
                try:
                    seq = int(name[len(prefix):-len(_SUFFIX)])
                except ValueError:
                    continue
                if seq < below_seq:
                    self._unlink(self._dir / name)

    def pending(self) -> list[SpooledEntry]:
        """Every spooled entry, oldest day first. A file that does not parse is set
        aside (renamed *.bad) and logged, never replayed."""
        try:
            names = sorted(os.listdir(self._dir))
        except FileNotFoundError:
            return []
        out: list[SpooledEntry] = []
        for name in names:
            if name.startswith(".") or not name.endswith(_SUFFIX):
                continue
            path = self._dir / name
            try:
                entry = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(entry, dict) or not isinstance(entry.get("seq"), int):
                    raise ValueError("not an entry")
            except FileNotFoundError:
                continue  # replayed by another process meanwhile
            except (OSError, ValueError) as exc:
                _log.error("otel_budget: spool file %s is unreadable (%s); set aside as .bad",
                           path, type(exc).__name__)
                with contextlib.suppress(OSError):
                    os.replace(path, path.with_suffix(".bad"))
                continue
            out.append(SpooledEntry(path, entry))
        out.sort(key=lambda item: (str(item.entry.get("date")), item.path.name))
        return out

    def remove(self, item: SpooledEntry) -> None:
        self._unlink(item.path)

    def summary(self) -> dict[str, Any]:
        items = self.pending()
        return {
            "entries": len(items),
            "spend_usd": round(sum(float(i.entry.get("spend_usd", 0.0)) for i in items), 9),
            "days": sorted({str(i.entry.get("date")) for i in items}),
            "directory": str(self._dir),
        }

    @staticmethod
    def _unlink(path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def _fsync_dir(self) -> None:
        try:
            fd = os.open(self._dir, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
