"""BudgetConfig: every knob, validated once, from arguments or the environment."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import unquote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from . import environment
from .budgets import Budget, budget_from_mapping, check_ratios, daily_budget
from .errors import ConfigError
from .money import is_number
from .redact import redact_dsn as redact_url

_MAX_ID_LENGTH = 200
#: The environment cannot ask for collections faster than this (a typo such as
#: 1e-9 would spin a core); the API may go lower, for tests. The default is allowed.
MIN_ENV_COLLECT_INTERVAL_S = 0.5
DEFAULT_MAX_CALL_USD = 1_000_000.0


@dataclass(frozen=True, repr=False)
class BudgetConfig:
    daily_cap_usd: float | None = None
    alert_ratios: tuple[float, ...] = (0.8,)
    checkpoint_every: int = 10
    #: A collection reads no store (a checkpoint every `checkpoint_every` does): at
    #: 0.5 s a checkpoint, i.e. a merge that returns the other writers' totals, runs
    #: every 5 s, so a writer's fleet view is at most ~10 s old and an alert crossing
    #: is claimed within ~5 s of the fleet crossing it.
    collect_interval_s: float = 0.5
    timezone: str = "UTC"
    instance_id: str | None = None
    sibling: str = "ag_lu"
    store_url: str = "sqlite:///otel_budget.db"
    service_name: str = "otel-budget"
    budgets: Sequence[Budget] = ()
    max_attribute_sets: int = 2000
    spool_dir: str | None = None
    max_call_usd: float = DEFAULT_MAX_CALL_USD
    token_metrics: bool | None = None
    lease_ttl_s: float | None = None
    #: start() returns within this many seconds when the store does not answer.
    start_timeout_s: float = 5.0
    #: A claimed alert still undelivered after this long is delivered by another writer.
    alert_delivery_timeout_s: float = 60.0
    #: Model ids the price table does not know -> ids it does (Azure deployment names,
    #: gateway aliases): {"my-gpt4o-deployment": "gpt-4o"}. Case-insensitive names.
    model_aliases: Mapping[str, str] | None = None
    #: A per-key budget's keys in one writer's entry per day (the rest fold into one
    #: "(overflow)" item there; each still counts toward its own cap through its
    #: lease): see otel_budget.perkey.
    max_keys_per_budget: int = 10_000
    _tz: ZoneInfo = field(init=False, compare=False)
    _all_budgets: tuple[Budget, ...] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if self.daily_cap_usd is not None:
            self._check_positive("daily_cap_usd")
        cap = self.daily_cap_usd

        object.__setattr__(self, "alert_ratios", check_ratios(self.alert_ratios, "alert_ratios"))

        budgets = self.budgets
        if isinstance(budgets, (str, bytes, Mapping)) or not hasattr(budgets, "__iter__"):
            raise ConfigError(f"budgets must be a sequence of Budget, got {budgets!r:.80}")
        checked_budgets: list[Budget] = []
        for item in budgets:
            checked_budgets.append(
                item if isinstance(item, Budget) else budget_from_mapping(item, "budgets")
            )
        object.__setattr__(self, "budgets", tuple(checked_budgets))
        all_budgets: list[Budget] = []
        if cap is not None:
            all_budgets.append(daily_budget(float(cap), self.alert_ratios))
        all_budgets.extend(checked_budgets)
        if not all_budgets:
            raise ConfigError(
                "no budget configured: set daily_cap_usd (OTEL_BUDGET_DAILY_CAP_USD) or "
                "budgets (OTEL_BUDGET_BUDGETS_FILE)"
            )
        seen: set[str] = set()
        for budget in all_budgets:
            if budget.name in seen:
                raise ConfigError(
                    f"budget {budget.name!r}: name: names must be unique"
                    + (" ('daily' is the budget daily_cap_usd defines)" if budget.name == "daily"
                       else "")
                )
            seen.add(budget.name)
        object.__setattr__(self, "_all_budgets", tuple(all_budgets))

        self._check_count("max_attribute_sets")
        self._check_count("max_keys_per_budget")
        self._check_positive("max_call_usd")
        if self.spool_dir is not None and (not isinstance(self.spool_dir, str)
                                           or not self.spool_dir.strip()):
            raise ConfigError(f"spool_dir must be a directory path, got {self.spool_dir!r}")
        if self.token_metrics is not None and not isinstance(self.token_metrics, bool):
            raise ConfigError(f"token_metrics must be True, False or None, got {self.token_metrics!r}")

        ttl = self.lease_ttl_s
        if ttl is not None:
            if not is_number(ttl) or not math.isfinite(ttl) or not (0.2 <= ttl <= 86_400):
                raise ConfigError(f"lease_ttl_s must be between 0.2 and 86400 seconds, got {ttl!r}")
            object.__setattr__(self, "lease_ttl_s", float(ttl))

        for key, low, high in (("start_timeout_s", 0.0, 3600.0),
                               ("alert_delivery_timeout_s", 0.0, 7 * 86_400.0)):
            value = getattr(self, key)
            if not is_number(value) or not math.isfinite(value) or not low <= value <= high:
                raise ConfigError(f"{key} must be between {low:g} and {high:g} seconds, "
                                  f"got {value!r}")
            object.__setattr__(self, key, float(value))

        object.__setattr__(self, "model_aliases", check_model_aliases(self.model_aliases))

        self._check_count("checkpoint_every")
        self._check_positive("collect_interval_s")

        try:
            tz = ZoneInfo(self.timezone) if isinstance(self.timezone, str) else None
        except (ZoneInfoNotFoundError, ValueError):
            tz = None
        if tz is None:
            raise ConfigError(f"timezone must be an IANA time zone name, got {self.timezone!r}")
        object.__setattr__(self, "_tz", tz)

        if self.instance_id is not None:
            _check_name("instance_id", self.instance_id)
        _check_name("sibling", self.sibling)
        _check_name("service_name", self.service_name)
        if not isinstance(self.store_url, str) or "://" not in self.store_url:
            raise ConfigError(
                f"store_url must be a URL such as sqlite:///otel_budget.db, "
                f"got {redact_url(str(self.store_url))!r}"
            )

    def _check_count(self, key: str) -> None:
        value = getattr(self, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{key} must be an integer >= 1, got {value!r}")

    def _check_positive(self, key: str) -> None:
        """`key` is a finite number > 0; kept as a float."""
        value = getattr(self, key)
        if not is_number(value) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{key} must be a finite number > 0, got {value!r}")
        object.__setattr__(self, key, float(value))

    @property
    def tzinfo(self) -> ZoneInfo:
        return self._tz

    @property
    def all_budgets(self) -> tuple[Budget, ...]:
        """Every budget: the "daily" one daily_cap_usd defines (first), then `budgets`."""
        return self._all_budgets

    @property
    def resolved_lease_ttl_s(self) -> float:
        """How long a fleet budget's lease lives without a renewal (a dead writer's
        lease is settled after it): lease_ttl_s, else 5 collections, at least 30 s."""
        if self.lease_ttl_s is not None:
            return self.lease_ttl_s
        return min(86_400.0, max(30.0, 5 * self.collect_interval_s))

    def budget(self, name: str) -> Budget | None:
        for budget in self._all_budgets:
            if budget.name == name:
                return budget
        return None

    def resolved_instance_id(self) -> str:
        """The configured id, or "{hostname}-{pid}". It is only a label: every process
        writes as its own writer, so processes sharing an instance id never collide."""
        return self.instance_id or f"{socket.gethostname()}-{os.getpid()}"

    def replace(self, **changes: Any) -> BudgetConfig:
        return replace(self, **changes)

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            if f.init:
                value = getattr(self, f.name)
                shown = redact_url(value) if f.name == "store_url" else value
                parts.append(f"{f.name}={shown!r}")
        return f"BudgetConfig({', '.join(parts)})"

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> BudgetConfig:
        """Read OTEL_BUDGET_* and the standard OTEL_SERVICE_NAME /
        OTEL_RESOURCE_ATTRIBUTES (service.instance.id is the default instance id).
        Explicit keyword arguments win over the environment."""
        env = os.environ if environ is None else environ
        parsed = environment.config_values(env)
        values: dict[str, Any] = {field: value for field, (_, value) in parsed.items()}
        if "collect_interval_s" in values:
            interval = values["collect_interval_s"]
            if not (interval >= MIN_ENV_COLLECT_INTERVAL_S):
                raise ConfigError(
                    f"OTEL_BUDGET_COLLECT_INTERVAL_S={env['OTEL_BUDGET_COLLECT_INTERVAL_S']!r}: "
                    f"must be at least {MIN_ENV_COLLECT_INTERVAL_S:g} seconds"
                )
        if "instance_id" not in values:
            resource_id = resource_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES", "")).get(
                "service.instance.id"
            )
            if resource_id:
                if len(resource_id) > _MAX_ID_LENGTH or not resource_id.strip():
                    raise ConfigError(
                        "OTEL_RESOURCE_ATTRIBUTES: service.instance.id must be a non-empty "
                        f"string of at most {_MAX_ID_LENGTH} characters, got {resource_id!r:.80}"
                    )
                values["instance_id"] = resource_id
        from_environment = {key: var.name for key, (var, _) in parsed.items()}
        for key in overrides:
            from_environment.pop(key, None)
        values.update(overrides)
        try:
            return cls(**values)
        except ConfigError as exc:
            # Name the variable the user has to fix, not only the field.
            for key, var in from_environment.items():
                if str(exc).startswith(key):
                    raw = env.get(var, "")
                    shown = redact_url(raw) if environment.variable_is_secret(var) else raw
                    raise ConfigError(f"{var}={shown!r}: {exc}") from None
            raise


_MAX_ALIASES = 10_000


class FrozenAliases(Mapping[str, str]):
    """A read-only, hashable mapping (the config is frozen and hashable)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, str]) -> None:
        self._items = dict(items)

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __repr__(self) -> str:
        return repr(self._items)


