"""Masking secrets in text bound for logs, reprs, error messages and health documents.

`redact_secrets(text)` scrubs every connection-string form psycopg/libpq accepts,
wherever it sits inside a longer message, plus API keys and webhook URLs:

- URLs `scheme://user:password@host...`: the password (everything between the first
  ``:`` of the user info and the *last* ``@`` of the URL, so unencoded ``/ # @ ? :``
  in a password are covered) becomes ``***``; multi-host URLs
  (``@h1:5432,h2:5433/db``) keep their hosts;
- query parameters whose name mentions a password, token, key, secret or signature
  (``?password=``, ``&sslpassword=``, ``token=``, ``apikey=``, ``key=``, ``sig=``...);
- http(s)/ws(s) URLs (webhooks: their path carries the token, as in
  ``https://hooks.slack.com/services/T../B../token``) show only
  ``scheme://host[:port]/***``;
- keyword/value DSNs ``host=h user=u password=secret`` (also ``password = 'p w\\'x'``,
  ``sslpassword=``), and the same names in JSON / dict reprs
  (``"password": "..."``);
- Supabase / JWT keys (``eyJ...``), ``sb_secret_...`` / ``sb_publishable_...``,
  ``Bearer``/``Basic`` credentials, ``sk-...`` and Slack ``xox?-...`` tokens;
- malformed URLs (``postgresql:/user:pw@host``, ``user:pw@host:5432/db``): any
  ``name:secret@host`` shape.

It errs on the side of masking too much: a host or path that merely looks like part
of a secret can be hidden too; a secret is never shown on purpose. `sqlite:///x.db`,
`memory://` and other URLs without credentials are left as they are.
"""

from __future__ import annotations

import re

__all__ = ["MASK", "describe_exception", "redact_dsn", "redact_secrets"]

MASK = "***"

# Parameter / field names whose value is a secret.
_SECRET_NAME = (
    r"[A-Za-z0-9_.-]*?(?:password|passwd|passphrase|pwd|token|secret|api[_-]?key|key|sig"
    r"|signature|credential|auth)[A-Za-z0-9_.-]*"
)
_HIDE_WHOLE_USERINFO = frozenset({"http", "https", "ws", "wss", "ftp", "ftps", "supabase"})
_HOST_ONLY_SCHEMES = frozenset({"http", "https", "ws", "wss"})
_PG_SCHEMES = frozenset({"postgresql", "postgres"})

