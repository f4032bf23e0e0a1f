"""PgBouncer in `pool_mode = transaction` in front of the test PostgreSQL (a pytest plugin).

Supabase's pooler (Supavisor) and most hosted PostgreSQL put a transaction pooler
between the app and the server: consecutive transactions of one client land on
different server connections, so a store must keep no session state (prepared
statements, SET outside a transaction). Running the store against Debian's
`pgbouncer` binary proves it does.

The binary runs as the `postgres` OS user when the tests run as root (PgBouncer
refuses root), on a free loopback port, with its ini, userlist, log and pid file in
a temporary directory. It is stopped in a finalizer, even when a test fails. When
the binary is missing the tests fail (never skip) and say how to install it.

Fixtures:
- `pgbouncer` (session): the running pooler (`.port`, `.url(dbname)`, `.log`).
- `pgbouncer_url` (function): the emptied `pg_url` database, reached through it.
- `pgbouncer_store_factory` (function): `() -> PostgresStore` through the pooler.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from otel_budget.stores.postgres import PostgresStore
from tests.support.pg_server import PgServer, free_port, store_factory

INSTALL_HINT = (
    "pgbouncer was not found on PATH or in /usr/sbin. The transaction-pooler tests "
    "need it: install it with `apt-get install pgbouncer` (Debian/Ubuntu) and run the "
    "tests again."
)

#: Server connections per database and user: PgBouncer's own default.
DEFAULT_POOL_SIZE = 20


def find_pgbouncer() -> str | None:
    found = shutil.which("pgbouncer")
    if found:
        return found
    for candidate in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer", "/usr/local/bin/pgbouncer"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


class PgBouncer:
    def __init__(self, binary: str, server_port: int, *, pool_size: int = DEFAULT_POOL_SIZE) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="otel-budget-pgbouncer-"))
        self.port = free_port()
        self.log = self.root / "pgbouncer.log"
        ini = self.root / "pgbouncer.ini"
        userlist = self.root / "userlist.txt"
        userlist.write_text('"postgres" ""\n')
        ini.write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={server_port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {userlist}\n"
            "pool_mode = transaction\n"
            "max_client_conn = 400\n"
            f"default_pool_size = {pool_size}\n"
            "server_reset_query =\n"
            f"logfile = {self.log}\n"
            f"pidfile = {self.root / 'pgbouncer.pid'}\n"
        )
        as_root = os.geteuid() == 0
        if as_root:  # pgbouncer refuses to run as root
            for path in (self.root, ini, userlist):
                shutil.chown(path, user="postgres", group="postgres")
        # stderr to a file, not a pipe: PgBouncer logs every login there too, and a
        # pipe nobody reads fills after ~64 KB (some 500 connections); PgBouncer then
        # blocks writing to it and stops answering (the 64-writer bench scenarios
        # that "timed out in the pooler").
        self._stderr_path = self.root / "stderr.log"
        self._stderr = open(self._stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [binary, str(ini)],
            user="postgres" if as_root else None,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            cwd=self.root,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self._stderr_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"pgbouncer exited with {self.process.returncode}: "
                                   f"{err.strip()}\n{self._log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=0.5
            ):
                return
            time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not listen on {self.port}\n{self._log_tail()}")

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._stderr.close()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pgbouncer(pg_server: PgServer) -> Iterator[PgBouncer]:
    binary = find_pgbouncer()
    if binary is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    bouncer = PgBouncer(binary, pg_server.port)
    try:
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture
def pgbouncer_url(pgbouncer: PgBouncer, pg_clean: str) -> str:
    """The emptied `pg_url` database, through the transaction pooler."""
    return pgbouncer.url(urlsplit(pg_clean).path.lstrip("/"))


@pytest.fixture
def pgbouncer_store_factory(pgbouncer_url: str) -> Iterator[Callable[..., PostgresStore]]:
    yield from store_factory(pgbouncer_url)
