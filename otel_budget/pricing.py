"""Token prices: an offline, versioned price table and exact per-call pricing.

Pure: the only I/O is reading TOML price files. Nothing is ever fetched.

Token convention (the one rule callers must follow)
----------------------------------------------------
The four token counts are **disjoint**; every prompt token is counted in exactly one of
``input_tokens``, ``cached_input_tokens`` and ``cache_write_tokens``:

* ``input_tokens``: prompt tokens billed at the plain input rate, i.e. **excluding** tokens
  read from or written to a prompt cache. This is what Anthropic reports as
  ``usage.input_tokens``.
* ``cached_input_tokens``: prompt tokens read from a cache (Anthropic
  ``cache_read_input_tokens``, OpenAI ``prompt_tokens_details.cached_tokens``, Gemini
  ``cachedContentTokenCount``).
* ``cache_write_tokens``: prompt tokens written to a cache (Anthropic
  ``cache_creation_input_tokens``).
* ``output_tokens``: everything generated, reasoning/thinking tokens included.

OpenAI's ``prompt_tokens`` and Gemini's ``promptTokenCount`` *include* the cached tokens,
so they must be split first; :meth:`TokenUsage.from_openai` and
:meth:`TokenUsage.from_gemini` do that (passing ``prompt_tokens`` straight in as
``input_tokens`` would bill the cached part twice). The disjoint form was chosen because
each token then has exactly one rate and no combination of counts can be inconsistent.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from .errors import ConfigError, UnknownModelError

PRICES_ENV = "OTEL_BUDGET_PRICES"
PACKAGED_NAME = "prices.toml"

_MILLION = Decimal(1_000_000)
_NANO_USD = Decimal("0.000000001")
_RATE_FIELDS = ("input", "output", "cached_input", "cache_write")
_MODEL_FIELDS = frozenset(
    {*_RATE_FIELDS, "provider", "source", "checked", "note", "aliases", "prefixes",
     "long_context", "changes"}
)
# A trailing snapshot date: -20250514, -2026-09-22 (OpenAI) or @20250929 (Vertex AI).
_DATE_SUFFIX = re.compile(r"[-@]20\d{2}(?:-\d{2}-\d{2}|\d{4})$")


@dataclass(frozen=True)
class Rates:
    """USD per million tokens for each token kind."""

    input: Decimal
    output: Decimal
    cached_input: Decimal
    cache_write: Decimal

    @classmethod
    def of(
        cls, input: float | str | Decimal, output: float | str | Decimal,
        cached_input: float | str | Decimal | None = None,
        cache_write: float | str | Decimal | None = None,
    ) -> Rates:
        """Rates from plain numbers; cache rates default to the input rate."""
        values = [_to_decimal(v, name) for v, name in (
            (input, "input"), (output, "output"),
            (input if cached_input is None else cached_input, "cached_input"),
            (input if cache_write is None else cache_write, "cache_write"),
        )]
        return cls(*values)

    def as_dict(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in _RATE_FIELDS}


@dataclass(frozen=True)
class LongContext:
    """Rates for the whole request once its prompt exceeds ``threshold_tokens``."""

    threshold_tokens: int
    rates: Rates


@dataclass(frozen=True)
class PriceChange:
    """A scheduled price: ``rates`` apply from ``effective_from`` (a calendar day) on."""

    effective_from: date
    rates: Rates


@dataclass(frozen=True)
class ModelPrice:
    """One model's price. ``rates`` are the ones in effect for the day it was resolved for
    (see :meth:`PriceTable.resolve`); ``changes`` keeps the whole schedule for display."""

    model: str
    provider: str
    rates: Rates
    source: str = ""
    checked: str = ""
    note: str = ""
    aliases: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    long_context: LongContext | None = None
    changes: tuple[PriceChange, ...] = ()
    is_fallback: bool = False

    @classmethod
    def flat(
        cls, input: float | str | Decimal, output: float | str | Decimal,
        cached_input: float | str | Decimal | None = None,
        cache_write: float | str | Decimal | None = None, *,
        provider: str = "unknown", model: str = "fallback", note: str = "",
    ) -> ModelPrice:
        """A simple price, e.g. a fallback: ``ModelPrice.flat(3, 15)``."""
        return cls(model=model, provider=provider,
                   rates=Rates.of(input, output, cached_input, cache_write),
                   source="configured", note=note)

    def as_of(self, day: date) -> ModelPrice:
        """This price with the rates in effect on `day`."""
        rates = self.rates
        for change in self.changes:
            if change.effective_from <= day:
                rates = change.rates
        return replace(self, rates=rates)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model, "provider": self.provider, **self.rates.as_dict(),
            "source": self.source, "checked": self.checked,
        }
        if self.note:
            out["note"] = self.note
        if self.aliases:
            out["aliases"] = list(self.aliases)
        if self.prefixes:
            out["prefixes"] = list(self.prefixes)
        if self.long_context is not None:
            out["long_context"] = {
                "threshold_tokens": self.long_context.threshold_tokens,
                **self.long_context.rates.as_dict(),
            }
        if self.changes:
            out["changes"] = [
                {"from": c.effective_from.isoformat(), **c.rates.as_dict()}
                for c in self.changes
            ]
        if self.is_fallback:
            out["is_fallback"] = True
        return out


class TokenUsage(NamedTuple):
    """Token counts in this module's disjoint convention (see the module docstring)."""

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0

    @classmethod
    def from_anthropic(
        cls, input_tokens: int, output_tokens: int,
        cache_read_input_tokens: int = 0, cache_creation_input_tokens: int = 0,
    ) -> TokenUsage:
        """Anthropic's usage fields are already disjoint."""
        return cls(input_tokens, output_tokens, cache_read_input_tokens,
                   cache_creation_input_tokens)

    @classmethod
    def from_openai(
        cls, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0
    ) -> TokenUsage:
        """OpenAI's ``prompt_tokens`` include ``cached_tokens``; split them."""
        return cls(_split(prompt_tokens, cached_tokens, "prompt_tokens", "cached_tokens"),
                   completion_tokens, cached_tokens)

    @classmethod
    def from_gemini(
        cls, prompt_token_count: int, candidates_token_count: int,
        cached_content_token_count: int = 0, thoughts_token_count: int = 0,
    ) -> TokenUsage:
        """Gemini's prompt count includes cached tokens; thoughts are billed as output."""
        _check_count("thoughts_token_count", thoughts_token_count)
        _check_count("candidates_token_count", candidates_token_count)
        return cls(
            _split(prompt_token_count, cached_content_token_count,
                   "prompt_token_count", "cached_content_token_count"),
            candidates_token_count + thoughts_token_count, cached_content_token_count,
        )


