"""An in-process store: for tests and for trying things out. Nothing survives the process."""

from __future__ import annotations

import copy
import threading
from typing import Any

from .. import ledger
from .base import dumps_content


class MemoryStore:
    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> MemoryStore:
        return cls()

    def __repr__(self) -> str:
        return f"MemoryStore(rows={len(self._rows)})"

    def get(self, patch_type: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._rows.get((patch_type, name))
            return copy.deepcopy(row) if row is not None else None

    def merge_budget(
        self, name: str, instance_id: str, entry: dict[str, Any], *, day_meta: dict[str, Any]
    ) -> dict[str, Any]:
        with self._lock:
            existing = self._rows.get((ledger.BUDGET_TYPE, name))
            doc, applied = ledger.merge_entry(
                existing, instance_id, entry, name=name, day_meta=day_meta
            )
            if applied:
                dumps_content(doc)  # same JSON rules as the durable stores
                self._rows[(ledger.BUDGET_TYPE, name)] = copy.deepcopy(doc)
            return doc

    def insert_if_absent(self, patch_type: str, name: str, content: dict[str, Any]) -> bool:
        dumps_content(content)
        with self._lock:
            if (patch_type, name) in self._rows:
                return False
            self._rows[(patch_type, name)] = copy.deepcopy(content)
            return True

    def put_raw(self, patch_type: str, name: str, content: Any) -> None:
        """Test hook: store anything, however malformed."""
        with self._lock:
            self._rows[(patch_type, name)] = content

    def close(self) -> None:
        pass
