"""The exception hierarchy: everything otel_budget raises on purpose is a BudgetError."""

from __future__ import annotations


class BudgetError(Exception):
    """Root of every error otel_budget raises deliberately."""


class ConfigError(BudgetError, ValueError):
    """A configuration value is missing or invalid; the message names the field."""


class StoreError(BudgetError):
    """A store operation failed; the stored row is left as it was."""


class CheckpointError(BudgetError):
    """A stored budget document is corrupt or has the wrong shape; it is left untouched."""


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
