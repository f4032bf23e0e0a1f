"""pytest plugin: a real Prometheus server (Debian's `prometheus` package) for
end-to-end tests, on a free loopback port with its own config and storage.

Fixtures:
  promtool_bin        path of `promtool`
  prometheus_bin      path of `prometheus`
  start_prometheus    factory: start_prometheus(targets, job="otel-budget", ...) -> PromServer

Missing binaries fail the test with a clear message (never a skip): `.ci/run`
installs the package, so their absence is a broken environment, not an option.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

_SEARCH_DIRS = ("/usr/bin", "/usr/local/bin", "/usr/sbin")


def find_binary(name: str) -> str:
    """The path of a Prometheus binary, or fail the test saying how to get it."""
    found = shutil.which(name)
    if found:
        return found
    for directory in _SEARCH_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.fail(
        f"`{name}` not found on PATH or in {', '.join(_SEARCH_DIRS)}; "
        "install Debian's Prometheus: apt-get install -y prometheus",
        pytrace=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PromQueryError(AssertionError):
    pass


@dataclass
class PromServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    job: str
    config_path: Path
    _closed: bool = field(default=False, repr=False)

    def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/<path>; return `data`, raising PromQueryError on an API error."""
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                payload = json.load(resp)
        except urllib.error.HTTPError as err:
            # Prometheus answers 400/422 with a JSON body naming the problem.
            payload = json.loads(err.read() or b"{}")
        if payload.get("status") != "success":
            raise PromQueryError(
                f"{path} {params}: {payload.get('errorType')}: {payload.get('error')}"
            )
        return payload["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query; the result list (vector), or a one-item list for a scalar."""
        data = self.api("query", query=expr, time=at)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        data = self.api("query_range", query=expr, start=start, end=end, step=step)
        result: list[dict[str, Any]] = data["result"]
        return result

    def values(
        self, expr: str, at: float | None = None
    ) -> dict[tuple[tuple[str, str], ...], float]:
        """Instant query as {sorted label items: float value}."""
        return {
            tuple(sorted(item["metric"].items())): float(item["value"][1])
            for item in self.query(expr, at)
        }

    def wait_for(
        self,
        expr: str,
        predicate: Callable[[list[dict[str, Any]]], bool] = bool,
        timeout: float = 20.0,
    ) -> list[dict[str, Any]]:
        """Poll an instant query until predicate(result) holds; fail with the last result."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while True:
            self.check_alive()
            result = self.query(expr)
            if predicate(result):
                return result
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {expr!r}; last result {result!r}"
                )
            time.sleep(0.25)

    def wait_for_scrapes(self, n: int = 2, timeout: float = 20.0, job: str | None = None) -> None:
        """Wait until every target of `job` (default: the first job) has been scraped
        successfully at least n times, the last one included."""
        job = job or self.job
        self.wait_for(
            f'sum_over_time(up{{job="{job}"}}[1h]) >= {n} and up{{job="{job}"}} == 1',
            timeout=timeout,
        )

    def scrapes(self, job: str | None = None) -> int:
        """How many successful scrapes of `job`'s (single) target Prometheus has stored."""
        result = self.query(f'sum_over_time(up{{job="{job or self.job}"}}[1h])')
        return int(float(result[0]["value"][1])) if result else 0

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return active

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(
                f"prometheus exited with {self.process.returncode}:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"

    def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _write_config(
    path: Path,
    jobs: Mapping[str, Sequence[str]],
    honor_labels: bool,
    rule_files: Sequence[Path],
    interval: str,
) -> None:
    # JSON is valid YAML, so no YAML library is needed to write the config.
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval,
                   "scrape_timeout": interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": job,
                "honor_labels": honor_labels,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": list(targets)}],
            }
            for job, targets in jobs.items()
        ],
    }
    path.write_text(json.dumps(config, indent=2))


def launch_prometheus(
    binary: str,
    workdir: Path,
    jobs: Mapping[str, Sequence[str]],
    *,
    honor_labels: bool = False,
    rule_files: Sequence[Path] = (),
    interval: str = "1s",
    startup_timeout: float = 30.0,
) -> PromServer:
    """Start Prometheus scraping {job: ["host:port", ...]}; the caller stops it.
    Note: Prometheus 2.x sends discovered targets to the scraper at most every 5 s,
    so the first scrape comes about 5-6 s after start, whatever the interval."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    _write_config(config_path, jobs, honor_labels, rule_files, interval)
    log_path = workdir / "prometheus.log"
    # The port is free when chosen but could be taken before Prometheus binds it;
    # a few attempts make that race harmless.
    for _attempt in range(3):
        port = free_port()
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--web.enable-lifecycle",
                    "--storage.tsdb.retention.time=1d",
                    "--log.level=warn",
                ],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=workdir,
            )
        server = PromServer(f"http://127.0.0.1:{port}", process, log_path, next(iter(jobs)),
                            config_path)
        if _wait_ready(server, startup_timeout):
            return server
        server.stop()
        if "address already in use" not in server.log_tail().lower():
            break
    pytest.fail(f"prometheus did not become ready:\n{server.log_tail()}", pytrace=False)


def _wait_ready(server: PromServer, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(server.url + "/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return find_binary("prometheus")


@pytest.fixture(scope="session")
def promtool_bin() -> str:
    return find_binary("promtool")


StartPrometheus = Callable[..., PromServer]


@pytest.fixture
def start_prometheus(
    prometheus_bin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartPrometheus]:
    """start_prometheus(targets, job="otel-budget", honor_labels=False, rule_files=(),
    interval="1s") starts a Prometheus scraping `targets` ("host:port") every
    `interval`; it is stopped when the test ends."""
    servers: list[PromServer] = []

    def start(
        targets: Sequence[str],
        job: str = "otel-budget",
        honor_labels: bool = False,
        rule_files: Sequence[Path] = (),
        interval: str = "1s",
        startup_timeout: float = 30.0,
    ) -> PromServer:
        workdir = tmp_path_factory.mktemp("prometheus")
        server = launch_prometheus(
            prometheus_bin, workdir, {job: targets}, honor_labels=honor_labels,
            rule_files=rule_files, interval=interval, startup_timeout=startup_timeout,
        )
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
