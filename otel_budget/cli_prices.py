"""`otel-budget prices [MODEL]`: list the price table, or show how one model resolves."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from typing import Any

from .errors import ConfigError
from .pricing import PRICES_ENV, ModelPrice, PriceTable


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
    parser.add_argument("--on", metavar="YYYY-MM-DD",
                        help="show the prices in effect on this day (default: today, UTC)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    table = PriceTable.load(args.file) if args.file else PriceTable.load_default()
    day = _parse_day(args.on)
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
        raise ConfigError(f"--on: expected a date like 2026-11-25, got {text!r}") from None


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
    ]
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
