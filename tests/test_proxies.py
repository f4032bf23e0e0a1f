"""Proxy resolution for webhooks, pure: the URL forms, no_proxy matching, and the
credentials never shown."""

from __future__ import annotations

import base64

import pytest

from otel_budget import ConfigError
from otel_budget.proxies import ProxyRoute, bypasses_proxy, parse_proxy, proxy_for


def test_a_proxy_url_becomes_host_port_and_basic_credentials() -> None:
    route = parse_proxy("http://al%40ice:p%3Ass@proxy.corp:3128")
    assert (route.host, route.port) == ("proxy.corp", 3128)
    assert route.authorization == "Basic " + base64.b64encode(b"al@ice:p:ss").decode()
    assert "p:ss" not in repr(route) and "al" not in repr(route)
    assert repr(route) == "ProxyRoute('proxy.corp:3128')"


@pytest.mark.parametrize("url, host, port", [
    ("proxy.corp:8080", "proxy.corp", 8080),      # no scheme: http
    ("http://proxy.corp", "proxy.corp", 80),
    ("HTTP://[fd00::1]:3128/", "fd00::1", 3128),
])
def test_proxy_url_forms(url: str, host: str, port: int) -> None:
    route = parse_proxy(url)
    assert (route.host, route.port, route.authorization) == (host, port, None)


@pytest.mark.parametrize("url", ["", "   ", "http://", "http://user:secret@:99",
                                 "http://proxy:notaport"])
def test_malformed_proxy_urls_are_config_errors_without_the_url(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_proxy(url)
    assert "secret" not in str(caught.value)
    assert "notaport" not in str(caught.value)


@pytest.mark.parametrize("url", ["https://u:secret@proxy:443", "socks5://proxy:1080"])
def test_only_http_proxies_are_supported(url: str) -> None:
    with pytest.raises(ConfigError, match="only http:// proxies") as caught:
        parse_proxy(url)
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize("host, port, no_proxy, expected", [
    ("hooks.slack.com", 443, "*", True),
    ("hooks.slack.com", 443, "slack.com", True),
    ("hooks.slack.com", 443, ".slack.com", True),
    ("hooks.slack.com", 443, " other.org , SLACK.COM ", True),
    ("hooks.slack.com.", 443, "slack.com", True),
    ("notslack.com", 443, "slack.com", False),
    ("hooks.slack.com", 443, "slack.com:443", True),
    ("hooks.slack.com", 443, "slack.com:8443", False),
    ("10.1.2.3", 80, "10.0.0.0/8", True),
    ("10.1.2.3", 80, "10.1.2.3", True),
    ("11.1.2.3", 80, "10.0.0.0/8", False),
    ("::1", 80, "::1", True),
    ("::1", 8080, "[::1]:8080", True),
    ("::1", 8080, "[::1]:80", False),
    ("fd00::5", 80, "fd00::/16", True),
    ("hooks.slack.com", 443, "", False),
    ("hooks.slack.com", 443, ",,", False),
    ("hooks.slack.com", 443, "10.0.0.0/8, bad/cidr", False),
])
def test_no_proxy_matching(host: str, port: int, no_proxy: str, expected: bool) -> None:
    assert bypasses_proxy(host, port, no_proxy) is expected


def test_the_environment_chooses_by_scheme_and_no_proxy_exempts() -> None:
    env = {"https_proxy": "http://secure-proxy:3128", "HTTP_PROXY": "http://plain-proxy:8080",
           "NO_PROXY": "internal.corp"}
    secure = proxy_for("https", "hooks.slack.com", 443, proxy=None, trust_env=True, environ=env)
    assert secure == ProxyRoute("secure-proxy", 3128)
    plain = proxy_for("http", "hooks.example", 80, proxy=None, trust_env=True, environ=env)
    assert plain == ProxyRoute("plain-proxy", 8080)
    assert proxy_for("https", "chat.internal.corp", 443, proxy=None, trust_env=True,
                     environ=env) is None
    assert proxy_for("https", "hooks.slack.com", 443, proxy=None, trust_env=False,
                     environ=env) is None
    assert proxy_for("https", "hooks.slack.com", 443, proxy=None, trust_env=True,
                     environ={}) is None


def test_lower_case_variables_win_and_an_explicit_proxy_wins_over_all() -> None:
    env = {"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:2", "no_proxy": "*"}
    explicit = ProxyRoute("explicit", 3)
    assert proxy_for("https", "h", 443, proxy=explicit, trust_env=True, environ=env) is explicit
    env.pop("no_proxy")
    assert proxy_for("https", "h", 443, proxy=None, trust_env=True,
                     environ=env) == ProxyRoute("lower", 1)