def check_model_aliases(aliases: Any) -> FrozenAliases | None:
    """`model_aliases` validated: a mapping of non-empty model ids (no control
    characters, at most 200 characters) to other ids; names are case-insensitive."""
    if aliases is None:
        return None
    if not isinstance(aliases, Mapping):
        raise ConfigError(f"model_aliases must be a mapping of model id -> model id, "
                          f"got {type(aliases).__name__}")
    if len(aliases) > _MAX_ALIASES:
        raise ConfigError(f"model_aliases: at most {_MAX_ALIASES} entries, got {len(aliases)}")
    out: dict[str, str] = {}
    seen: set[str] = set()
    for name, target in aliases.items():
        for value in (name, target):
            if (not isinstance(value, str) or not value.strip() or len(value) > _MAX_ID_LENGTH
                    or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
                    or any("\ud800" <= c <= "\udfff" for c in value)):
                raise ConfigError(
                    f"model_aliases: names and targets must be model ids (non-empty text of "
                    f"at most {_MAX_ID_LENGTH} characters, no control characters), got "
                    f"{value!r:.80}")
        key = name.strip().lower()
        if key == target.strip().lower():
            raise ConfigError(f"model_aliases: {name!r} maps to itself")
        if key in seen:
            raise ConfigError(f"model_aliases: {name!r} is given twice (names ignore case)")
        seen.add(key)
        out[name.strip()] = target.strip()
    return FrozenAliases(out)


