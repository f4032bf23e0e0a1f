"""Every graceful stop writes the final entries, with no code beyond `from_env()`.

Each test starts the real server (uvicorn, gunicorn with each worker class,
hypercorn, a Celery prefork worker, multiprocessing) on a free loopback port with
an app that builds its meter at import and nothing else (tests/support/apps/), records
known amounts through it, stops it with SIGTERM (SIGINT for some), and compares
what the store holds with what was recorded, exactly, writer by writer. The
collection interval is an hour, so no checkpoint happens before the stop: every
cent stored got there through the final entries.

The same server runs beside it with the app built without otel_budget
(APP_NO_METER=1) and gets the same signal: the process must end as that one does
(exit status, or death by the signal).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import otel_budget
from tests.support.apps.procs import PYTHON, ROOT, child_env, ensure_stopped
from tests.support.helpers import stored_day
from tests.support.pg_server import PgServer, free_port

pytestmark = pytest.mark.slow

REQUESTS = 40


def _amount(i: int) -> float:
    return 0.0105 * (i % 3 + 1)


def _nanos(usd: float) -> int:
    return round(usd * 1e9)


def _get(url: str, timeout: float = 10.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        payload: dict[str, Any] = json.loads(response.read())
        return payload


def _stored(store_url: str) -> tuple[int, dict[str, int]]:
    """(the day's stored total, each writer's stored spend), in nano-USD."""
    day, entries = stored_day(store_url)
    by_writer: Counter[str] = Counter()
    for entry in entries:
        by_writer[entry["writer_id"]] += _nanos(entry["spend_usd"])
    return _nanos(day["total_usd"]), dict(by_writer)


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    base: str
    log: Path

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def _budget_env(tmp_path: Path, store_url: str, **extra: str) -> dict[str, str]:
    return child_env({
        "OTEL_RESOURCE_ATTRIBUTES": "service.instance.id=pod-7",
        "OTEL_BUDGET_STORE": store_url,
        "OTEL_BUDGET_DAILY_CAP_USD": "1000",
        # No checkpoint before the stop: what is stored came from the final entries.
        "OTEL_BUDGET_COLLECT_INTERVAL_S": "3600",
        "OTEL_BUDGET_SPOOL_DIR": str(tmp_path / "spool"),
        **extra,
    })


def _start(argv: Callable[[int], list[str]], env: dict[str, str], log: Path,
           request: pytest.FixtureRequest) -> Running:
    port = free_port()
    proc = subprocess.Popen(argv(port), cwd=ROOT, env=env, start_new_session=True,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    request.addfinalizer(lambda: ensure_stopped(proc, grace_s=20, group=True))
    return Running(proc, f"http://127.0.0.1:{port}", log)


def _wait_ready(server: Running) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"the server exited ({server.proc.returncode}):\n{server.tail()}")
        try:
            _get(server.base + "/health", timeout=2)
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"the server did not answer within 60 s:\n{server.tail()}")


def _stop(server: Running, sig: signal.Signals) -> int:
    server.proc.send_signal(sig)
    try:
        return server.proc.wait(timeout=45)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server did not stop within 45 s of {sig.name}:\n{server.tail()}")


def _drive(server: Running) -> list[dict[str, Any]]:
    def spend(i: int) -> dict[str, Any]:
        reply = _get(f"{server.base}/spend?usd={_amount(i)!r}")
        reply["nanos"] = _nanos(_amount(i))
        return reply

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(spend, range(REQUESTS)))


def _check(store_url: str, replies: list[dict[str, Any]], log: str) -> None:
    expected: Counter[str] = Counter()
    for reply in replies:
        expected[reply["writer_id"]] += reply["nanos"]
    total, by_writer = _stored(store_url)
    assert total == sum(expected.values()), (total, dict(expected), log)
    for writer, nanos in expected.items():
        assert by_writer.get(writer) == nanos, (writer, by_writer, log)


def _uvicorn(*extra: str) -> Callable[[int], list[str]]:
    return lambda port: [PYTHON, "-m", "uvicorn", "tests.support.apps.spend_asgi:app",
                         "--host", "127.0.0.1", "--port", str(port), *extra]


def _gunicorn(worker: str, app: str, *extra: str) -> Callable[[int], list[str]]:
    # No control socket: two gunicorns run at once here and would share its default path.
    return lambda port: [PYTHON, "-m", "gunicorn", "-w", "2", "-k", worker,
                         "-b", f"127.0.0.1:{port}", "--graceful-timeout", "20",
                         "--no-control-socket", *extra, app]


def _hypercorn(*extra: str) -> Callable[[int], list[str]]:
    return lambda port: [PYTHON, "-m", "hypercorn", "-b", f"127.0.0.1:{port}", *extra,
                         "tests.support.apps.spend_asgi:app"]


ASGI = "tests.support.apps.spend_asgi:app"
WSGI = "tests.support.apps.spend_asgi:wsgi_app"
SERVERS: dict[str, tuple[Callable[[int], list[str]], signal.Signals]] = {
    "uvicorn": (_uvicorn(), signal.SIGTERM),
    "uvicorn-sigint": (_uvicorn(), signal.SIGINT),
    "uvicorn-workers-2": (_uvicorn("--workers", "2"), signal.SIGTERM),
    "gunicorn-sync-sigint": (_gunicorn("sync", WSGI), signal.SIGINT),
    "gunicorn-gthread": (_gunicorn("gthread", WSGI, "--threads", "4"), signal.SIGTERM),
    "gunicorn-uvicornworker": (_gunicorn("uvicorn.workers.UvicornWorker", ASGI),
                               signal.SIGTERM),
    "gunicorn-uvicornworker-preload": (
        _gunicorn("uvicorn.workers.UvicornWorker", ASGI, "--preload"), signal.SIGTERM),
    "hypercorn": (_hypercorn(), signal.SIGTERM),
    "hypercorn-workers-2": (_hypercorn("-w", "2"), signal.SIGTERM),
}


def _run_server_case(tmp_path: Path, store_url: str, name: str,
                     request: pytest.FixtureRequest, **env: str) -> None:
    argv, sig = SERVERS[name]
    server = _start(argv, _budget_env(tmp_path, store_url, **env), tmp_path / "server.log",
                    request)
    baseline = _start(argv, _budget_env(tmp_path, "memory://", APP_NO_METER="1"),
                      tmp_path / "baseline.log", request)
    _wait_ready(server)
    _wait_ready(baseline)
    replies = _drive(server)
    _get(baseline.base + "/spend?usd=0.01")
    assert _stored(store_url)[0] == 0, "nothing checkpointed before the stop"
    status = _stop(server, sig)
    baseline_status = _stop(baseline, sig)
    log = server.tail()
    assert status == baseline_status, (status, baseline_status, log)
    _check(store_url, replies, log)


@pytest.mark.parametrize("name", list(SERVERS))
def test_a_graceful_stop_stores_every_request_exactly(
        tmp_path: Path, name: str, request: pytest.FixtureRequest) -> None:
    _run_server_case(tmp_path, f"sqlite:///{tmp_path / 'budget.db'}", name, request)


def test_uvicorn_workers_on_postgresql(tmp_path: Path, pg_clean: str,
                                       request: pytest.FixtureRequest) -> None:
    _run_server_case(tmp_path, pg_clean, "uvicorn-workers-2", request)


def test_the_explicit_asgi_middleware_under_uvicorn(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    _run_server_case(tmp_path, f"sqlite:///{tmp_path / 'budget.db'}", "uvicorn", request,
                     APP_EXPLICIT="1")


# --- Celery -------------------------------------------------------------------------


def _celery(workdir: Path, env: dict[str, str], log: Path,
            request: pytest.FixtureRequest) -> subprocess.Popen[bytes]:
    argv = [PYTHON, "-m", "celery", "-A", "tests.support.apps.celery_tasks", "worker", "-P", "prefork",
            "-c", "2", "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-l", "info"]
    proc = subprocess.Popen(argv, cwd=ROOT, env={**env, "APP_CELERY_DIR": str(workdir)},
                            start_new_session=True, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)
    request.addfinalizer(lambda: ensure_stopped(proc, grace_s=20, group=True))
    return proc


def _send_tasks(workdir: Path, amounts: list[float]) -> None:
    # A producer that never imports the tasks module (which would build a meter here).
    from celery import Celery  # type: ignore[import-untyped,unused-ignore]

    queue = workdir / "queue"
    queue.mkdir(parents=True, exist_ok=True)
    producer = Celery("producer", broker="filesystem://")
    producer.conf.broker_transport_options = {
        "data_folder_in": str(queue), "data_folder_out": str(queue), "store_processed": False,
        # kombu's default control folder is ./control, in the checkout
        "control_folder": str(workdir / "control")}
    for usd in amounts:
        producer.send_task("spend", args=[usd])


def _done(workdir: Path, count: int, proc: subprocess.Popen[bytes], log: Path) -> list[Any]:
    deadline = time.monotonic() + 60
    path = workdir / "done.jsonl"
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return [json.loads(line) for line in lines]
        if proc.poll() is not None:
            pytest.fail(f"celery exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    pytest.fail(f"celery ran {len(lines)} of {count} tasks in 60 s:\n{log.read_text()[-3000:]}")


def test_celery_prefork_worker_warm_shutdown_stores_every_task(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    pytest.importorskip("celery")  # in the test extra; a missing one says so here
    store_url = f"sqlite:///{tmp_path / 'budget.db'}"
    work, base = tmp_path / "work", tmp_path / "baseline"
    worker = _celery(work, _budget_env(tmp_path, store_url), tmp_path / "celery.log", request)
    baseline = _celery(base, _budget_env(tmp_path, "memory://", APP_NO_METER="1"),
                       tmp_path / "baseline.log", request)
    amounts = [_amount(i) for i in range(REQUESTS)]
    _send_tasks(work, amounts)
    _send_tasks(base, amounts[:2])
    done = _done(work, REQUESTS, worker, tmp_path / "celery.log")
    _done(base, 2, baseline, tmp_path / "baseline.log")
    assert len({d["pid"] for d in done}) >= 1
    assert _stored(store_url)[0] == 0, "nothing checkpointed before the stop"
    worker.send_signal(signal.SIGTERM)  # warm shutdown: the pool children end by os._exit
    baseline.send_signal(signal.SIGTERM)
    status, baseline_status = worker.wait(timeout=45), baseline.wait(timeout=45)
    log = (tmp_path / "celery.log").read_text()[-3000:]
    assert status == baseline_status, (status, baseline_status, log)
    replies = [{"writer_id": d["writer_id"], "nanos": _nanos(d["usd"])} for d in done]
    _check(store_url, replies, log)


# --- multiprocessing and plain scripts ----------------------------------------------


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_children_store_their_spend(tmp_path: Path, method: str) -> None:
    """Process children and Pool workers end by os._exit (fork) or are terminate()d
    (the Pool context manager): what each recorded is stored all the same."""
    store_url = f"sqlite:///{tmp_path / 'budget.db'}"
    done = subprocess.run([PYTHON, "-m", "tests.support.apps.mp_spend", method], cwd=ROOT,
                          env=_budget_env(tmp_path, store_url), capture_output=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["exitcodes"] == [0, 0]
    total, by_writer = _stored(store_url)
    assert total == report["nanos"], (total, report, by_writer, done.stderr[-2000:])
    # The parent, the 2 Process children and at least one worker of each pool wrote
    # rows of their own (which pool worker takes which task is the pool's choice).
    assert len([w for w, n in by_writer.items() if n > 0]) >= 5, by_writer


FORK_SIGNALLED = """
import json, os, signal
import otel_budget

