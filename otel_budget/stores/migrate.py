"""The PostgreSQL/Supabase schema (`schema.sql`, shipped in the package) and applying it."""

from __future__ import annotations

from importlib import resources

from ..errors import StoreError
from ..redact import password_of, scrub_known
from .base import redact_url


def schema_sql() -> str:
    """The migration text, as `otel-budget migrate --print` shows it."""
    return resources.files("otel_budget.stores").joinpath("schema.sql").read_text("utf-8")


def apply_migration(url: str, *, connect_timeout_s: int = 10) -> None:
    """Apply the migration to the database at `url`, in one transaction.

    Idempotent: the script only creates what is missing and re-grants what it grants.
    """
    try:
        import psycopg
        import psycopg.conninfo
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise StoreError(
            "applying the migration needs psycopg: pip install 'otel-budget[postgres]'"
        ) from exc
    sql = schema_sql()
    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        # libpq's message quotes the piece it choked on (part of a password, say).
        raise StoreError(
            f"applying the otel_budget migration: the connection string {redact_url(url)!r} "
            "does not parse (a value with blanks or quotes must be single-quoted, or use a URL)"
        ) from None
    try:
        with psycopg.connect(
            url, connect_timeout=connect_timeout_s, prepare_threshold=None
        ) as conn:
            # No parameters, so psycopg sends the whole script in one simple query.
            conn.execute(sql.encode("utf-8"))
    except psycopg.Error as exc:
        raise StoreError(
            f"applying the otel_budget migration to {redact_url(url)} failed: "
            f"{_scrub(' '.join(str(exc).split()), url)}"
        ) from None


def _scrub(message: str, url: str) -> str:
    """Drop the URL's password from a driver message, should one ever quote it."""
    return scrub_known(message, password_of(url))
