"""redact_secrets / redact_dsn / describe_exception: every DSN form libpq accepts, keys,
webhook URLs, inside longer messages and exception texts."""

from __future__ import annotations

import pytest

from otel_budget.errors import StoreError
from otel_budget.redact import describe_exception, redact_dsn, redact_secrets
from otel_budget.stores.base import redact_url

JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0."
       "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")

# (text, secrets that must not show, fragments that must still show)
CASES: list[tuple[str, list[str], list[str]]] = [
    ("postgresql://budget:s3cr3t-PW@db.internal:5432/quilt", ["s3cr3t-PW"],
     ["postgresql://budget:***@db.internal:5432/quilt"]),
    ("postgres://budget:s3cr3t-PW@db.internal/quilt", ["s3cr3t-PW"], ["budget:***@db.internal"]),
    # unencoded '/', '#', '@', '?', ':' in the password
    ("postgresql://u:a/b#c@d@host:5432/db", ["a/b", "b#c", "c@d", "#c"],
     ["postgresql://u:***@host:5432/db"]),
    ("postgresql://u:p?w:x@host/db", ["p?w", "w:x"], ["u:***@host/db"]),
    ("postgresql://u:p%40ss%2Fw0rd@host/db", ["p%40ss", "2Fw0rd"], ["u:***@host/db"]),
    ("postgresql://db.internal/quilt?sslmode=require&password=s3cr3t-PW", ["s3cr3t-PW"],
     ["sslmode=require", "password=***"]),
    ("postgresql://u@h/db?sslpassword=s3cr3t-PW&sslmode=verify-full", ["s3cr3t-PW"],
     ["sslpassword=***", "sslmode=verify-full", "u@h/db"]),
    ("postgresql://h/db?token=s3cr3t-PW&apikey=k3y-VALUE&key=k2&secret=s2&sig=s1",
     ["s3cr3t-PW", "k3y-VALUE", "=k2", "=s2", "=s1"], ["token=***", "apikey=***", "sig=***"]),
    ("postgresql://u:s3cr3t-PW@h1:5432,h2:5433/db?target_session_attrs=read-write",
     ["s3cr3t-PW"], ["u:***@h1:5432,h2:5433/db?target_session_attrs=read-write"]),
    ("host=h user=u password=s3cr3t-PW dbname=d", ["s3cr3t-PW"],
     ["host=h user=u password=*** dbname=d"]),
    ("host=h password = s3cr3t-PW port=5432", ["s3cr3t-PW"], ["host=h", "port=5432"]),
    ("host=h password='p w\\'s3cr3t' dbname=d", ["s3cr3t", "p w"], ["host=h", "dbname=d"]),
    ("host=h sslpassword=s3cr3t-PW sslmode=require", ["s3cr3t-PW"],
     ["sslpassword=***", "sslmode=require"]),
    ("host=h password=a\\ s3cr3t-PW user=u", ["s3cr3t-PW"], ["user=u"]),
    # unquoted with a blank: libpq refuses it, but the part after the blank is secret too
    ("host=h password=s3cr3t PWtail user=u", ["s3cr3t", "PWtail"], ["host=h", "user=u"]),
    ("host=h password = s3cr3t PWtail", ["s3cr3t", "PWtail"], ["host=h"]),
    ("dbname=d password=s3 cr3t-PW\tTAB port=5432", ["cr3t-PW", "TAB"], ["port=5432"]),
    (f"supabase key {JWT} rejected", [JWT[:20], JWT[-20:]], ["supabase key *** rejected"]),
    ("key sb_secret_AbC123-xyz_0 and sb_publishable_Pub-456", ["AbC123", "Pub-456"],
     ["key *** and ***"]),
    ("supabase://project?key=s3cr3t-PW", ["s3cr3t-PW"], ["supabase://project?key=***"]),
    ("https://hooks.slack.com/services/T0001/B0002/XXXXtokenXXXX",
     ["T0001", "B0002", "XXXXtokenXXXX", "/services"], ["https://hooks.slack.com/***"]),
    ("http://127.0.0.1:8080/hooks/T0KEN?x=1", ["T0KEN", "/hooks"], ["http://127.0.0.1:8080/***"]),
    ("https://u:s3cr3t-PW@api.example.com/", ["s3cr3t-PW"], ["api.example.com"]),
    ('{"password": "s3 cr3t", "user": "u"}', ["s3 cr3t"], ['"user": "u"']),
    ("{'service_key': 's3cr3t-PW'}", ["s3cr3t-PW"], ["service_key"]),
    ("Authorization: Bearer s3cr3t-PW-123", ["s3cr3t-PW-123"], ["Bearer ***"]),
    # mistyped URLs
    ("postgresql:/budget:s3cr3t-PW@db.internal/quilt", ["s3cr3t-PW"], ["db.internal"]),
    ("postgresql//budget:s3cr3t-PW@db.internal/quilt", ["s3cr3t-PW"], ["db.internal"]),
    ("budget:s3cr3t-PW@db.internal:5432/quilt", ["s3cr3t-PW"], ["budget:***@db.internal"]),
    # nothing to hide: shown intact
    ("sqlite:///otel_budget.db", [], ["sqlite:///otel_budget.db"]),
    ("sqlite:////var/lib/otel/budget.db", [], ["sqlite:////var/lib/otel/budget.db"]),
    ("memory://", [], ["memory://"]),
    ("postgresql://budget@db.internal:5432/quilt?sslmode=require", [],
     ["postgresql://budget@db.internal:5432/quilt?sslmode=require"]),
    ("at 10:30:00 mail bob@example.com", [], ["at 10:30:00 mail bob@example.com"]),
]


