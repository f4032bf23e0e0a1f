"""A real, throwaway PostgreSQL for the tests (a pytest plugin).

`initdb` + `pg_ctl` into a temporary directory, listening on a random free
loopback port, with fsync off. PostgreSQL refuses to run as root, so under root
the binaries run as the `postgres` OS user through `runuser`. The binaries are
found on PATH, through `pg_config --bindir`, or in /usr/lib/postgresql/*/bin;
when none is there the tests fail (they are never skipped) and say how to install
them.

Fixtures:
- `pg_server` (session): the running server; `.stop()` / `.start()` for outages.
- `pg_url` (session): a database with the otel_budget migration applied, on a
  cluster with Supabase's roles `anon`, `authenticated` and `service_role`.
- `pg_clean` (function): `pg_url` with `quilt_patches` emptied first.
- `pg_fresh_database` (function): a factory making a new, empty database (no
  migration) and returning its URL.
- `private_pg_server` (function): a second server of the test's own, for tests
  that stop it (the outage test), so no other test ever sees it down.
- `postgres_store_factory` (function): `() -> PostgresStore` on the emptied
  `pg_url` database, each call a new store (its own pool); all closed afterwards.
  This is the "postgresql" entry of tests/support/store_kinds.py.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from otel_budget.stores.migrate import apply_migration
from otel_budget.stores.postgres import PostgresStore

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) were not found on PATH, via "
    "`pg_config --bindir`, or in /usr/lib/postgresql/*/bin. The PostgreSQL and Supabase "
    "store tests need a real server: install it with `apt-get install postgresql` "
    "(Debian/Ubuntu) and run the tests again."
)

# The roles as Supabase's bootstrap creates them
# (supabase/postgres migrations/db/init-scripts/00000000000000-initial-schema.sql).
SUPABASE_ROLES_SQL = """
do $roles$
begin
    if not exists (select 1 from pg_roles where rolname = 'anon') then
        create role anon nologin noinherit;
    end if;
    if not exists (select 1 from pg_roles where rolname = 'authenticated') then
        create role authenticated nologin noinherit;
    end if;
    if not exists (select 1 from pg_roles where rolname = 'service_role') then
        create role service_role nologin noinherit bypassrls;
    end if;
end
$roles$;
"""

# Supabase grants everything in `public` to these roles by default; the migration
# must take it back. Reproducing the default makes the tests prove it does.
SUPABASE_DEFAULTS_SQL = """
grant usage on schema public to anon, authenticated, service_role;
alter default privileges in schema public
    grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public
    grant all on functions to anon, authenticated, service_role;
alter default privileges in schema public
    grant all on sequences to anon, authenticated, service_role;
"""

_SERVER_SETTINGS = (
    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
    "-c max_connections=120 -c shared_buffers=32MB"
)


def find_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl, or None."""
    candidates: list[Path] = []
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                candidates.append(Path(out))
    versioned = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parent.name.split(".")],
        reverse=True,
    )
    candidates.extend(Path(p) for p in versioned)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PgServer:
    """One PostgreSQL cluster in a temporary directory, owned by this process."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="otel-budget-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.running = False
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            # initdb and pg_ctl refuse to run as root.
            shutil.chown(self.root, user="postgres", group="postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--no-sync", "--no-instructions")

    def _run(self, tool: str, *args: str, timeout: float = 60.0) -> None:
        cmd = [str(self.bindir / tool), *args]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                cwd=self.root, check=False)
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{tool} failed ({result.returncode}): {result.stderr.strip()}\n{log}"
            )

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} {_SERVER_SETTINGS}"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "-o", options, "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; `fast` disconnects clients, as a restart or failover does."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        self.running = False

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def server_pids(self) -> list[int]:
        """The postmaster and every backend/auxiliary process it forked."""
        lines = (self.data / "postmaster.pid").read_text().splitlines()
        postmaster = int(lines[0])
        children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True,
                                  text=True, check=False).stdout.split()
        return [postmaster, *(int(pid) for pid in children)]

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """A hung server: every server process SIGSTOPped (the kernel still accepts
        connections and acknowledges data; nothing answers). Always resumed on exit,
        even when the test fails."""
        stopped: list[int] = []
        try:
            # The postmaster first, then its children until no new one shows: a
            # backend it forked between listing and stopping (a pool connecting in
            # the background) would otherwise go on answering.
            tried: set[int] = set()
            while pids := [p for p in self.server_pids() if p not in tried]:
                for pid in pids:
                    tried.add(pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGSTOP)
                        stopped.append(pid)
            yield
        finally:
            for pid in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def admin(self, sql: str, dbname: str = "postgres") -> None:
        with psycopg.connect(self.url(dbname), autocommit=True) as conn:
            conn.execute(sql.encode())

    def create_database(self, name: str, *, migrate: bool) -> str:
        self.admin(f'create database "{name}"')
        url = self.url(name)
        if migrate:
            self.admin(SUPABASE_DEFAULTS_SQL, dbname=name)
            apply_migration(url)
        return url

    def destroy(self) -> None:
        if self.running:
            with contextlib.suppress(Exception):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def _bindir_or_fail() -> Path:
    bindir = find_bindir()
    if bindir is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return bindir


def start_server(*, supabase_roles: bool = True) -> PgServer:
    server = PgServer(_bindir_or_fail())
    try:
        server.start()
        if supabase_roles:
            server.admin(SUPABASE_ROLES_SQL)
    except BaseException:
        server.destroy()
        raise
    return server


_db_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = start_server()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def pg_url(pg_server: PgServer) -> str:
    if not pg_server.running:  # a test that stopped it left it down
        pg_server.start()
    return pg_server.create_database("otel_budget_test", migrate=True)


def truncate(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("truncate public.quilt_patches restart identity")


@pytest.fixture
def pg_clean(pg_server: PgServer, pg_url: str) -> str:
    """`pg_url` with quilt_patches emptied, for tests that count rows."""
    if not pg_server.running:
        pg_server.start()
    truncate(pg_url)
    return pg_url


@pytest.fixture
def pg_fresh_database(pg_server: PgServer) -> Iterator[Callable[..., str]]:
    created: list[str] = []

    def make(*, migrate: bool = False) -> str:
        name = f"otel_budget_{os.getpid()}_{next(_db_counter)}"
        created.append(name)
        return pg_server.create_database(name, migrate=migrate)

    yield make
    for name in created:
        with contextlib.suppress(psycopg.Error):
            pg_server.admin(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def private_pg_server() -> Iterator[PgServer]:
    server = start_server()
    try:
        yield server
    finally:
        server.destroy()


def store_factory(url: str) -> Iterator[Callable[..., PostgresStore]]:
    """A fixture's body: PostgresStore(url, **kwargs) on demand, each closed after."""
    opened: list[PostgresStore] = []

    def make(**kwargs: object) -> PostgresStore:
        store = PostgresStore(url, **kwargs)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def postgres_store_factory(pg_clean: str) -> Iterator[Callable[..., PostgresStore]]:
    yield from store_factory(pg_clean)


