"""Webhooks through a real HTTP proxy on loopback: CONNECT tunnels to a real TLS
server (certificate checked end to end), absolute-form requests for plain HTTP,
proxy credentials, 407 answers, no_proxy, and the call's one deadline."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import ipaddress
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from otel_budget import ConfigError, NotifyError
from otel_budget.notify import SlackNotifier, WebhookNotifier

TOKEN = "T0KEN-SECRET-123"
PROXY_PASSWORD = "pr0xy-pa55"
HOOK_HOST = "hooks.test"  # resolvable only through the proxy
NUDGE = {"to": "ag_lu", "kind": "budget_alert", "date": "2026-11-25", "ratio": 0.8,
         "daily_spend_usd": 40.1, "daily_cap_usd": 50.0}


# --- a TLS webhook server with its own CA -----------------------------------------------

def _certificate(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for hooks.test and 127.0.0.1: (cert, key) files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOOK_HOST)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName(HOOK_HOST), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "hook.pem", tmp / "hook.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_file, key_file


class _HookHandler(BaseHTTPRequestHandler):
    server: _Hook

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.received.append({"path": self.path, "headers": dict(self.headers),
                                     "body": body})
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Hook(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _HookHandler)
        self.received: list[dict[str, Any]] = []


@pytest.fixture
def tls_hook(tmp_path: Path) -> Iterator[tuple[_Hook, ssl.SSLContext]]:
    cert, key = _certificate(tmp_path)
    server = _Hook()
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client_context = ssl.create_default_context(cafile=str(cert))
    try:
        yield server, client_context
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def plain_hook() -> Iterator[_Hook]:
    server = _Hook()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# --- a forward proxy ------------------------------------------------------------------------

class Proxy:
    """CONNECT tunnels (hooks.test resolves to 127.0.0.1 here) and absolute-form
    requests, which it answers itself. Records every request head."""

    def __init__(self, *, password: str | None = PROXY_PASSWORD, answer: bool = True) -> None:
        self.password = password
        self.answer = answer
        self.heads: list[tuple[str, dict[str, str]]] = []
        self.bodies: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    @property
    def url(self) -> str:
        credentials = f"alice:{self.password}@" if self.password else ""
        return f"http://{credentials}127.0.0.1:{self.port}"

    def _serve(self) -> None:
        self._listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._sockets.append(client)
            thread = threading.Thread(target=self._handle, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _handle(self, client: socket.socket) -> None:
        try:
            client.settimeout(10)
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                byte = client.recv(1)
                if not byte:
                    return
                head += byte
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            headers = dict(line.split(": ", 1) for line in header_lines if ": " in line)
            self.heads.append((request_line, headers))
            if not self.answer:
                self._stop.wait(10)
                return
            expected = "Basic " + base64.b64encode(f"alice:{self.password}".encode()).decode()
            if self.password and headers.get("Proxy-Authorization") != expected:
                client.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                               b"Proxy-Authenticate: Basic realm=\"p\"\r\n"
                               b"Content-Length: 0\r\n\r\n")
                return
            method, target, _ = request_line.split(" ")
            if method == "CONNECT":
                host, port = target.rsplit(":", 1)
                upstream = socket.create_connection(
                    ("127.0.0.1" if host == HOOK_HOST else host, int(port)), timeout=10)
                self._sockets.append(upstream)
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                self._pipe(client, upstream)
            else:
                length = int(headers.get("Content-Length", "0"))
                body = b""
                while len(body) < length:
                    body += client.recv(length - len(body))
                self.bodies.append(body)
                client.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except OSError:
            pass
        finally:
            client.close()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        def copy(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)

        other = threading.Thread(target=copy, args=(b, a), daemon=True)
        other.start()
        copy(a, b)
        other.join(10)
        b.close()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()
        self._accept.join(5)
        for thread in self._threads:
            thread.join(5)


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    p = Proxy()
    try:
        yield p
    finally:
        p.close()


def assert_clean(text: str) -> None:
    assert TOKEN not in text
    assert PROXY_PASSWORD not in text
    assert base64.b64encode(f"alice:{PROXY_PASSWORD}".encode()).decode() not in text


# --- tests ----------------------------------------------------------------------------------

def test_https_goes_through_connect_from_https_proxy_and_stays_tls_end_to_end(
    tls_hook: tuple[_Hook, ssl.SSLContext], proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook, context = tls_hook
    port = hook.server_address[1]
    monkeypatch.setenv("https_proxy", proxy.url)
    notifier = WebhookNotifier(f"https://{HOOK_HOST}:{port}/hooks/{TOKEN}", ssl_context=context)
    notifier(dict(NUDGE))
    assert [json.loads(r["body"]) for r in hook.received] == [NUDGE]
    assert hook.received[0]["path"] == f"/hooks/{TOKEN}"
    assert hook.received[0]["headers"]["Host"] == f"{HOOK_HOST}:{port}"
    assert "Proxy-Authorization" not in hook.received[0]["headers"], "not sent past the proxy"
    [(line, headers)] = proxy.heads
    assert line == f"CONNECT {HOOK_HOST}:{port} HTTP/1.1"
    assert headers["Proxy-Authorization"] == "Basic " + base64.b64encode(
        f"alice:{PROXY_PASSWORD}".encode()).decode()
    assert_clean(repr(notifier))


def test_the_target_certificate_is_checked_through_the_tunnel(
    tls_hook: tuple[_Hook, ssl.SSLContext], proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook, _ = tls_hook
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    notifier = WebhookNotifier(f"https://{HOOK_HOST}:{hook.server_address[1]}/hooks/{TOKEN}")
    with pytest.raises(NotifyError, match="SSLCertVerificationError") as caught:
        notifier(dict(NUDGE))  # default CAs do not know the test certificate
    assert hook.received == []
    assert f"via proxy 127.0.0.1:{proxy.port}" in str(caught.value)
    assert_clean(str(caught.value))


def test_plain_http_goes_to_the_proxy_in_absolute_form_with_credentials(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", proxy.url)
    SlackNotifier(f"http://{HOOK_HOST}:8080/services/{TOKEN}")(dict(NUDGE))
    [(line, headers)] = proxy.heads
    assert line == f"POST http://{HOOK_HOST}:8080/services/{TOKEN} HTTP/1.1"
    assert headers["Host"] == f"{HOOK_HOST}:8080"
    assert headers["Proxy-Authorization"].startswith("Basic ")
    assert "budget" in json.loads(proxy.bodies[0])["text"]


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_a_proxy_refusing_credentials_is_a_clean_notify_error(
    scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    strict = Proxy(password="the-right-one")
    try:
        wrong_url = f"http://alice:{PROXY_PASSWORD}@127.0.0.1:{strict.port}"
        notifier = WebhookNotifier(f"{scheme}://{HOOK_HOST}/hooks/{TOKEN}", proxy=wrong_url)
        with pytest.raises(NotifyError, match="407") as caught:
            notifier(dict(NUDGE))
        assert f"proxy 127.0.0.1:{strict.port}" in str(caught.value)
        assert_clean(str(caught.value))
        assert_clean(repr(caught.value.__cause__))
    finally:
        strict.close()


def test_no_proxy_sends_the_call_direct(plain_hook: _Hook,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    dead = socket.create_server(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nothing listens there: a call through it would fail
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{dead_port}")
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.0/8")
    WebhookNotifier(f"http://127.0.0.1:{plain_hook.server_address[1]}/h/{TOKEN}")(dict(NUDGE))
    assert [r["path"] for r in plain_hook.received] == [f"/h/{TOKEN}"]


def test_trust_env_false_ignores_the_variables_and_an_explicit_proxy_is_used(
    plain_hook: _Hook, proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # discard port: would fail
    url = f"http://127.0.0.1:{plain_hook.server_address[1]}/h/{TOKEN}"
    WebhookNotifier(url, trust_env=False)(dict(NUDGE))
    assert len(plain_hook.received) == 1
    WebhookNotifier(url, trust_env=False, proxy=proxy.url)(dict(NUDGE))
    assert len(plain_hook.received) == 1, "the explicit proxy answered, not the hook"
    assert [line for line, _ in proxy.heads] == [f"POST {url} HTTP/1.1"]


def test_a_proxy_that_never_answers_connect_is_cut_off_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    silent = Proxy(answer=False)
    try:
        notifier = WebhookNotifier(f"https://{HOOK_HOST}/hooks/{TOKEN}", timeout_s=0.5,
                                   proxy=silent.url)
        with pytest.raises(NotifyError, match=r"timeout after 0\.5 s") as caught:
            notifier(dict(NUDGE))
        assert "via proxy" in str(caught.value)
        assert len(silent.heads) == 1
        assert_clean(str(caught.value))
    finally:
        silent.close()


@pytest.mark.parametrize("scheme", ["ftp", "gopher"])
def test_a_malformed_proxy_variable_is_a_notify_error_without_its_text(
    scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("https_proxy", f"{scheme}://alice:{PROXY_PASSWORD}@proxy:443")
    with pytest.raises(NotifyError, match="proxy setting is malformed") as caught:
        WebhookNotifier(f"https://{HOOK_HOST}/hooks/{TOKEN}")(dict(NUDGE))
    assert_clean(str(caught.value))
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_verify_takes_a_ca_bundle_path_for_a_private_ca(
    tls_hook: tuple[_Hook, ssl.SSLContext], proxy: Proxy, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    hook, _ = tls_hook
    [bundle] = [p for p in tmp_path.iterdir() if p.suffix in (".pem", ".crt")
                and "key" not in p.name]
    monkeypatch.setenv("https_proxy", proxy.url)
    url = f"https://{HOOK_HOST}:{hook.server_address[1]}/hooks/{TOKEN}"
    WebhookNotifier(url, verify=str(bundle))(dict(NUDGE))
    assert [json.loads(r["body"]) for r in hook.received] == [NUDGE]
    with pytest.raises(NotifyError, match="SSLCertVerificationError"):
        WebhookNotifier(url)(dict(NUDGE))  # the default CAs do not know it
    assert len(hook.received) == 1


@pytest.mark.parametrize("verify", [str(Path("/nonexistent/ca.pem")), 3])
def test_a_bad_verify_is_a_config_error(verify: object) -> None:
    with pytest.raises(ConfigError, match="verify"):
        WebhookNotifier(f"https://{HOOK_HOST}/hooks/{TOKEN}", verify=verify)  # type: ignore[arg-type]
