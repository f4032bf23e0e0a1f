"""`otel-budget prices [MODEL]`: list the price table, or show how one model resolves."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from typing import Any

from ..errors import ConfigError
from ..pricing import PRICES_ENV, ModelPrice, PriceTable

_DIFF_FIELDS = ("input", "output", "cached_input", "cache_write", "cache_write_long")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "prices",
        help="list token prices (USD per million tokens) with source and date",
        description=(
            "List the offline price table (packaged, plus the file named by "
            f"{PRICES_ENV} or --file), or show the entry a MODEL id resolves to."
        ),
    )
    parser.add_argument("model", nargs="?", metavar="MODEL",
                        help="a model id, e.g. claude-sonnet-4-20250514")
    parser.add_argument("--file", metavar="PATH",
                        help=f"a price file overriding the packaged one (default: ${PRICES_ENV})")
    parser.add_argument("--date", dest="on", metavar="YYYY-MM-DD",
                        help="show the prices in effect on this day (default: today, UTC)")
    parser.add_argument("--on", dest="on", help=argparse.SUPPRESS)  # the earlier name
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--diff-litellm", action="store_true",
                        help="show where LiteLLM's bundled price map disagrees with ours "
                             "(needs pip install litellm; nothing is fetched)")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    table = PriceTable.load(args.file) if args.file else PriceTable.load_default()
    day = _parse_day(args.on)
    if getattr(args, "diff_litellm", False):
        return _diff_litellm(table, day, as_json=args.json)
    if args.model:
        return _show_one(table, args.model, day, as_json=args.json)
    entries = [price.as_of(day) if day else price for price in table]
    if args.json:
        print(json.dumps({"version": table.version, "sources": list(table.sources),
                          "models": [e.as_dict() for e in entries]}, indent=2))
        return 0
    _print_table(table, entries)
    return 0


def _parse_day(text: str | None) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--date: expected a date like 2026-11-25, got {text!r}") from None


def _show_one(table: PriceTable, model: str, day: date | None, *, as_json: bool) -> int:
    found = table.match(model)
    if found is None:
        # The same error record_usage raises, so the message names the model.
        table.resolve(model, on=day)
    assert found is not None
    how = found[1]
    price = table.find(model, on=day)
    assert price is not None
    if as_json:
        print(json.dumps({"query": model, "matched_by": how, "version": table.version,
                          **price.as_dict()}, indent=2))
        return 0
    lines = [
        f"{model} -> {price.model} ({how} match, price table {table.version})",
        f"  provider      {price.provider}",
        f"  input         ${_usd(price.rates.input)} / MTok",
        f"  output        ${_usd(price.rates.output)} / MTok",
        f"  cached input  ${_usd(price.rates.cached_input)} / MTok",
        f"  cache write   ${_usd(price.rates.cache_write)} / MTok",
        f"  long-TTL write ${_usd(price.rates.cache_write_long)} / MTok "
        "(Anthropic 1-hour, OpenAI 12-hour)",
    ]
    if price.service_tiers:
        lines.append("  tiers         " + ", ".join(
            f"{name} x{_usd(mult)}" for name, mult in price.service_tiers))
    if price.server_tools:
        lines.append("  server tools  " + ", ".join(
            f"{name} ${_usd(usd)} / 1,000 requests" for name, usd in price.server_tools))
    if price.long_context is not None:
        lc = price.long_context
        lines.append(
            f"  above {lc.threshold_tokens:,} prompt tokens: input ${_usd(lc.rates.input)}, "
            f"output ${_usd(lc.rates.output)}, cached ${_usd(lc.rates.cached_input)}, "
            f"cache write ${_usd(lc.rates.cache_write)} (whole request)"
        )
    for change in price.changes:
        lines.append(
            f"  from {change.effective_from}: input ${_usd(change.rates.input)}, "
            f"output ${_usd(change.rates.output)}, cached ${_usd(change.rates.cached_input)}, "
            f"cache write ${_usd(change.rates.cache_write)}"
        )
    if price.aliases:
        lines.append(f"  aliases       {', '.join(price.aliases)}")
    lines.append(f"  source        {price.source}")
    lines.append(f"  checked       {price.checked}")
    if price.note:
        lines.append(f"  note          {price.note}")
    print("\n".join(lines))
    return 0


def _usd(value: Any) -> str:
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0")
        whole, _, frac = text.partition(".")
        text = f"{whole}.{frac:0<2}"
    return text


def _print_table(table: PriceTable, entries: list[ModelPrice]) -> None:
    header = ("model", "provider", "input", "output", "cached", "cache_write", "checked",
              "source")
    rows = [header] + [
        (p.model + ("*" if p.long_context or p.changes else ""), p.provider,
         _usd(p.rates.input), _usd(p.rates.output), _usd(p.rates.cached_input),
         _usd(p.rates.cache_write), p.checked, p.source)
        for p in entries
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    out = sys.stdout
    out.write(f"price table {table.version} (USD per million tokens; "
              f"sources: {', '.join(table.sources)})\n")
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        out.write("  ".join(cells) + "  " + row[-1] + "\n")
    out.write("* long-context tier or scheduled price change: "
              "`otel-budget prices MODEL` shows it\n")


def _diff_litellm(table: PriceTable, day: date | None, *, as_json: bool) -> int:
    """For each of our models, LiteLLM's first-party entries that resolve to it (same
    provider: Anthropic's, OpenAI's, the Gemini API's own ids, not resellers' or cloud
    regional ones, whose prices legitimately differ) and the rates where they differ."""
    from ..pricing.litellm_source import litellm_models

    theirs = litellm_models()
    rows: list[dict[str, Any]] = []
    missing: list[str] = []
    seen: set[str] = set()
    for key, other in sorted(theirs.items()):
        found = table.match(key)
        if found is None:
            continue
        ours = found[0].as_of(day) if day else found[0]
        if other.provider != ours.provider:
            continue
        seen.add(ours.model)
        for name in _DIFF_FIELDS:
            if name == "cache_write_long" and getattr(other.rates, name) == other.rates.cache_write:
                continue  # LiteLLM has no long-TTL price for this entry
            a, b = getattr(ours.rates, name), getattr(other.rates, name)
            if a != b:
                rows.append({"model": ours.model, "litellm_id": key, "rate": name,
                             "ours": float(a), "litellm": float(b)})
    missing = sorted(p.model for p in table if p.model not in seen)
    if as_json:
        print(json.dumps({"version": table.version, "differences": rows,
                          "not_in_litellm": missing}, indent=2))
        return 0
    out = sys.stdout
    out.write(f"price table {table.version} vs LiteLLM (USD per million tokens): "
              f"{len(rows)} difference(s)\n")
    for row in rows:
        out.write(f"  {row['model']:<28} {row['litellm_id']:<44} {row['rate']:<16} "
                  f"ours {_usd(row['ours'])}  litellm {_usd(row['litellm'])}\n")
    if missing:
        out.write(f"not in LiteLLM's map: {', '.join(missing)}\n")
    return 0
