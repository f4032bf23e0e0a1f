"""A small durable local spool for checkpoints the store did not take.

Entries are cumulative, so the newest spooled entry of a (writer, day) supersedes
the older ones, and replaying one is idempotent (the store applies a seq once).
Each file is written whole (temporary file, fsync, rename), so a crash leaves
either the old file or the new one, never half of one. Files are named by writer,
day and seq; a replay removes exactly the file it replayed, so it never deletes a
newer one its owner wrote meanwhile.

What keeps it from being fooled:

- It is keyed by the store's identity (`store.identity()`: SQLite's real path, the
  PostgreSQL cluster's system identifier and database, the Supabase project),
  not by the URL's spelling: another spelling of the same database replays what
  this one spooled, and the same spelling leading elsewhere (`PGDATABASE`) does
  not. Entries spooled before the store ever answered are kept under where the
  URL leads as far as it can be told offline (`store.spool_key`), and replayed by
  the first meter that reaches a store it leads to.
- It never lives in a shared directory: there is no fallback to the temporary
  directory, the directories it creates are 0700, and a spool directory another
  user could write (or one not ours) is refused, named in the error.
- Every file carries an HMAC-SHA256 over the entry and the store it was meant for,
  with a per-user key (a 0600 file at the spool's root): a planted, edited, copied
  or truncated file is set aside (renamed `*.bad`) and never replayed, and every
  set-aside file is listed by `summary()` with its amount when it can be read.
- `summary()` (what `health()["spool"]` shows) never raises.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SpoolError
from .private_files import check_private_chain, ensure_private_dir, write_atomic
from .stores.base import IdentifiedStore

_log = logging.getLogger("otel_budget")
_SUFFIX = ".json"
_BAD = ".bad"
_FORMAT = "otel_budget.spool/3"
_KEY_FILE = ".spool-key"
# A spooled entry is a few KB (2,000 attribute sets at most): far more is not ours.
_MAX_FILE = 16 * 1024 * 1024


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NOWHERE = Path(os.devnull) / "otel_budget-spool-unavailable"


def default_spool_dir() -> Path:
    """$XDG_CACHE_HOME/otel_budget/spool or ~/.cache/otel_budget/spool. Without a
    home there is no default (SpoolError: set `spool_dir`); a guessable path in the
    shared temporary directory would let another local user plant spend."""
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    if not base or not os.path.isabs(base):
        home = os.path.expanduser("~")
        if not home or home.startswith("~") or not os.path.isabs(home):
            raise SpoolError(
                "no home directory for the spool (HOME unset); set BudgetConfig(spool_dir=...) "
                "or OTEL_BUDGET_SPOOL_DIR to a directory of this user's own"
            )
        base = os.path.join(home, ".cache")
    return Path(base) / "otel_budget" / "spool"


@dataclass(frozen=True)
class SpooledEntry:
    path: Path
    entry: dict[str, Any]


class Spool:
    """Spooled entries for one store. Pass the store (`store=`) so the spool is keyed
    by its identity; a bare `store_key` (older callers) keys it by that text."""

    def __init__(
        self,
        directory: str | os.PathLike[str] | None,
        store_key: str | None = None,
        *,
        store: Any = None,
    ) -> None:
        self._store = store
        self._root: Path | None
        self._error: str | None = None
        try:
            self._root = (Path(os.path.abspath(directory)) if directory is not None
                          else default_spool_dir())
        except SpoolError as exc:
            self._root, self._error = None, str(exc)
        locator = store_key if store_key is not None else store_locator(store)
        self._locator = f"at:{locator}"
        self._fixed_identity = store_key is not None and store is None
        self._mac_key: bytes | None = None
        self._set_aside: dict[str, dict[str, Any]] = {}

    # --- where --------------------------------------------------------------------

    def _identity(self, *, ask: bool) -> str | None:
        """The store's identity: known already, or (with `ask`) asked of the store,
        which may do I/O bounded by the store's own deadlines."""
        if self._fixed_identity:
            return self._locator
        store = self._store
        if store is None:
            return None
        if not isinstance(store, IdentifiedStore):
            return f"id:{type(store).__name__}:{id(store)}"  # this object
        known = store.known_identity
        if isinstance(known, str) and known:
            return f"id:{known}"
        if not ask:
            return None
        try:
            value = store.identity()
        except Exception as exc:
            _log.debug("otel_budget: the store's identity is unknown yet: %s", exc)
            return None
        return f"id:{value}" if isinstance(value, str) and value else None

    def _dir_for(self, key: str) -> Path:
        if self._root is None:
            raise SpoolError(self._error or "no spool directory")
        return self._root / hashlib.sha256(key.encode("utf-8", "backslashreplace")).hexdigest()[:24]

    def _current_key(self) -> str:
        return self._identity(ask=False) or self._locator

    def _keys(self, *, ask: bool) -> list[str]:
        """The keys whose entries belong to this store: its identity's, then those
        spooled (by any meter) before a store this URL leads to had answered."""
        identity = self._identity(ask=ask)
        keys = [identity] if identity is not None else []
        if self._locator not in keys:
            keys.append(self._locator)
        return keys

    @property
    def root(self) -> Path | None:
        """The spool's root directory (None when there is none: no home, say)."""
        return self._root

    @property
    def directory(self) -> Path:
        """Where this meter spools now (its store's identity's directory once known).
        Without a root, a path nothing can be created under (below a device file),
        so whatever tries to write beside the spool fails instead of falling back
        to the working directory."""
        if self._root is None:
            return _NOWHERE / "spool"
        return self._dir_for(self._current_key())

    def __repr__(self) -> str:
        return f"Spool({str(self._root)!r})"

    def _ensure_dir(self, path: Path) -> None:
        assert self._root is not None
        ensure_private_dir(path)

    def _key(self) -> bytes:
        """The per-user MAC key, created once (0600) at the spool's root."""
        if self._mac_key is not None:
            return self._mac_key
        assert self._root is not None
        self._ensure_dir(self._root)
        path = self._root / _KEY_FILE
        if not path.exists():
            # Written whole, then linked into place: a process starting at the same
            # moment reads either no key or the whole key, and one key wins.
            fd, tmp = tempfile.mkstemp(dir=self._root, prefix=".tmp-key-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(secrets.token_hex(32).encode())
                    handle.flush()
                    os.fsync(handle.fileno())
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, path)
            finally:
                _unlink(Path(tmp))
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
        try:
            st = os.fstat(fd)
            if hasattr(os, "geteuid") and (st.st_uid != os.geteuid() or st.st_mode & 0o077):
                raise SpoolError(f"spool key {str(path)!r} is readable or writable by others")
            key = os.read(fd, 256).strip()
        finally:
            os.close(fd)
        if len(key) < 32:
            raise SpoolError(f"spool key {str(path)!r} is damaged; remove it")
        self._mac_key = key
        return key

    def _mac(self, key: str, entry: dict[str, Any]) -> str:
        body = json.dumps({"store": key, "entry": entry}, separators=(",", ":"),
                          sort_keys=True, allow_nan=False)
        return hmac.new(self._key(), body.encode("utf-8"), hashlib.sha256).hexdigest()

    # --- the tracker's side -------------------------------------------------------

    @staticmethod
    def _name(writer_id: str, day: str, seq: int) -> str:
        return f"{writer_id}_{day}_{seq:012d}{_SUFFIX}"

    def put(self, entry: dict[str, Any]) -> Path:
        """Write `entry` durably; remove this (writer, day)'s older files. OSError
        (SpoolError for an unsafe directory) if it cannot be written."""
        if self._root is None:
            raise SpoolError(self._error or "no spool directory")
        key = self._current_key()
        directory = self._dir_for(key)
        self._ensure_dir(directory)
        name = self._name(entry["writer_id"], entry["date"], int(entry["seq"]))
        path = directory / name
        # The amount leads (outside what the MAC covers, shown only) and the entry
        # comes last, so a truncated file still tells health() how much it held.
        amount = _number(entry.get("spend_usd"))
        payload = ("{" + ",".join(
            f"{json.dumps(k)}:{json.dumps(v, separators=(',', ':'), sort_keys=True, allow_nan=False)}"
            for k, v in (("format", _FORMAT), ("spend_usd", amount), ("store", key),
                         ("mac", self._mac(key, entry)), ("entry", entry))) + "}")
        write_atomic(path, payload.encode("utf-8"))
        self.discard(entry["writer_id"], entry["date"], below_seq=int(entry["seq"]))
        return path

    def discard(self, writer_id: str, day: str, *, below_seq: int) -> None:
        """Remove this (writer, day)'s files with a seq below `below_seq` (the store,
        or a newer spooled file, holds at least as much)."""
        if self._root is None:
            return
        prefix = f"{writer_id}_{day}_"
        for key in self._keys(ask=False):
            directory = self._dir_for(key)
            try:
                names = os.listdir(directory)
            except OSError:
                continue
            for name in names:
                if name.startswith(prefix) and name.endswith(_SUFFIX):
                    try:
                        seq = int(name[len(prefix):-len(_SUFFIX)])
                    except ValueError:
                        continue
                    if seq < below_seq:
                        _unlink(directory / name)

    def pending(self) -> list[SpooledEntry]:
        """Every spooled entry of this store, oldest day first. A file that does not
        parse or fails its integrity check is set aside (renamed *.bad), logged and
        listed by summary(), never replayed. A directory another user could write is
        not read at all (SpoolError).

        The store's identity is what it learnt when it last answered (no I/O here:
        a store that is down must not cost a wait before the replay even starts);
        until then only the entries spooled under its offline key are seen."""
        return self._pending(ask=False)

    def _pending(self, *, ask: bool) -> list[SpooledEntry]:
        if self._root is None:
            raise SpoolError(self._error or "no spool directory")
        out: list[SpooledEntry] = []
        for key in self._keys(ask=ask):
            directory = self._dir_for(key)
            if not directory.exists():
                continue
            check_private_chain(directory)
            for name in sorted(os.listdir(directory)):
                if name.startswith(".") or not name.endswith(_SUFFIX):
                    continue
                path = directory / name
                try:
                    raw = _read_private(path)
                except FileNotFoundError:
                    continue  # replayed by another process meanwhile
                except OSError as exc:
                    self._put_aside(path, f"unreadable ({type(exc).__name__})", None)
                    continue
                entry, problem = self._open_envelope(raw, key)
                if entry is None:
                    self._put_aside(path, problem or "damaged", _amount_in(raw))
                    continue
                out.append(SpooledEntry(path, entry))
        out.sort(key=lambda item: (str(item.entry.get("date")), item.path.name))
        return out

    def _open_envelope(self, raw: bytes, key: str) -> tuple[dict[str, Any] | None, str | None]:
        try:
            doc = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError, RecursionError):
            return None, "not JSON (truncated or damaged)"
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            return None, "not a spool entry of this version (no integrity check)"
        entry, mac = doc.get("entry"), doc.get("mac")
        if not isinstance(entry, dict) or not isinstance(mac, str):
            return None, "malformed spool entry"
        if doc.get("store") != key:
            return None, "spooled for another store"
        try:
            expected = self._mac(key, entry)
        except (TypeError, ValueError):
            return None, "malformed spool entry"
        if not hmac.compare_digest(expected, mac):
            return None, "integrity check failed (edited, planted or copied)"
        if not isinstance(entry.get("seq"), int):
            return None, "malformed spool entry"
        return entry, None

    def _put_aside(self, path: Path, reason: str, amount: float | None) -> None:
        _log.error("otel_budget: spool file %s set aside as .bad: %s", path, reason)
        target = path.with_suffix(_BAD)
        with contextlib.suppress(OSError):
            os.replace(path, target)
        self._set_aside[target.name] = {"file": str(target), "reason": reason,
                                        "spend_usd": amount}

    def remove(self, item: SpooledEntry) -> None:
        _unlink(item.path)

    def summary(self) -> dict[str, Any]:
        """What health() shows; never raises. `set_aside` lists every *.bad file of
        this store's directories (with its amount when it can be read)."""
        try:
            return self._summary()
        except Exception as exc:  # health must answer whatever the disk holds
            return {"entries": None, "spend_usd": None, "days": [], "set_aside": [],
                    "directory": str(self._root), "error": _describe(exc)}

    def _summary(self) -> dict[str, Any]:
        if self._root is None:
            return {"entries": None, "spend_usd": None, "days": [], "set_aside": [],
                    "directory": None, "error": self._error}
        error: str | None = None
        items: list[SpooledEntry] = []
        try:
            # Refused even while nothing is spooled: the next outage would need it.
            check_private_chain(self._root)
            items = self._pending(ask=False)  # no store I/O for a health report
        except OSError as exc:
            error = _describe(exc)
        total = 0.0
        for item in items:
            amount = _number(item.entry.get("spend_usd"))
            total += amount if amount is not None else 0.0
        return {
            "entries": len(items),
            "spend_usd": round(total, 9),
            "days": sorted({str(i.entry.get("date")) for i in items}),
            "directory": str(self.directory),
            "set_aside": self._list_set_aside(),
            "legacy": self._list_legacy(),
            "error": error,
        }

    def _list_legacy(self) -> list[dict[str, Any]]:
        """Entries version 2 spooled for this store (keyed by the URL's spelling,
        without an integrity check): shown, never replayed, since they may belong to
        another database that spelling led to then."""
        legacy_key = _legacy_key_of(self._store)
        if legacy_key is None or self._root is None:
            return []
        directory = self._root / hashlib.sha256(
            legacy_key.encode("utf-8", "backslashreplace")).hexdigest()[:24]
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            return []
        out: list[dict[str, Any]] = []
        for name in names:
            if name.startswith(".") or not name.endswith((_SUFFIX, _BAD)):
                continue
            try:
                amount = _amount_in(_read_private(directory / name))
            except OSError:
                amount = None
            out.append({"file": str(directory / name), "spend_usd": amount})
        return out

    def _list_set_aside(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for key in self._keys(ask=False):
            directory = self._dir_for(key)
            try:
                names = sorted(os.listdir(directory))
            except OSError:
                continue
            for name in names:
                if not name.endswith(_BAD) or name.startswith("."):
                    continue
                known = self._set_aside.get(name)
                if known is not None:
                    out.append(dict(known))
                    continue
                try:
                    amount = _amount_in(_read_private(directory / name))
                except OSError:
                    amount = None
                out.append({"file": str(directory / name), "reason": "set aside earlier",
                            "spend_usd": amount})
        return out


def store_locator(store: Any) -> str:
    """Where a store leads as far as it can be told without I/O (no secret in it):
    the store's `spool_key` (IdentifiedStore), else the object. Stable through an
    outage, unlike its identity, which needs an answer."""
    if isinstance(store, IdentifiedStore) and store.spool_key:
        return store.spool_key
    return f"{type(store).__name__}:{id(store)}"


def _legacy_key_of(store: Any) -> str | None:
    """The key version 2 named this store's spool directory by."""
    if not isinstance(store, IdentifiedStore):
        return None
    return store.legacy_spool_key or None


def _read_private(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        data = b""
        while len(data) <= _MAX_FILE:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return data
            data += chunk
        raise OSError(f"{path} is larger than {_MAX_FILE} bytes")
    finally:
        os.close(fd)


_LEADING_AMOUNT = re.compile(rb'^\{"format":"[^"]*","spend_usd":(-?[0-9][0-9.eE+-]*)[,}]')


def _amount_in(raw: bytes) -> float | None:
    """The amount a damaged or refused file claims, for the health report only."""
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        lead = _LEADING_AMOUNT.match(raw)  # a truncated file of ours
        if lead is None:
            return None
        try:
            return _number(float(lead.group(1)))
        except ValueError:
            return None
    if isinstance(doc, dict) and isinstance(doc.get("entry"), dict):
        doc = doc["entry"]
    return _number(doc.get("spend_usd")) if isinstance(doc, dict) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _no_constant(token: str) -> float:
    raise ValueError(f"{token} is not a number")


def _describe(exc: BaseException) -> str:
    from .redact import describe_exception

    return describe_exception(exc)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
