"""Budget: one cap on the spend of the calls it matches, over a day, ISO week or month.

Validated once, at construction; everything here is pure (no I/O but reading the
TOML file a user names)."""

from __future__ import annotations

import fnmatch
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .money import is_number

PERIODS = ("day", "week", "month")
ENFORCE_MODES = ("process", "fleet")
DAILY = "daily"
#: Budget names end up in row names and metric attributes: keep them plain.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
_SCALARS = (str, bool, int, float)


def check_ratios(ratios: Any, where: str) -> tuple[float, ...]:
    if isinstance(ratios, (str, bytes)) or not hasattr(ratios, "__iter__"):
        raise ConfigError(f"{where} must be a sequence of numbers, got {ratios!r:.80}")
    checked = []
    for ratio in ratios:
        if not is_number(ratio) or not (0 < ratio <= 1):
            raise ConfigError(f"{where}: each ratio must be in (0, 1], got {ratio!r}")
        checked.append(float(ratio))
    return tuple(sorted(set(checked)))


@dataclass(frozen=True)
class Budget:
    """`match` maps attribute keys to a value or a list of values; a call counts
    toward the budget when its attributes have every key with one of the values
    (`None` matches every call). A value with a shell wildcard is also an fnmatch
    pattern: `{"gen_ai.request.model": "claude-opus-4*"}`. `hard` budgets are enforced by `guard`/`reserve`:
    across the fleet through store leases unless `enforce="process"` is given
    (`enforce=None`, the default, means "fleet" when hard, else "process")."""

    name: str
    cap_usd: float
    period: str = "day"
    match: Mapping[str, Any] | None = None
    alert_ratios: tuple[float, ...] = (0.8,)
    hard: bool = False
    #: "fleet" or "process"; None (the default) is resolved at construction: "fleet"
    #: for a hard budget, else "process". Never None on a built Budget.
    enforce: str | None = None
    #: An attribute name, or a tuple of them: each distinct value (combination) is a
    #: key with its own cap, window, alerts and refusals (see otel_budget.perkey).
    per: str | tuple[str, ...] | None = None
    _match: tuple[tuple[str, frozenset[Any]], ...] = field(
        init=False, compare=False, repr=False, hash=False
    )
    #: key -> one regex of that key's shell-style pattern values (fnmatch, case-sensitive).
    _patterns: Mapping[str, re.Pattern[str]] = field(
        init=False, compare=False, repr=False, hash=False
    )

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(
                f"budget {name!r:.80}: name: must be 1-100 characters of letters, digits, "
                "'_', '.', ':' or '-', starting with a letter or digit"
            )
        where = f"budget {name!r}"
        cap = self.cap_usd
        if not is_number(cap) or not math.isfinite(cap) or cap <= 0:
            raise ConfigError(f"{where}: cap_usd: must be a finite number > 0, got {cap!r}")
        object.__setattr__(self, "cap_usd", float(cap))
        if self.period not in PERIODS:
            raise ConfigError(f"{where}: period: must be one of {', '.join(PERIODS)}, "
                              f"got {self.period!r}")
        object.__setattr__(self, "alert_ratios",
                           check_ratios(self.alert_ratios, f"{where}: alert_ratios"))
        if not isinstance(self.hard, bool):
            raise ConfigError(f"{where}: hard: must be true or false, got {self.hard!r}")
        if self.enforce is None:
            # Hard means fleet-wide: a per-process cap lets N workers spend N caps.
            object.__setattr__(self, "enforce", "fleet" if self.hard else "process")
        if self.enforce not in ENFORCE_MODES:
            raise ConfigError(f"{where}: enforce: must be one of {', '.join(ENFORCE_MODES)}, "
                              f"got {self.enforce!r}")
        if self.enforce == "fleet" and not self.hard:
            raise ConfigError(f"{where}: enforce: 'fleet' applies to hard budgets only "
                              "(set hard=True)")
        object.__setattr__(self, "per", _check_per(self.per, where))
        if self.per is not None and self.hard and self.enforce != "fleet":
            # A key's cap per process would let N workers spend N caps on one customer,
            # and a process cannot keep every key's spend (the bound): only the store can.
            raise ConfigError(f"{where}: per: a hard per-key budget is enforced across the "
                              "fleet (enforce='fleet'), not per process")
        object.__setattr__(self, "_match", _compile_match(self.match, where))
        object.__setattr__(self, "_patterns", _compile_patterns(self._match))
        if self.match is not None:
            # A frozen, canonical copy: lists for multi-valued keys, as given.
            object.__setattr__(self, "match", {
                key: (sorted(values, key=repr) if len(values) > 1 else next(iter(values)))
                for key, values in self._match
            })

    @property
    def match_rules(self) -> tuple[tuple[str, frozenset[Any]], ...]:
        """The match, compiled: (attribute, the values or shell patterns it allows)
        pairs, sorted by attribute; empty when the budget matches every call."""
        return self._match

    def matches(self, attributes: Mapping[str, Any] | None) -> bool:
        """True when a call with these attributes counts toward this budget."""
        if not self._match:
            return True
        if not attributes:
            return False
        for key, allowed in self._match:
            value = attributes.get(key, _MISSING)
            try:
                if value in allowed:  # exact values: one set lookup
                    continue
            except TypeError:  # an unhashable value (a list) matches no scalar
                return False
            pattern = self._patterns.get(key)
            if pattern is None or type(value) is not str or pattern.match(value) is None:
                return False
        return True

    def covers(self, attributes: Mapping[str, Any] | None) -> bool:
        """Whether `guard`/`reserve` with these attributes must check this budget:
        with no attributes, only the budgets that match every call."""
        if attributes is None:
            return not self._match
        return self.matches(attributes)

    def key_of(self, attributes: Mapping[str, Any] | None) -> tuple[Any, ...] | None:
        """This call's key (the `per` attributes' values, in `per`'s order), or None
        for a budget without `per`. A call lacking one of them is not free: it counts
        under the value None there (shown "(unset)")."""
        per = self.per
        if per is None:
            return None
        if not attributes:
            return (None,) * len(per)
        return tuple(_key_value(attributes.get(name)) for name in per)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "period": self.period,
                               "match": dict(self.match) if self.match is not None else None,
                               "cap_usd": self.cap_usd, "hard": self.hard,
                               "enforce": self.enforce}
        if self.per is not None:
            out["per"] = list(self.per)
        return out