def _split(total: int, part: int, total_name: str, part_name: str) -> int:
    _check_count(total_name, total)
    _check_count(part_name, part)
    if part > total:
        raise ValueError(f"{part_name} ({part}) cannot exceed {total_name} ({total})")
    return total - part


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_token_counts(
    input_tokens: object, output_tokens: object,
    cached_input_tokens: object = 0, cache_write_tokens: object = 0,
) -> TokenUsage:
    """Validate token counts (non-negative ints, not bool/float/str) and return them.

    Raises TypeError or ValueError naming the offending argument.
    """
    return TokenUsage(
        _check_count("input_tokens", input_tokens),
        _check_count("output_tokens", output_tokens),
        _check_count("cached_input_tokens", cached_input_tokens),
        _check_count("cache_write_tokens", cache_write_tokens),
    )


def price_call(
    price: ModelPrice, input_tokens: int, output_tokens: int,
    cached_input_tokens: int = 0, cache_write_tokens: int = 0,
) -> float:
    """The USD cost of one call, exact to 1e-9 USD.

    Counts follow the disjoint convention of this module: ``input_tokens`` excludes cache
    reads and writes. When the model has a long-context tier and the prompt
    (input + cached + cache-write tokens) is above its threshold, the whole request,
    output included, is billed at the long-context rates. Uses ``price.rates`` as they
    are, so resolve the price for the right day first (:meth:`PriceTable.resolve`).
    """
    usage = check_token_counts(input_tokens, output_tokens, cached_input_tokens,
                               cache_write_tokens)
    return float(price_call_decimal(price, usage))


