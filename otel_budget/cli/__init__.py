"""The `otel-budget` command line. Each command lives in its own module with a
`register(subparsers)` function; errors print one line and exit 2."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from .._version import __version__
from ..errors import BudgetError
from .text import printable

_COMMAND_MODULES: tuple[str, ...] = (
    "otel_budget.cli.status",
    "otel_budget.cli.demo",
    "otel_budget.cli.bench",
    "otel_budget.cli.report",
    "otel_budget.cli.prices",
    "otel_budget.cli.serve",
    "otel_budget.cli.migrate",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.func(args)
    except BudgetError as exc:
        # An error may quote stored text (a malformed row's name, say).
        print(f"otel-budget {args.command}: {printable(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `otel-budget status | head`
        sys.stderr.close()
        return 0
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otel-budget", description="Keep LLM spend honest: budgets on OpenTelemetry."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in _COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
