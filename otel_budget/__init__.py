"""otel_budget: keep LLM spend honest with an OpenTelemetry counter and budgets."""

from ._version import __version__
from .autoconfig import from_env
from .budgets import Budget
from .config import BudgetConfig
from .errors import (
    AmountTypeError,
    BudgetError,
    BudgetExceeded,
    CheckpointError,
    ConfigError,
    CorruptRowError,
    InvalidEntryError,
    LeaseStoreDown,
    NotifyError,
    SpoolError,
    StoreError,
    UnknownModelError,
)
from .meter import BudgetMeter
from .notify import LoggingNotifier, NotifierDispatcher, SlackNotifier, WebhookNotifier
from .pricing import ModelPrice, PriceTable, TokenUsage
from .read import read_day
from .reader import BudgetReader
from .reservations import Reservation
from .stores.base import PatchStore, open_store

__all__ = [
    "AmountTypeError",
    "Budget",
    "BudgetConfig",
    "BudgetError",
    "BudgetExceeded",
    "BudgetMeter",
    "BudgetReader",
    "CheckpointError",
    "ConfigError",
    "CorruptRowError",
    "InvalidEntryError",
    "LeaseStoreDown",
    "LoggingNotifier",
    "ModelPrice",
    "NotifierDispatcher",
    "NotifyError",
    "PatchStore",
    "PriceTable",
    "Reservation",
    "SlackNotifier",
    "SpoolError",
    "StoreError",
    "TokenUsage",
    "UnknownModelError",
    "WebhookNotifier",
    "__version__",
    "from_env",
    "open_store",
    "read_day",
]
