"""Which HTTP proxy a webhook call goes through: the one passed, or the standard
environment variables (``https_proxy``/``http_proxy`` and ``no_proxy``, read as curl
and requests read them). Pure: no sockets here, so it is tested without a network.

A proxy URL may carry credentials: they live only in the Proxy-Authorization value,
never in a repr or a message.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from .errors import ConfigError

_MALFORMED = "webhook proxy must look like http://[user:password@]host[:port]"


@dataclass(frozen=True)
class ProxyRoute:
    host: str
    port: int
    #: The Proxy-Authorization header value ("Basic ..."), or None. A secret.
    authorization: str | None = field(default=None, repr=False)

    @property
    def where(self) -> str:
        """``host:port``, safe to show."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __repr__(self) -> str:
        return f"ProxyRoute({self.where!r})"


def parse_proxy(url: str) -> ProxyRoute:
    """A proxy URL (``http://user:pw@host:3128``; no scheme means http) as a route.
    ConfigError, without the URL, when it is not one: only http:// proxies are
    supported (an HTTPS target is still TLS end to end, through CONNECT)."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(_MALFORMED)
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ConfigError(_MALFORMED) from None
    if parts.scheme.lower() != "http":
        raise ConfigError(
            f"webhook proxy: only http:// proxies are supported, got {parts.scheme}://")
    if not parts.hostname:
        raise ConfigError(_MALFORMED)
    authorization = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(credentials.encode()).decode("ascii")
    return ProxyRoute(parts.hostname, port or 80, authorization)


def _env(environ: Mapping[str, str], name: str) -> str:
    # Lower case first, as curl does; upper case HTTP_PROXY is honoured too (we are
    # never a CGI script, where a client could set it through a Proxy header).
    return environ.get(name) or environ.get(name.upper()) or ""


def bypasses_proxy(host: str, port: int, no_proxy: str) -> bool:
    """Whether `no_proxy` (comma-separated: ``*``, host names matching themselves and
    their subdomains, with or without a leading dot, optional ``:port``, IP
    addresses and CIDR blocks) exempts `host`:`port`."""
    host = host.strip("[]").rstrip(".").lower()
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = (
            ipaddress.ip_address(host))
    except ValueError:
        address = None
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        if "/" in entry:
            try:
                if address is not None and address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name, entry_port = entry, None
        if entry.startswith("["):  # [v6]:port
            name, _, rest = entry[1:].partition("]")
            entry_port = rest[1:] if rest.startswith(":") else None
        elif entry.count(":") == 1:
            name, entry_port = entry.split(":")
        if entry_port is not None and entry_port != str(port):
            continue
        name = name.lstrip(".").rstrip(".")
        if not name:
            continue
        if address is not None:
            try:
                if ipaddress.ip_address(name) == address:
                    return True
            except ValueError:
                pass
            continue
        if host == name or host.endswith("." + name):
            return True
    return False


def proxy_for(
    scheme: str, host: str, port: int, *, proxy: ProxyRoute | None, trust_env: bool,
    environ: Mapping[str, str] | None = None,
) -> ProxyRoute | None:
    """The route for a call to `scheme`://`host`:`port`: `proxy` if one was passed,
    else (with `trust_env`) the environment's proxy for the scheme unless
    ``no_proxy`` exempts the host, else None (direct)."""
    if proxy is not None:
        return proxy
    if not trust_env:
        return None
    env = os.environ if environ is None else environ
    url = _env(env, f"{scheme}_proxy")
    if not url or bypasses_proxy(host, port, _env(env, "no_proxy")):
        return None
    return parse_proxy(url)