_URL = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*)://([^\s]*)")
# Characters that usually close the text around a URL (quotes, brackets, punctuation)
# rather than belong to it: kept outside what is rewritten.
_TRAILING = "'\"()[]{}<>,;."
_QUERY_SECRET = re.compile(rf"(?i)([?&;]{_SECRET_NAME}=)[^&;\s#]*")
# key=value (libpq keyword/value DSNs, log lines). Not preceded by ?/& (URL queries are
# handled above) nor by a word character (so "monkey=" is one name, matched whole).
_KV_SECRET = re.compile(
    rf"""(?ix)(?<![?&;\w.-])({_SECRET_NAME})(\s*=\s*)
        ( '(?:[^'\\]|\\.)*(?:'|$)\S*      # quoted, with \' escapes (libpq)
        | "(?:[^"\\]|\\.)*(?:"|$)\S*
        | (?:\\+.|[^\s\\])+               # unquoted: to the next unescaped blank,
          (?:[\ \t]+(?![A-Za-z_][\w.-]*[\ \t]*=)(?:\\+.|[^\s\\])+)*
                                          # and on over blanks until the next key=
                                          # ("password=a b": libpq refuses it, but the
                                          # "b" is the password's too)
        )"""
)
# "password": "...", 'token': '...' (JSON, dict reprs).
_QUOTED_FIELD = re.compile(
    rf"""(?ix)(["'])({_SECRET_NAME})\1(\s*:\s*)
        (?:"(?:[^"\\]|\\.)*(?:"|$)|'(?:[^'\\]|\\.)*(?:'|$)|[^\s,}}\]]+)"""
)
_TOKENS = [
    # JWTs (Supabase anon / service_role keys): header.payload.signature
    re.compile(r"\beyJ[A-Za-z0-9_-]{5,}(?:\.[A-Za-z0-9_-]*){0,2}"),
    re.compile(r"\bsb_(?:secret|publishable)_[A-Za-z0-9_-]+"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{12,}"),
    re.compile(r"\bxox[abeoprs]-[A-Za-z0-9-]+"),
]
_AUTH_HEADER = re.compile(r"(?i)\b(Bearer|Basic|Token)\s+[A-Za-z0-9._~+/=-]{6,}")
# user:secret@host with no "://" before it (a mistyped URL, "user:pw@host/db").
_BARE_USERINFO = re.compile(r"(?<![\w.%+-])(?<!://)([A-Za-z0-9._%+-]+):(?!//)(\S+)@(?=[A-Za-z0-9\[])")


def _redact_url(scheme: str, rest: str) -> str:
    """`rest` is what follows "scheme://" (no blanks)."""
    lower = scheme.lower()
    authority_and_more = rest
    userinfo = ""
    first = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if not rest.startswith("/") and ("@" in first or ":" in first) and "@" in rest:
        # The password may hold unencoded '/', '#', '?', ':' or '@': the user info runs
        # to the last '@' of the URL (libpq and urllib would both stop earlier).
        cut = rest.rfind("@")
        raw_userinfo, authority_and_more = rest[:cut], rest[cut + 1 :]
        user, has_password, _ = raw_userinfo.partition(":")
        if has_password:
            userinfo = f"{user}:{MASK}@" if lower not in _HIDE_WHOLE_USERINFO else f"{MASK}@"
        elif lower in _HIDE_WHOLE_USERINFO:
            userinfo = f"{MASK}@"  # https://TOKEN@host: a token in the user slot
        else:
            userinfo = f"{user}@"
    if lower in _HOST_ONLY_SCHEMES:
        host = re.split(r"[/?#]", authority_and_more, maxsplit=1)[0]
        tail = authority_and_more[len(host) :]
        return f"{scheme}://{userinfo}{host}" + (f"/{MASK}" if tail not in ("", "/") else tail)
    return f"{scheme}://{userinfo}" + _QUERY_SECRET.sub(rf"\1{MASK}", authority_and_more)


def _url_sub(match: re.Match[str]) -> str:
    scheme, rest = match.group(1), match.group(2)
    stripped = rest.rstrip(_TRAILING)
    trailer = rest[len(stripped) :]
    return _redact_url(scheme, stripped) + trailer


def _kv_sub(match: re.Match[str]) -> str:
    return f"{match.group(1)}{match.group(2)}{MASK}"


def _quoted_field_sub(match: re.Match[str]) -> str:
    quote = match.group(1)
    return f"{quote}{match.group(2)}{quote}{match.group(3)}{quote}{MASK}{quote}"


def _common(text: str) -> str:
    text = _KV_SECRET.sub(_kv_sub, text)
    text = _QUOTED_FIELD.sub(_quoted_field_sub, text)
    for pattern in _TOKENS:
        text = pattern.sub(MASK, text)
    text = _AUTH_HEADER.sub(rf"\1 {MASK}", text)
    return _BARE_USERINFO.sub(rf"\1:{MASK}@", text)


def redact_secrets(text: str) -> str:
    """`text` with every password, token, key and webhook path it contains masked."""
    if not isinstance(text, str):
        text = str(text)
    return _common(_URL.sub(_url_sub, text))


def redact_dsn(dsn: str) -> str:
    """A whole connection string (URL or keyword/value form), masked for display.

    Unlike `redact_secrets`, a URL is taken to run to the end of the string, so a
    password holding blanks or quotes is masked too."""
    if not isinstance(dsn, str):
        dsn = str(dsn)
    match = re.match(r"(?i)\s*([a-z][a-z0-9+.-]*)://", dsn)
    if match is None:
        return redact_secrets(dsn)
    scheme, rest = match.group(1), dsn[match.end() :]
    return _common(_redact_url(scheme, rest))


def describe_exception(exc: BaseException) -> str:
    """A one-line description of `exc` that is safe to log or show.

    otel_budget's own errors (whose messages are written to be shown) give their
    message; any other exception gives its type name and message. Either way the text
    goes through `redact_secrets` and is folded onto one line."""
    from .errors import BudgetError

    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not break the error path
        message = ""
    message = " ".join(message.split())
    if isinstance(exc, BudgetError):
        text = message or type(exc).__name__
    else:
        text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return redact_secrets(text)


def scrub_known(text: str, *secrets: str | None) -> str:
    """`text` with each known secret (and its percent-decoded form) masked, then
    `redact_secrets`: a driver message may quote a password in a form no pattern
    recognises (a keyword DSN's value, a bare key)."""
    from urllib.parse import unquote

    for secret in secrets:
        if secret:
            for form in {secret, unquote(secret)}:
                text = text.replace(form, MASK)
    return redact_secrets(text)


def password_of(dsn: str) -> str | None:
    """The password of a libpq URL or keyword/value DSN, or None."""
    from urllib.parse import urlsplit

    if "://" in dsn:
        try:
            return urlsplit(dsn).password
        except ValueError:
            return None
    match = re.search(
        r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|(?:\\.|[^\s\\])+"
        r"(?:[ \t]+(?![A-Za-z_][\w.-]*[ \t]*=)(?:\\.|[^\s\\])+)*)", dsn)
    if match is None:
        return None
    value = match.group(1)
    if value.startswith("'"):
        value = value[1:-1]
    return re.sub(r"\\(.)", r"\1", value) or None