# A stop signal that reaches a forked child while its after-fork hooks still run (a
# Pool worker terminate()d before it was ever scheduled), sent by a hook that runs first.
os.register_at_fork(after_in_child=lambda: os.kill(os.getpid(), signal.SIGTERM))
meter = otel_budget.from_env()
meter.record(0.25, {"phase": "parent"})
pid = os.fork()
if pid == 0:
    os._exit(0)
_, status = os.waitpid(pid, 0)
meter.record(0.0105, {"phase": "parent"})
killed_by = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
print(json.dumps({"writer_id": meter.writer_id, "killed_by": killed_by}), flush=True)
"""


def _run_script(script: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess[bytes], str]:
    """`python -c script` with a meter's environment; what it did and its store."""
    store_url = f"sqlite:///{tmp_path / 'budget.db'}"
    done = subprocess.run([PYTHON, "-c", script], cwd=ROOT, env=_budget_env(tmp_path, store_url),
                          capture_output=True, timeout=60)
    return done, store_url


def test_a_child_stopped_during_its_fork_hooks_leaves_the_parents_row_alone(
        tmp_path: Path) -> None:
    """The cause of test_multiprocessing_children_store_their_spend's rare failure
    under load: such a child stopped the meter while it was still the parent's
    writer, retiring the parent's row, so the parent's final entry was refused."""
    done, store_url = _run_script(FORK_SIGNALLED, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["killed_by"] == signal.SIGTERM, "the child dies by the signal, as it would"
    total, by_writer = _stored(store_url)
    parent = _nanos(0.25) + _nanos(0.0105)
    assert by_writer.get(report["writer_id"]) == parent and total == parent, by_writer


SIGNALLED_INSIDE = """
import json, os, signal
import otel_budget
from otel_budget import lifecycle

meter = otel_budget.from_env()
meter.record(0.25, {"phase": "script"})
print(json.dumps({"writer_id": meter.writer_id}), flush=True)
# The stop signal arrives while the main thread is inside lifecycle's lock (as when a
# multiprocessing finalizer runs stop_all and Pool.terminate()'s SIGTERM comes).
with lifecycle._lock:
    os.kill(os.getpid(), signal.SIGTERM)
    inside = True  # bytecode still inside the block: where the handler runs
raise SystemExit("the signal did not take effect")
"""


SIGNALLED_CLOSING = """
import atexit, json, os, signal
import otel_budget
from otel_budget import lifecycle

meter = otel_budget.from_env()
meter.record(0.25, {"phase": "script"})
print(json.dumps({"writer_id": meter.writer_id}), flush=True)
real_unregister, calls = atexit.unregister, []

def unregister(func):
    # shutdown() calls this once it has marked the meter closed: the stop signal comes
    # right then (as Pool.terminate()'s does while a worker's finalizer stops it).
    calls.append(func)
    os.kill(os.getpid(), signal.SIGTERM)
    return real_unregister(func)

atexit.unregister = unregister
lifecycle.stop_all()  # what a multiprocessing finalizer runs
raise SystemExit(f"the signal did not take effect ({len(calls)} unregister calls)")
"""


# The same, with the shutdown called directly (by atexit, or by the app's own code).
SIGNALLED_SHUTDOWN = SIGNALLED_CLOSING.replace(
    "lifecycle.stop_all()  # what a multiprocessing finalizer runs", "meter.shutdown()")


@pytest.mark.parametrize("script", [SIGNALLED_INSIDE, SIGNALLED_CLOSING, SIGNALLED_SHUTDOWN],
                         ids=["inside-lifecycle-lock", "while-a-finalizer-stops",
                              "while-shutdown-starts"])
def test_a_stop_signal_while_lifecycle_stops_the_meter_still_stores_the_spend(
        tmp_path: Path, script: str) -> None:
    """Inside the lock, the stop used to start on a thread that waited for the lock
    the interrupted main thread held: nothing was stored (nor spooled) before the
    signal took effect at the deadline. Between the meter marking itself closed and
    lifecycle hearing of it, the signal found nothing to stop: nothing was stored."""
    done, store_url = _run_script(script, tmp_path)
    assert done.returncode == -signal.SIGTERM, done.stderr[-3000:]
    writer = json.loads(done.stdout.splitlines()[-1])["writer_id"]
    total, by_writer = _stored(store_url)
    assert total == _nanos(0.25) and by_writer == {writer: total}, done.stderr[-3000:]


SCRIPT = """
import os, signal, sys, time
import otel_budget
meter = otel_budget.from_env()
meter.record(0.25, {"phase": "script"})
meter.record(0.0105, {"phase": "script"})
print(meter.writer_id, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_plain_script_stopped_by_a_signal_stores_its_spend_and_dies_as_it_would(
        tmp_path: Path, sig: signal.Signals, request: pytest.FixtureRequest) -> None:
    store_url = f"sqlite:///{tmp_path / 'budget.db'}"
    proc = subprocess.Popen([PYTHON, "-c", SCRIPT], cwd=ROOT, env=_budget_env(tmp_path, store_url),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    request.addfinalizer(lambda: ensure_stopped(proc))
    assert proc.stdout is not None
    writer = proc.stdout.readline().decode().strip()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    # SIGTERM: the default action. SIGINT: Python's KeyboardInterrupt, uncaught, after
    # which the interpreter (exit hooks run) ends itself by SIGINT too.
    assert proc.returncode == -sig, err[-2000:]
    assert (b"KeyboardInterrupt" in err) == (sig == signal.SIGINT), err[-2000:]
    total, by_writer = _stored(store_url)
    assert total == _nanos(0.25) + _nanos(0.0105) and by_writer == {writer: total}


# --- how the handlers behave ----------------------------------------------------------

HANDLERS = """
import os, signal, sys
import otel_budget
from otel_budget import BudgetConfig, BudgetMeter

builtin_signal, builtin_getsignal = signal.signal, signal.getsignal
calls = []
def server_handler(sig, frame):
    calls.append(sig)

config = BudgetConfig(daily_cap_usd=1, store_url=sys.argv[1], collect_interval_s=3600)
meter = BudgetMeter(config).start()
meter.record(0.125)
ours = builtin_getsignal(signal.SIGTERM)
assert ours is not signal.SIG_DFL
# A server installing its handler after start() sees what it would have seen...
assert signal.signal(signal.SIGTERM, server_handler) is signal.SIG_DFL
assert signal.getsignal(signal.SIGTERM) is server_handler
assert builtin_getsignal(signal.SIGTERM) is ours  # ...and ours stays the one called
assert signal.signal(signal.SIGUSR1, server_handler) is signal.SIG_DFL  # others untouched
assert builtin_getsignal(signal.SIGUSR1) is server_handler
signal.signal(signal.SIGUSR1, signal.SIG_DFL)
# The signal reaches the server's handler, and only it: the meter keeps running.
signal.raise_signal(signal.SIGTERM)
assert calls == [signal.SIGTERM], calls
meter.record(0.125)  # raises after shutdown()
# The server restores the default action and re-raises (uvicorn's way): the meter
# writes its final entries, then the process dies by SIGTERM.
assert signal.signal(signal.SIGTERM, signal.SIG_DFL) is server_handler
print("re-raising", flush=True)
signal.raise_signal(signal.SIGTERM)
print("survived", flush=True)
"""

RESTORED = """
import signal, sys
from otel_budget import BudgetConfig, BudgetMeter

builtin_signal, builtin_getsignal = signal.signal, signal.getsignal
before = {s: builtin_getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
for _ in range(2):
    meter = BudgetMeter(BudgetConfig(daily_cap_usd=1, store_url="memory://",
                                     collect_interval_s=3600)).start()
    assert builtin_getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
    meter.shutdown()
    # The last meter stopped: everything is as it was.
    assert signal.signal is builtin_signal and signal.getsignal is builtin_getsignal
    assert {s: builtin_getsignal(s) for s in before} == before
print("ok", flush=True)
"""


def test_a_servers_handler_runs_as_before_and_its_reraise_stores_the_final_entries(
        tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'budget.db'}"
    done = subprocess.run([PYTHON, "-c", HANDLERS, store_url], cwd=ROOT,
                          env=_budget_env(tmp_path, store_url), capture_output=True, timeout=60)
    assert done.stdout.decode().split() == ["re-raising"], done.stderr[-3000:]
    assert done.returncode == -signal.SIGTERM, done.stderr[-3000:]
    assert _stored(store_url)[0] == _nanos(0.25)


def test_the_last_meter_to_stop_puts_the_original_handlers_back(tmp_path: Path) -> None:
    done = subprocess.run([PYTHON, "-c", RESTORED], cwd=ROOT, env=_budget_env(tmp_path, "memory://"),
                          capture_output=True, timeout=60)
    assert done.returncode == 0 and done.stdout.split() == [b"ok"], done.stderr[-3000:]


def test_a_stop_while_the_store_hangs_still_ends_the_process_and_loses_nothing(
        tmp_path: Path, pg_server: PgServer, pg_clean: str,
        request: pytest.FixtureRequest) -> None:
    """SIGTERM with a SIGSTOPped PostgreSQL: the final entries go to the spool, the
    process still dies by SIGTERM (shutdown's deadline bounds the wait), and the
    store ends up with them exactly once after the next meter on this host starts."""
    env = _budget_env(tmp_path, pg_clean)
    proc = subprocess.Popen([PYTHON, "-c", SCRIPT], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    request.addfinalizer(lambda: ensure_stopped(proc))
    assert proc.stdout is not None
    writer = proc.stdout.readline().decode().strip()
    with pg_server.frozen():
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=40)  # a bound for a hang, not a speed check
    assert proc.returncode == -signal.SIGTERM, err[-2000:]
    # The write in flight may land when the server resumes; the spool holds it anyway
    # and replaying it must neither lose nor double it.
    config = otel_budget.BudgetConfig(daily_cap_usd=1000.0, store_url=pg_clean,
                                      collect_interval_s=3600, spool_dir=env["OTEL_BUDGET_SPOOL_DIR"])
    otel_budget.BudgetMeter(config).start().shutdown()  # replays the spool
    total, by_writer = _stored(pg_clean)
    assert total == _nanos(0.25) + _nanos(0.0105) and by_writer[writer] == total, by_writer


ASYNCIO = """
import asyncio, os, signal
import otel_budget
meter = otel_budget.from_env()
meter.record(0.25)

async def main():
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)  # after start(), as servers do
    loop.call_later(0.2, os.kill, os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(stop.wait(), 30)
    meter.record(0.125)  # a drain still records
    print("stopped by the loop's handler", flush=True)

asyncio.run(main())
"""


def test_an_event_loops_signal_handler_still_gets_the_signal(tmp_path: Path) -> None:
    """asyncio's add_signal_handler (hypercorn without workers, many apps) installs
    through signal.signal and learns of signals through the wakeup fd: both still work
    with the chained handler, and the app's normal exit writes the final entries."""
    store_url = f"sqlite:///{tmp_path / 'budget.db'}"
    done = subprocess.run([PYTHON, "-c", ASYNCIO], cwd=ROOT, env=_budget_env(tmp_path, store_url),
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.decode().strip() == "stopped by the loop's handler"
    assert _stored(store_url)[0] == _nanos(0.375)
