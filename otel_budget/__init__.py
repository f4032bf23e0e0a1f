"""otel_budget: keep LLM spend honest with an OpenTelemetry counter and a daily cap."""

from .autoconfig import from_env
from .config import BudgetConfig
from .errors import (
    BudgetError,
    BudgetExceeded,
    CheckpointError,
    ConfigError,
    NotifyError,
    StoreError,
    UnknownModelError,
)
from .meter import BudgetMeter, __version__
from .notify import LoggingNotifier, WebhookNotifier
from .pricing import ModelPrice, PriceTable, TokenUsage
from .reader import BudgetReader
from .reservations import Reservation
from .stores.base import PatchStore, open_store

__all__ = [
    "BudgetConfig",
    "BudgetError",
    "BudgetExceeded",
    "BudgetMeter",
    "BudgetReader",
    "CheckpointError",
    "ConfigError",
    "LoggingNotifier",
    "ModelPrice",
    "NotifyError",
    "PatchStore",
    "PriceTable",
    "Reservation",
    "StoreError",
    "TokenUsage",
    "UnknownModelError",
    "WebhookNotifier",
    "__version__",
    "from_env",
    "open_store",
]