#: A `per` value may name at most this many attributes.
MAX_PER_ATTRIBUTES = 8


def _key_value(value: Any) -> Any:
    # A sequence attribute (OTel allows them) keys by its items; lists are unhashable.
    return tuple(value) if isinstance(value, list) else value


def _check_per(per: Any, where: str) -> tuple[str, ...] | None:
    if per is None:
        return None
    names = [per] if isinstance(per, str) else per
    if not isinstance(names, (list, tuple)) or not names:
        raise ConfigError(f"{where}: per: must be an attribute name or a non-empty list "
                          f"of them, got {per!r:.80}")
    if len(names) > MAX_PER_ATTRIBUTES:
        raise ConfigError(f"{where}: per: at most {MAX_PER_ATTRIBUTES} attribute names, "
                          f"got {len(names)}")
    for name in names:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: per: attribute names must be non-empty strings, "
                              f"got {name!r:.80}")
        if (problem := _text_problem(name)) is not None:
            raise ConfigError(f"{where}: per: attribute name {name!r:.80} {problem}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: per: names an attribute twice: {list(names)!r:.120}")
    return tuple(names)


_MISSING = object()
_WILDCARDS = frozenset("*?[")


def _compile_patterns(
    match: tuple[tuple[str, frozenset[Any]], ...],
) -> dict[str, re.Pattern[str]]:
    """Values with a shell wildcard (``*``, ``?``, ``[``) also match as fnmatch patterns
    (``"claude-opus-4*"``); each stays an exact value too, so a literal ``[`` still
    matches itself."""
    out = {}
    for key, values in match:
        patterns = sorted(v for v in values if isinstance(v, str) and not _WILDCARDS.isdisjoint(v))
        if patterns:
            out[key] = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))
    return out


def _text_problem(text: str) -> str | None:
    """What makes a match key or value unfit to store and show, or None."""
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text):
        return "holds a control character (NUL included)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "holds a lone surrogate"
    return None