@pytest.mark.parametrize(("text", "secrets", "shown"), CASES, ids=[c[0][:40] for c in CASES])
def test_each_form_is_masked_alone_and_inside_a_message(
    text: str, secrets: list[str], shown: list[str]
) -> None:
    for candidate in (text, f"connect to {text} failed: timeout", f"error ({text!r}), retrying"):
        masked = redact_secrets(candidate)
        for secret in secrets:
            assert secret not in masked, (candidate, masked)
        for fragment in shown:
            assert fragment in masked, (candidate, masked)


@pytest.mark.parametrize(("text", "secrets", "shown"), CASES, ids=[c[0][:40] for c in CASES])
def test_redact_dsn_and_redact_url_mask_each_whole_form(
    text: str, secrets: list[str], shown: list[str]
) -> None:
    for masked in (redact_dsn(text), redact_url(text)):
        for secret in secrets:
            assert secret not in masked, masked
        for fragment in shown:
            assert fragment in masked, masked


def test_redact_dsn_takes_the_url_to_the_end_of_the_string() -> None:
    # A blank in a password: only a whole-DSN call can know where the URL ends.
    assert redact_dsn("postgresql://u:p w0rd@host/db") == "postgresql://u:***@host/db"


def test_sqlite_urls_are_shown_intact_by_redact_url() -> None:
    for url in ("sqlite:///x.db", "sqlite:////abs/x.db", "sqlite:///dir/with-dash_1.db"):
        assert redact_url(url) == url


def test_redaction_is_idempotent() -> None:
    for text, _, _ in CASES:
        once = redact_secrets(text)
        assert redact_secrets(once) == once


def test_a_dsn_inside_an_exception_text_is_scrubbed() -> None:
    dsn = "postgresql://budget:a/b#c@d@db.internal:5432/quilt"
    try:
        raise ConnectionError(f'connection to "{dsn}" failed: password=hunter2 rejected')
    except ConnectionError as exc:
        shown = describe_exception(exc)
    assert shown.startswith("ConnectionError: ")
    for secret in ("a/b#c@d", "hunter2"):
        assert secret not in shown
    assert "db.internal" in shown


def test_describe_exception_own_errors_keep_their_message_redacted_on_one_line() -> None:
    exc = StoreError("store postgresql://u:pw-1@h/db\nis down")
    assert describe_exception(exc) == "store postgresql://u:***@h/db is down"


def test_describe_exception_foreign_error_without_message() -> None:
    assert describe_exception(TimeoutError()) == "TimeoutError"


def test_describe_exception_survives_a_broken_str() -> None:
    class Weird(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert describe_exception(Weird()) == "Weird"


@pytest.mark.parametrize(("dsn", "password"), [
    ("host=h user=u password=s3cr3t dbname=d", "s3cr3t"),
    ("host=h password='p w\\'x' dbname=d", "p w'x"),
    ("postgresql://u:a%2Fb@h/db", "a%2Fb"),
    ("postgresql://u@h/db", None),
    ("host=h password=a b user=u", "a b"),
    ("host=h password=a\\ b", "a b"),
])
def test_password_of_every_dsn_form_and_scrub_known(dsn: str, password: str | None) -> None:
    from otel_budget.redact import password_of, scrub_known

    assert password_of(dsn) == password
    if password:
        from urllib.parse import unquote

        message = f"server said: auth failed for {unquote(password)!s} ({password})"
        scrubbed = scrub_known(message, password)
        assert unquote(password) not in scrubbed and password not in scrubbed


BAD_DSN = "host=127.0.0.1 port=1 user=u dbname=d password=s3cr3t PWtail"


def test_a_keyword_dsn_libpq_refuses_is_a_config_error_showing_no_part_of_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from otel_budget.errors import ConfigError
    from otel_budget.stores.postgres import PostgresStore

    with caplog.at_level("DEBUG"), pytest.raises(ConfigError) as caught:
        PostgresStore(BAD_DSN, pool_timeout_s=0.2)
    shown = str(caught.value) + caplog.text
    assert "s3cr3t" not in shown and "PWtail" not in shown
    assert "does not parse" in str(caught.value)


def test_the_migration_refuses_a_dsn_libpq_refuses_without_quoting_it() -> None:
    from otel_budget.stores.migrate import apply_migration

    with pytest.raises(StoreError) as caught:
        apply_migration(BAD_DSN)
    assert "s3cr3t" not in str(caught.value) and "PWtail" not in str(caught.value)


def test_a_quoted_keyword_dsn_never_shows_in_the_stores_repr_or_errors() -> None:
    from otel_budget.stores.postgres import PostgresStore

    dsn = "host=127.0.0.1 port=1 user=u dbname=d password='s3cr3t PWtail' connect_timeout=2"
    store = PostgresStore(dsn, pool_timeout_s=0.2)
    try:
        with pytest.raises(StoreError) as caught:
            store.day_totals(["2026-11-25"])
        for text in (repr(store), str(caught.value), store.spool_key):
            assert "s3cr3t" not in text and "PWtail" not in text, text
    finally:
        store.close()