def parse_model_aliases(raw: str) -> dict[str, str]:
    """``OTEL_BUDGET_MODEL_ALIASES="my-gpt4o=gpt-4o,prod-sonnet=claude-sonnet-4-5"``."""
    parsed: dict[str, str] = environment.variable("OTEL_BUDGET_MODEL_ALIASES").parse(
        "OTEL_BUDGET_MODEL_ALIASES", raw)
    return parsed


def resource_attributes(raw: str) -> dict[str, str]:
    """Parse OTEL_RESOURCE_ATTRIBUTES ("k=v,k2=v2", values URL-encoded)."""
    out: dict[str, str] = {}
    for part in raw.split(","):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            out[key.strip()] = unquote(value.strip())
    return out





def _check_name(field_name: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_ID_LENGTH:
        raise ConfigError(
            f"{field_name} must be a non-empty string of at most {_MAX_ID_LENGTH} characters, "
            f"got {value!r:.80}"
        )
    # It ends up in stored rows and metric labels: PostgreSQL's jsonb refuses NUL and
    # lone surrogates, and so would every checkpoint of the day.
    if "\x00" in value or any("\ud800" <= ch <= "\udfff" for ch in value):
        raise ConfigError(f"{field_name} must be valid text without NUL, got {value!r:.80}")