def _compile_match(match: Any, where: str) -> tuple[tuple[str, frozenset[Any]], ...]:
    if match is None:
        return ()
    if not isinstance(match, Mapping):
        raise ConfigError(f"{where}: match: must be a mapping of attribute -> value(s), "
                          f"got {type(match).__name__}")
    if not match:
        raise ConfigError(f"{where}: match: empty; use None to match every call")
    compiled = []
    for key, wanted in match.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{where}: match: keys must be non-empty strings, got {key!r}")
        if (problem := _text_problem(key)) is not None:
            raise ConfigError(f"{where}: match: key {key!r:.80} {problem}")
        values = list(wanted) if isinstance(wanted, (list, tuple, set, frozenset)) else [wanted]
        if not values:
            raise ConfigError(f"{where}: match: {key!r} lists no values")
        for value in values:
            if not isinstance(value, _SCALARS) or (isinstance(value, float)
                                                   and not math.isfinite(value)):
                raise ConfigError(f"{where}: match: {key!r} values must be strings, numbers "
                                  f"or booleans, got {value!r:.80}")
            if isinstance(value, str) and (problem := _text_problem(value)) is not None:
                # Refused here, not at the first alert: PostgreSQL's jsonb refuses a NUL
                # or a lone surrogate, so the alert's claim would fail every round.
                raise ConfigError(f"{where}: match: {key!r} value {value!r:.80} {problem}")
        compiled.append((key, frozenset(values)))
    return tuple(sorted(compiled, key=lambda kv: kv[0]))


def daily_budget(cap_usd: float, alert_ratios: tuple[float, ...]) -> Budget:
    """The budget `daily_cap_usd` means: every call, per day, enforced by guard/reserve
    across the fleet."""
    return Budget(DAILY, cap_usd, period="day", match=None, alert_ratios=alert_ratios, hard=True,
                  enforce="fleet")


_FIELDS = ("name", "cap_usd", "period", "match", "alert_ratios", "hard", "enforce", "per")


def budget_from_mapping(raw: Any, where: str) -> Budget:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: each budget must be a Budget or a table, got {raw!r:.80}")
    name = raw.get("name")
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"{where}: budget {name!r}: {unknown[0]}: unknown field "
                          f"(expected {', '.join(_FIELDS)})")
    if "name" not in raw or "cap_usd" not in raw:
        missing = "name" if "name" not in raw else "cap_usd"
        raise ConfigError(f"{where}: budget {name!r}: {missing}: required")
    kwargs = dict(raw)
    if "alert_ratios" in kwargs and isinstance(kwargs["alert_ratios"], list):
        kwargs["alert_ratios"] = tuple(kwargs["alert_ratios"])
    try:
        return Budget(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


MAX_BUDGETS_FILE_BYTES = 1024 * 1024
MAX_BUDGETS_FILE_DEPTH = 16


def load_budgets_file(path: str, where: str) -> tuple[Budget, ...]:
    """Budgets from a TOML file of `[[budget]]` tables: at most 1 MiB (a device such
    as /dev/zero, or a runaway file, is a ConfigError, not a MemoryError) and at
    most 16 levels of nesting (not a RecursionError)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_BUDGETS_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{where}={path!r}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{where}={path!r}: cannot read budgets: {exc}") from None
    if len(raw) > MAX_BUDGETS_FILE_BYTES:
        raise ConfigError(f"{where}={path!r}: larger than {MAX_BUDGETS_FILE_BYTES} bytes; "
                          "not a budgets file")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{where}={path!r}: not UTF-8 text") from None
    except RecursionError:
        raise ConfigError(f"{where}={path!r}: nested more than {MAX_BUDGETS_FILE_DEPTH} "
                          "levels deep") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}={path!r}: cannot read budgets: {exc}") from None
    if _depth(data) > MAX_BUDGETS_FILE_DEPTH:
        raise ConfigError(f"{where}={path!r}: nested more than {MAX_BUDGETS_FILE_DEPTH} "
                          "levels deep")
    tables = data.get("budget", [])
    if not isinstance(tables, list) or not tables:
        raise ConfigError(f"{where}={path!r}: expected one or more [[budget]] tables")
    return tuple(budget_from_mapping(table, f"{where}={path!r}") for table in tables)


def _depth(value: Any) -> int:
    """Nesting depth, without recursion (what tomllib parsed is at most ~1,000 deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def budgets_by_name(budgets: Iterable[Budget]) -> dict[str, Budget]:
    return {budget.name: budget for budget in budgets}