def price_call_decimal(price: ModelPrice, usage: TokenUsage) -> Decimal:
    """:func:`price_call` on already validated counts, as a Decimal rounded to 1e-9."""
    rates = price.rates
    prompt = usage.input_tokens + usage.cached_input_tokens + usage.cache_write_tokens
    if price.long_context is not None and prompt > price.long_context.threshold_tokens:
        rates = price.long_context.rates
    total = (
        usage.input_tokens * rates.input
        + usage.output_tokens * rates.output
        + usage.cached_input_tokens * rates.cached_input
        + usage.cache_write_tokens * rates.cache_write
    ) / _MILLION
    return total.quantize(_NANO_USD, rounding=ROUND_HALF_EVEN)


# --- the table -----------------------------------------------------------------------------

@dataclass(frozen=True)
class PriceTable:
    """Model prices by id, with aliases, dated-id and prefix resolution and a fallback."""

    models: Mapping[str, ModelPrice]
    version: str
    sources: tuple[str, ...] = ()
    fallback: ModelPrice | None = None
    _aliases: Mapping[str, str] = field(default_factory=dict, repr=False)
    _prefixes: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @classmethod
    def build(
        cls, models: Mapping[str, ModelPrice], *, version: str,
        sources: tuple[str, ...] = (), fallback: ModelPrice | None = None,
    ) -> PriceTable:
        aliases: dict[str, str] = {}
        prefixes: dict[str, str] = {}
        for model_id, price in models.items():
            for alias in price.aliases:
                aliases[alias.lower()] = model_id
            for prefix in price.prefixes:
                prefixes[prefix.lower()] = model_id
        ordered = tuple(sorted(prefixes.items(), key=lambda kv: -len(kv[0])))
        if fallback is not None and not fallback.is_fallback:
            fallback = replace(fallback, is_fallback=True)
        return cls(dict(models), version, sources, fallback, aliases, ordered)

    # loading

    @classmethod
    def packaged(cls, *, fallback: ModelPrice | None = None) -> PriceTable:
        """The price table shipped with otel_budget."""
        resource = resources.files("otel_budget").joinpath(PACKAGED_NAME)
        text = resource.read_text(encoding="utf-8")
        version, models = _parse(text, where=f"packaged {PACKAGED_NAME}", require_version=True)
        return cls.build(models, version=version, sources=(f"packaged {PACKAGED_NAME}",),
                         fallback=fallback)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str] | None = None, *,
        fallback: ModelPrice | None = None, include_packaged: bool = True,
    ) -> PriceTable:
        """The packaged table, overridden and extended by the file at `path` if given.

        A model id in the user file replaces the packaged entry of that id whole.
        With ``include_packaged=False`` only the user file is used.
        """
        base = cls.packaged() if include_packaged or path is None else None
        if path is None:
            assert base is not None
            return cls.build(base.models, version=base.version, sources=base.sources,
                             fallback=fallback)
        where = os.fspath(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read price file: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{where}: price file is not UTF-8 ({exc.reason})") from None
        user_version, user_models = _parse(text, where=where, require_version=False)
        if base is None:
            return cls.build(user_models, version=user_version or "user",
                             sources=(where,), fallback=fallback)
        # User entries go last so their aliases and prefixes win over packaged ones.
        merged = {k: v for k, v in base.models.items() if k not in user_models}
        merged.update(user_models)
        version = base.version + (f"+{user_version}" if user_version else "+user")
        return cls.build(merged, version=version, sources=(*base.sources, where),
                         fallback=fallback)

    @classmethod
    def load_default(
        cls, *, fallback: ModelPrice | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> PriceTable:
        """The packaged table plus the file named by ``OTEL_BUDGET_PRICES``, if set."""
        env = os.environ if environ is None else environ
        path = env.get(PRICES_ENV, "").strip()
        return cls.load(path or None, fallback=fallback)

    from_env = load_default

    def with_fallback(self, fallback: ModelPrice | None) -> PriceTable:
        return PriceTable.build(self.models, version=self.version, sources=self.sources,
                                fallback=fallback)

    # lookup

    def __len__(self) -> int:
        return len(self.models)

    def __iter__(self) -> Iterator[ModelPrice]:
        return iter(self.models[k] for k in sorted(self.models))

    def match(self, model: str) -> tuple[ModelPrice, str] | None:
        """(entry, how) where how is 'exact', 'alias', 'dated' or 'prefix'; None if no entry.

        Order: exact id, declared alias, the id without a trailing date stamp (exact or
        alias), then the longest declared prefix. Matching ignores case and surrounding
        whitespace.
        """
        if not isinstance(model, str):
            raise TypeError(f"model must be a str, got {type(model).__name__}")
        key = model.strip().lower()
        found = self._exact_or_alias(key)
        if found is not None:
            return found
        undated = _DATE_SUFFIX.sub("", key)
        if undated != key:
            found = self._exact_or_alias(undated)
            if found is not None:
                return found[0], "dated"
        for prefix, model_id in self._prefixes:
            if key.startswith(prefix):
                return self.models[model_id], "prefix"
        return None

    def _exact_or_alias(self, key: str) -> tuple[ModelPrice, str] | None:
        price = self.models.get(key)
        if price is not None:
            return price, "exact"
        target = self._aliases.get(key)
        if target is not None:
            return self.models[target], "alias"
        return None

    def find(self, model: str, *, on: date | None = None) -> ModelPrice | None:
        """The model's price for day `on` (default: today in UTC), or None."""
        found = self.match(model)
        return found[0].as_of(on or _today()) if found else None

    def resolve(self, model: str, *, on: date | None = None) -> ModelPrice:
        """The model's price for day `on` (default: today in UTC).

        Falls back to the configured fallback price (returned with ``is_fallback=True``
        and ``model`` set to the requested name); without one raises UnknownModelError.
        """
        price = self.find(model, on=on)
        if price is not None:
            return price
        if self.fallback is not None:
            return replace(self.fallback, model=model.strip())
        raise UnknownModelError(
            f"no price for model {model!r} in price table {self.version}; add it in a "
            f"file named by {PRICES_ENV} or configure a fallback price"
        )


def _today() -> date:
    return datetime.now(UTC).date()


# --- parsing ---------------------------------------------------------------------------------

def _to_decimal(value: object, name: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    except ArithmeticError:
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not number.is_finite() or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def _parse(text: str, *, where: str, require_version: bool) -> tuple[str, dict[str, ModelPrice]]:
    try:
        doc = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: invalid TOML: {exc}") from None
    unknown = set(doc) - {"version", "models"}
    if unknown:
        raise ConfigError(f"{where}: unknown top-level field(s) {sorted(unknown)}")
    version = doc.get("version")
    if version is None and require_version:
        raise ConfigError(f"{where}: missing field 'version'")
    if version is not None and (not isinstance(version, str) or not version.strip()):
        raise ConfigError(f"{where}: field 'version' must be a non-empty string")
    raw_models = doc.get("models")
    if not isinstance(raw_models, dict) or not raw_models:
        raise ConfigError(f"{where}: missing field 'models' (a table of model entries)")
    models: dict[str, ModelPrice] = {}
    claimed: dict[str, str] = {}
    for raw_id, entry in raw_models.items():
        model_id = raw_id.strip().lower()
        field_prefix = f'models."{raw_id}"'
        if not model_id:
            raise ConfigError(f"{where}: {field_prefix}: model id must not be empty")
        if model_id in models:
            raise ConfigError(f"{where}: {field_prefix}: duplicate model id (ids ignore case)")
        price = _parse_model(model_id, entry, where=where, field_prefix=field_prefix)
        for name in (*price.aliases, *price.prefixes):
            other = claimed.get(name)
            if other is not None and other != model_id:
                raise ConfigError(
                    f"{where}: {field_prefix}: alias/prefix {name!r} is already used by "
                    f"{other!r}"
                )
            claimed[name] = model_id
        models[model_id] = price
    for name, owner in claimed.items():
        if name in models and name != owner:
            raise ConfigError(
                f"{where}: models.\"{owner}\".aliases: {name!r} is itself a model id"
            )
    return (version.strip() if isinstance(version, str) else ""), models


def _parse_model(model_id: str, entry: object, *, where: str, field_prefix: str) -> ModelPrice:
    def fail(name: str, problem: str) -> ConfigError:
        return ConfigError(f"{where}: {field_prefix}.{name}: {problem}")

    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: {field_prefix}: must be a table")
    unknown = set(entry) - _MODEL_FIELDS
    if unknown:
        raise fail(sorted(unknown)[0], f"unknown field (expected some of {sorted(_MODEL_FIELDS)})")
    rates = _parse_rates(entry, fail)
    provider = _required_str(entry, "provider", fail)
    source = _required_str(entry, "source", fail)
    checked = entry.get("checked")
    if checked is None:
        raise fail("checked", "missing field (the day the price was checked)")
    if isinstance(checked, datetime) or not isinstance(checked, (date, str)):
        raise fail("checked", f"must be a date like 2026-11-25, got {checked!r}")
    if isinstance(checked, str):
        try:
            checked = date.fromisoformat(checked)
        except ValueError:
            raise fail("checked", f"must be a date like 2026-11-25, got {checked!r}") from None
    note = entry.get("note", "")
    if not isinstance(note, str):
        raise fail("note", "must be a string")
    aliases = _str_list(entry, "aliases", fail)
    prefixes = _str_list(entry, "prefixes", fail)
    long_context = _parse_long_context(entry.get("long_context"), fail)
    changes = _parse_changes(entry.get("changes"), fail)
    if long_context is not None and changes:
        raise fail("changes", "cannot be combined with long_context")
    return ModelPrice(
        model=model_id, provider=provider, rates=rates, source=source,
        checked=checked.isoformat(), note=note, aliases=aliases, prefixes=prefixes,
        long_context=long_context, changes=changes,
    )


def _parse_rates(table: Mapping[str, Any], fail: Any, prefix: str = "") -> Rates:
    values = []
    for name in _RATE_FIELDS:
        if name not in table:
            raise fail(prefix + name, "missing field (USD per million tokens)")
        try:
            values.append(_to_decimal(table[name], prefix + name))
        except ValueError as exc:
            raise fail(prefix + name, str(exc)) from None
    return Rates(*values)


def _required_str(entry: Mapping[str, Any], name: str, fail: Any) -> str:
    value = entry.get(name)
    if value is None:
        raise fail(name, "missing field")
    if not isinstance(value, str) or not value.strip():
        raise fail(name, "must be a non-empty string")
    return value.strip()


def _str_list(entry: Mapping[str, Any], name: str, fail: Any) -> tuple[str, ...]:
    value = entry.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise fail(name, "must be a list of non-empty strings")
    return tuple(v.strip().lower() for v in value)


def _parse_long_context(raw: object, fail: Any) -> LongContext | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise fail("long_context", "must be a table")
    unknown = set(raw) - {"threshold_tokens", *_RATE_FIELDS}
    if unknown:
        raise fail(f"long_context.{sorted(unknown)[0]}", "unknown field")
    threshold = raw.get("threshold_tokens")
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold <= 0:
        raise fail("long_context.threshold_tokens", f"must be an integer > 0, got {threshold!r}")
    return LongContext(threshold, _parse_rates(raw, fail, "long_context."))


def _parse_changes(raw: object, fail: Any) -> tuple[PriceChange, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise fail("changes", "must be an array of tables ([[models.\"id\".changes]])")
    changes = []
    for i, item in enumerate(raw):
        name = f"changes[{i}]"
        if not isinstance(item, dict):
            raise fail(name, "must be a table")
        unknown = set(item) - {"from", *_RATE_FIELDS}
        if unknown:
            raise fail(f"{name}.{sorted(unknown)[0]}", "unknown field")
        start = item.get("from")
        if isinstance(start, datetime) or not isinstance(start, date):
            raise fail(f"{name}.from", f"must be a date like 2026-12-01, got {start!r}")
        changes.append(PriceChange(start, _parse_rates(item, fail, f"{name}.")))
    starts = [c.effective_from for c in changes]
    if starts != sorted(set(starts)):
        raise fail("changes", "dates must be strictly increasing")
    return tuple(changes)

