"""`otel-budget migrate --print | --url postgresql://...`: show or apply the one
PostgreSQL/Supabase migration (otel_budget/stores/schema.sql)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..errors import ConfigError
from ..stores.base import redact_url
from ..stores.migrate import apply_migration, schema_sql

URL_ENV = "OTEL_BUDGET_MIGRATE_URL"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "migrate",
        help="print or apply the PostgreSQL/Supabase schema",
        description=(
            "Print the migration (paste it into the Supabase SQL editor) or apply it to a "
            "PostgreSQL database. It is idempotent: applying it again changes nothing. "
            "On Supabase use the direct or session-mode connection string from "
            "Project Settings > Database."
        ),
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--print", dest="print_sql", action="store_true",
                        help="write the SQL to stdout")
    action.add_argument("--store", dest="url", metavar="URL",
                        help=f"postgresql://... to apply it to (or set {URL_ENV} "
                        "and pass --store env:)")
    # The name before every command said --store; kept so scripts keep working.
    action.add_argument("--url", dest="url", help=argparse.SUPPRESS)
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    if args.print_sql:
        sys.stdout.write(schema_sql())
        return 0
    url: str = args.url
    if url == "env:":
        # Keeps the password out of the shell history and the process list.
        url = os.environ.get(URL_ENV, "")
        if not url:
            raise ConfigError(f"--store env: needs {URL_ENV} to be set")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in ("postgresql", "postgres"):
        raise ConfigError(
            f"--store must be a postgresql:// URL, got {redact_url(url)!r} "
            "(for Supabase, use the database connection string, not the API URL)"
        )
    apply_migration(url)
    print(f"otel_budget schema applied to {redact_url(url)}")
    return 0
