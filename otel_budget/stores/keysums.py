"""Per-key budgets' spend per key, summed over writer rows: the Python reference
(memory and Supabase stores, and any store that is no SummingStore) and the SQL the
SQLite and PostgreSQL stores run instead (one row per key comes back, not every
writer's entry). Pure: no I/O.

A writer entry carries `by_key`: {budget: {key: usd}}. Python leaves a row whose
`by_key` is malformed out of the sums and names it; SQL skips the items that are no
amount (the row's other items count).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..money import is_stored_amount
from .layout import KEY_FIELD, WRITER_TYPE, writer_row_name

KeySums = dict[str, dict[str, float]]


def add_entry_keys(into: KeySums, entry: Mapping[str, Any], names: Iterable[str]) -> bool:
    """Add one writer entry's ``by_key`` of budgets `names` into `into`; False if the
    field is malformed (then nothing of it is added)."""
    field = entry.get(KEY_FIELD)
    if field is None:
        return True
    if not isinstance(field, Mapping):
        return False
    wanted: list[tuple[str, Mapping[str, Any]]] = []
    for name in names:
        items = field.get(name)
        if items is None:
            continue
        if not isinstance(items, Mapping) or not all(is_stored_amount(v) for v in items.values()):
            return False
        wanted.append((name, items))
    for name, items in wanted:
        sums = into.setdefault(name, {})
        for key, usd in items.items():
            sums[key] = sums.get(key, 0.0) + float(usd)
    return True


def sum_entry_keys(entries: Iterable[Mapping[str, Any]], budgets: Iterable[str], *,
                   exclude_writer: str = "") -> tuple[KeySums, list[str]]:
    """`SummingStore.key_sums` over writer entries: the sums, and the rows left out."""
    names = list(budgets)
    out: KeySums = {}
    bad: list[str] = []
    for entry in entries:
        if exclude_writer and entry.get("writer_id") == exclude_writer:
            continue
        if not add_entry_keys(out, entry, names):
            bad.append(writer_row_name(str(entry.get("date")), str(entry.get("writer_id"))))
    return out, bad


# PostgreSQL: values as text cast to float8 (3-4x faster than jsonb numbers); should
# a hand-edited row hold text that is no number, the cast fails and the same sums
# are read again with every value's type checked first (PG_KEY_SUMS_CHECKED).
# Parameters: the days, the budgets, the writer left out.
_PG_KEY_SUMS_FROM = f"""
  from public.quilt_patches as r
  cross join lateral pg_catalog.jsonb_each(
      case when pg_catalog.jsonb_typeof(r.content -> '{KEY_FIELD}') = 'object'
           then r.content -> '{KEY_FIELD}' else '{{}}'::jsonb end) as b
  cross join lateral pg_catalog.{{each}}(
      case when pg_catalog.jsonb_typeof(b.value) = 'object' then b.value
           else '{{}}'::jsonb end) as k
 where r.patch_type = '{WRITER_TYPE}' and (r.content ->> 'date') = any (%s::text[])
   and b.key = any (%s::text[]) and coalesce(r.content ->> 'writer_id', '') <> %s
"""
PG_KEY_SUMS = (
    "select b.key, k.key, sum(k.value::float8)"
    + _PG_KEY_SUMS_FROM.replace("{each}", "jsonb_each_text")
    + " and k.value::float8 between 0 and 1e12 group by 1, 2")
PG_KEY_SUMS_CHECKED = (
    "select b.key, k.key, sum((k.value::text)::float8)"
    + _PG_KEY_SUMS_FROM.replace("{each}", "jsonb_each")
    + " and pg_catalog.jsonb_typeof(k.value) = 'number'"
    + " and (k.value::text)::float8 between 0 and 1e12 group by 1, 2")
#: Transaction-local: 16 writers x 10,000 keys group in a hash, not sorted (the
#: planner cannot know how many items the JSON holds and sorts, 3x slower).
#: Parameter: the store's statement timeout.
PG_KEY_SUMS_SETTINGS = ("select pg_catalog.set_config('statement_timeout', %s::text, true), "
                        "pg_catalog.set_config('work_mem', '64MB', true), "
                        "pg_catalog.set_config('enable_sort', 'off', true)")


def sqlite_key_sums(days: int, budgets: int) -> str:
    """The SQLite query for `days` days and `budgets` budgets; parameters: the days,
    the budgets, the writer left out."""
    return f"""
SELECT b.key, k.key, sum(k.value)
  FROM quilt_patches AS r, json_each(r.content, '$.{KEY_FIELD}') AS b, json_each(b.value) AS k
 WHERE r.patch_type = '{WRITER_TYPE}' AND json_valid(r.content)
   AND json_extract(r.content, '$.date') IN ({",".join("?" * days)})
   AND b.key IN ({",".join("?" * budgets)})
   AND b.type = 'object' AND coalesce(json_extract(r.content, '$.writer_id'), '') <> ?
   AND k.type IN ('integer', 'real') AND k.value BETWEEN 0 AND 1e12
 GROUP BY 1, 2
"""


def key_sums_of_rows(rows: Iterable[tuple[Any, ...]]) -> KeySums:
    """The SQL's (budget, key, usd) rows as {budget: {key: usd}}."""
    out: KeySums = {}
    for budget, key, usd in rows:
        out.setdefault(str(budget), {})[str(key)] = float(usd)
    return out
