"""One vocabulary on the command line: `--store` for the store, `--date` for the day."""

from __future__ import annotations

import argparse

import pytest

from otel_budget.cli import build_parser, main

STORE_COMMANDS = {"status", "report", "serve", "migrate", "demo"}
DAY_COMMANDS = {"status", "prices"}


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _visible_options(sub: argparse.ArgumentParser) -> set[str]:
    return {option for action in sub._actions if action.help != argparse.SUPPRESS
            for option in action.option_strings}


def test_the_store_is_store_and_the_day_is_date_everywhere() -> None:
    commands = _subcommands()
    for name, sub in commands.items():
        options = _visible_options(sub)
        assert not options & {"--url", "--postgres-url", "--on", "--day"}, (name, options)
        if name in STORE_COMMANDS:
            assert "--store" in options, name
        if name in DAY_COMMANDS:
            assert "--date" in options, name


def test_the_earlier_names_still_parse(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prices", "claude-sonnet-4-5", "--on", "2026-11-25", "--json"]) == 0
    by_old = capsys.readouterr().out
    assert main(["prices", "claude-sonnet-4-5", "--date", "2026-11-25", "--json"]) == 0
    assert capsys.readouterr().out == by_old
    assert main(["migrate", "--url", "https://project.supabase.co"]) == 2
    assert "--store must be a postgresql:// URL" in capsys.readouterr().err
