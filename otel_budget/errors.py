"""The exception hierarchy: everything otel_budget raises on purpose is a BudgetError.

    BudgetError
    ├── ConfigError (ValueError)      a setting or argument is invalid; names the field
    ├── AmountTypeError (TypeError, ValueError)
    │                                 an amount of the wrong type (not a number)
    ├── StoreError                    a store operation failed; the row is as it was
    │   └── LeaseStoreDown            a fleet lease's store did not answer lately
    ├── CheckpointError               an entry or a stored row does not hold a budget
    │   ├── InvalidEntryError (ValueError)
    │   │                             bad input: an entry a writer (or a spool file)
    │   │                             offered is malformed; the store refused it
    │   └── CorruptRowError           corrupt stored data: a row read back is malformed
    │                                 (quarantined by readers, named in health)
    ├── SpoolError (OSError)          the spool directory cannot be used safely
    ├── NotifyError                   a notifier could not deliver (it is retried)
    ├── BudgetExceeded                a call would pass a hard budget's cap
    └── UnknownModelError (KeyError)  a strict price lookup found no price

Amounts that are numbers but not valid (NaN, negative, too large) are plain
`ValueError`s with the field named, as DESIGN's decision 6 promises.
"""

from __future__ import annotations


class BudgetError(Exception):
    """Root of every error otel_budget raises deliberately."""


class ConfigError(BudgetError, ValueError):
    """A configuration value is missing or invalid; the message names the field."""


class AmountTypeError(BudgetError, TypeError, ValueError):
    """An amount of the wrong type. Both a TypeError (what it is) and a ValueError
    (what DESIGN decision 6 promises for every bad amount), so either catch works."""


class StoreError(BudgetError):
    """A store operation failed; the stored row is left as it was."""


class LeaseStoreDown(StoreError):
    """A fleet lease's last store round trip failed: not asked again until a probe
    (the meter's timer) or a retry interval says the store answers."""


class CheckpointError(BudgetError):
    """An entry or a stored budget row has the wrong shape; nothing is changed. The
    two subclasses say whose it is."""


class InvalidEntryError(CheckpointError, ValueError):
    """Bad input: an entry offered to the store (by a writer or a spool file) is
    malformed, and the store refused it."""


class CorruptRowError(CheckpointError):
    """Corrupt stored data: a row read back from the store is malformed. Readers
    quarantine it (and name it in health) rather than count it."""


class SpoolError(BudgetError, OSError):
    """The spool directory cannot be used safely (shared, not ours, no home)."""


class NotifyError(BudgetError):
    """A notifier could not deliver a nudge (it will be retried)."""


class BudgetExceeded(BudgetError):
    """A guarded call would pass a hard budget's cap. `.budget` names the budget and
    `.key` the key of a per-key budget."""

    def __init__(
        self, *, date: str, daily_spend_usd: float, reserved_usd: float,
        estimated_usd: float, daily_cap_usd: float, budget: str = "daily",
        window: str | None = None, key: dict[str, object] | None = None,
    ) -> None:
        self.budget = budget
        #: A per-key budget's key ({attribute: value} of its `per` attributes), else None.
        self.key = key
        self.window = window or date
        self.date = date
        self.daily_spend_usd = self.spend_usd = daily_spend_usd
        self.reserved_usd = reserved_usd
        self.estimated_usd = estimated_usd
        self.daily_cap_usd = self.cap_usd = daily_cap_usd
        self.exceeded_by_usd = round(
            daily_spend_usd + reserved_usd + estimated_usd - daily_cap_usd, 9
        )
        of_key = f" for {key!r}" if key is not None else ""
        super().__init__(
            f"budget {budget!r}{of_key} ({self.window}) would be exceeded by ${self.exceeded_by_usd:.6f}: "
            f"spent ${daily_spend_usd:.6f} + reserved ${reserved_usd:.6f} "
            f"+ estimated ${estimated_usd:.6f} > cap ${daily_cap_usd:.6f}"
        )


class UnknownModelError(BudgetError, KeyError):
    """A model has no price in the price table and no fallback price is configured."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown model"
