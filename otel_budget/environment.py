"""Every environment variable otel_budget reads: its name, what it holds, and the
`BudgetConfig` field it sets (or the module that reads it). The one list: the
configuration reference (docs/configuration.md) holds `markdown_table()` and a
test keeps the two equal.

Parsing here is pure text to values; `BudgetConfig` validates the values as it
does for arguments, and names the variable when one is wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = ["VARIABLES", "Variable", "config_values", "markdown_table", "variable",
           "variable_is_secret"]


def _text(name: str, raw: str) -> str:
    return raw.strip()


def _number(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def _integer(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _ratios(name: str, raw: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated numbers, got {raw!r}") from None


def _boolean(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value not in ("true", "false"):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value == "true"


def _aliases(name: str, raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in raw.split(","):
        if not part.strip():
            continue
        alias, sep, target = part.partition("=")
        if not sep or not alias.strip() or not target.strip() or "=" in target:
            raise ConfigError(
                f"{name}: expected name=model pairs separated by commas, "
                f"e.g. 'my-gpt4o-deployment=gpt-4o'; got {part.strip()!r:.80}")
        if alias.strip() in out:
            raise ConfigError(f"{name}: {alias.strip()!r} is given twice")
        out[alias.strip()] = target.strip()
    return out


def _budgets_file(name: str, raw: str) -> Any:
    from .budgets import load_budgets_file  # budgets imports errors only; no cycle

    return load_budgets_file(raw.strip(), name)


@dataclass(frozen=True)
class Variable:
    name: str
    kind: str  # shown in the reference: number, integer, text, ...
    meaning: str
    #: The BudgetConfig field it sets; None when another part reads it (`read_by`).
    field: str | None = None
    read_by: str = "BudgetConfig.from_env"
    parse: Callable[[str, str], Any] = _text
    #: May hold a credential: never shown in errors or output.
    secret: bool = False
    default: str = "unset"

    def get(self, env: Mapping[str, str]) -> str | None:
        """The variable's text, or None when unset or blank."""
        raw = env.get(self.name)
        return raw if raw is not None and raw.strip() else None


VARIABLES: tuple[Variable, ...] = (
    Variable("OTEL_BUDGET_DAILY_CAP_USD", "number", "the `daily` budget's cap (USD per day)",
             field="daily_cap_usd", parse=_number,
             default="none (then a budgets file must give one)"),
    Variable("OTEL_BUDGET_BUDGETS_FILE", "path", "a TOML file of `[[budget]]` tables",
             field="budgets", parse=_budgets_file, default="none"),
    Variable("OTEL_BUDGET_ALERT_RATIOS", "numbers",
             "alert thresholds of the `daily` budget, e.g. `0.8,0.95`",
             field="alert_ratios", parse=_ratios, default="`0.8`"),
    Variable("OTEL_BUDGET_STORE", "URL", "where entries are stored: `sqlite:///…`, "
             "`postgresql://…`, `supabase://`, `memory://`",
             field="store_url", secret=True, default="`sqlite:///otel_budget.db`"),
    Variable("OTEL_BUDGET_TIMEZONE", "IANA zone",
             "the zone days, weeks and months are counted in",
             field="timezone", default="`UTC`"),
    Variable("OTEL_BUDGET_INSTANCE_ID", "text", "a label for this process's writers",
             field="instance_id",
             default="`service.instance.id` of `OTEL_RESOURCE_ATTRIBUTES`, else host-pid"),
    Variable("OTEL_BUDGET_SIBLING", "text",
             "who nudges are addressed to: the agent that receives them",
             field="sibling", default="`ag_lu`"),
    Variable("OTEL_SERVICE_NAME", "text", "the OpenTelemetry service name",
             field="service_name", default="`otel-budget`"),
    Variable("OTEL_BUDGET_COLLECT_INTERVAL_S", "seconds",
             "time between collections (at least 0.5 from the environment)",
             field="collect_interval_s", parse=_number, default="`0.5`"),
    Variable("OTEL_BUDGET_CHECKPOINT_EVERY", "integer", "collections between checkpoints",
             field="checkpoint_every", parse=_integer, default="`10`"),
    Variable("OTEL_BUDGET_SPOOL_DIR", "path", "where entries the store did not take wait",
             field="spool_dir", default="`$XDG_CACHE_HOME/otel_budget/spool`"),
    Variable("OTEL_BUDGET_MAX_ATTRIBUTE_SETS", "integer",
             "attribute sets kept per writer and day; the rest in one overflow set",
             field="max_attribute_sets", parse=_integer, default="`2000`"),
    Variable("OTEL_BUDGET_MAX_KEYS_PER_BUDGET", "integer",
             "keys of a per-key budget kept per writer entry and day; the rest in one "
             "`\"(overflow)\"` item",
             field="max_keys_per_budget", parse=_integer, default="`10000`"),
    Variable("OTEL_BUDGET_MAX_CALL_USD", "number", "the largest amount one call may record",
             field="max_call_usd", parse=_number, default="`1000000`"),
    Variable("OTEL_BUDGET_TOKEN_METRICS", "true/false", "also export the token histogram",
             field="token_metrics", parse=_boolean,
             default="on when otel_budget owns the provider"),
    Variable("OTEL_BUDGET_MODEL_ALIASES", "pairs",
             "deployment names to priced models, `name=model,…`",
             field="model_aliases", parse=_aliases, default="none"),
    Variable("OTEL_BUDGET_PRICES", "path", "a price file overriding the packaged table",
             read_by="pricing", default="the packaged table"),
    Variable("OTEL_BUDGET_FALLBACK_PRICE", "in,out",
             "USD per million input and output tokens for unknown models "
             "(`0,0` records them at $0)",
             read_by="pricing", default="the dearest model of the family"),
    Variable("OTEL_BUDGET_WEBHOOK_URL", "URL",
             "POST each nudge there (a Slack incoming webhook gets a Slack message)",
             read_by="from_env", secret=True),
    Variable("OTEL_BUDGET_MIGRATE_URL", "URL",
             "the database `otel-budget migrate --store env:` applies the schema to",
             read_by="otel-budget migrate", secret=True),
    Variable("SUPABASE_URL", "URL", "the project URL for `supabase://`",
             read_by="the Supabase store"),
    Variable("SUPABASE_SERVICE_ROLE_KEY", "secret",
             "the service role key for `supabase://` (`SUPABASE_KEY` is read as a fallback)",
             read_by="the Supabase store", secret=True),
)

_BY_NAME = {v.name: v for v in VARIABLES}


def variable(name: str) -> Variable:
    return _BY_NAME[name]


def variable_is_secret(name: str) -> bool:
    var = _BY_NAME.get(name)
    return var is not None and var.secret


def config_values(env: Mapping[str, str]) -> dict[str, tuple[Variable, Any]]:
    """BudgetConfig field -> (the variable, its parsed value), for every variable set."""
    out: dict[str, tuple[Variable, Any]] = {}
    for var in VARIABLES:
        raw = var.get(env) if var.field is not None else None
        if raw is not None and var.field is not None:
            out[var.field] = (var, var.parse(var.name, raw))
    return out


def markdown_table() -> str:
    """The configuration reference's table of variables."""
    lines = ["| variable | holds | default | meaning | sets |", "|---|---|---|---|---|"]
    for var in VARIABLES:
        sets = f"`BudgetConfig.{var.field}`" if var.field else f"read by {var.read_by}"
        lines.append(f"| `{var.name}` | {var.kind} | {var.default} | {var.meaning} | {sets} |")
    return "\n".join(lines) + "\n"
