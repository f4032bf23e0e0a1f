"""Per-key budgets at 10,000 keys x 16 writers on a real PostgreSQL (tests/support/pg_server.py).

Every one of 16 writers has recorded spend for all 10,000 customers today (the worst
case: each writer's entry holds 10,000 keys), then:

- checkpoint: one writer's merge of its 10,000-key entry (a timer round: the fleet's
  keys are re-read at most every refresh_s, not at this round), and
  `meter.checkpoint()` (which also re-reads the other 15 writers' keys), each against
  the same writer without a per-key budget;
- start(): a new writer's `start()` against one without a per-key budget, and when
  the fleet's keys are known (the read start() begins beside its first round);
- reserve: `reserve()+settle()` on a per-key hard budget (a key holding a lease)
  against the same on a hard budget without `per`, and a key's first reservation of
  the window (a store round trip: its lease).

The checkpoint rounds alternate, per-key and plain, in blocks; besides wall time
(median and range) each gives its CPU time, this process's plus the PostgreSQL
server's (all its processes, from /proc): on a loaded machine the wall time
mostly measures the queue for a core, the CPU time stays what the round costs.

Run: python -m tests.bench.perkey_pg [keys] [writers]"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable

from otel_budget import Budget, BudgetConfig, BudgetMeter
from otel_budget.stores.base import open_store
from tests.support.pg_server import PgServer, start_server

PER_KEY = Budget("per-customer", 1e6, hard=True, per="customer")
PLAIN = Budget("fleet", 1e6, hard=True)


def _config(budget: Budget, name: str) -> BudgetConfig:
    return BudgetConfig(budgets=(budget,), instance_id=name, collect_interval_s=3600.0,
                        checkpoint_every=1, lease_ttl_s=60.0)


def _ms(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        fn()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times), max(times)


def _server_cpu_s(server: PgServer) -> float:
    """CPU seconds used so far by the server's processes (Linux /proc)."""
    ticks = 0
    for pid in server.server_pids():
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # a backend that just ended
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _rounds(server: PgServer, fns: dict[str, Callable[[], object]], blocks: int,
            per_block: int) -> dict[str, tuple[list[float], float, float]]:
    """Each of `fns` run `per_block` times in turn, `blocks` times: its wall times
    (ms) and its mean CPU per run (ms) in this process and in the server (all its
    processes: the background ones' share of the writes too)."""
    walls: dict[str, list[float]] = {name: [] for name in fns}
    client: dict[str, float] = dict.fromkeys(fns, 0.0)
    served: dict[str, float] = dict.fromkeys(fns, 0.0)
    for _ in range(blocks):
        for name, fn in fns.items():
            client_began, server_began = time.process_time(), _server_cpu_s(server)
            for _ in range(per_block):
                began = time.perf_counter()
                fn()
                walls[name].append((time.perf_counter() - began) * 1000)
            client[name] += time.process_time() - client_began
            served[name] += _server_cpu_s(server) - server_began
    runs = blocks * per_block
    return {name: (walls[name], client[name] / runs * 1000, served[name] / runs * 1000)
            for name in fns}


def _spread(times: list[float]) -> str:
    return (f"median {statistics.median(times):.1f} ms ({min(times):.1f}-{max(times):.1f}, "
            f"n={len(times)})")


def _per_call_us(fn: Callable[[], object], calls: int) -> float:
    began = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - began) / calls * 1e6


def main(keys: int = 10_000, writers: int = 16) -> None:
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    server = start_server()
    meters: list[BudgetMeter] = []
    try:
        url = server.create_database("perkey_bench", migrate=True)
        # The baseline: the same fleet and calls with a hard budget without `per`, in a
        # database of its own (writers of one database share their budgets).
        plain_url = server.create_database("plain_bench", migrate=True)
        began = time.perf_counter()
        for budget, where in ((PER_KEY, url), (PLAIN, plain_url)):
            for i in range(writers):
                meter = BudgetMeter(_config(budget, f"w{i}"), store=open_store(where)).start()
                for k in range(keys):
                    meter.record(0.0001, {"customer": f"c{k:05d}"})
                meter.checkpoint()
                meters.append(meter)
        print(f"setup: 2 x {writers} writers x {keys} keys in "
              f"{time.perf_counter() - began:.1f} s")
        writer = meters[writers - 1]
        plain = meters[-1]
        tracker = writer._tracker

        def timer_round() -> None:
            writer.record(0.0001, {"customer": "c00000"})  # a new seq: a real merge
            tracker.store_round(checkpoint=True, wait=True)

        def plain_round() -> None:
            plain.record(0.0001, {"customer": "c00000"})
            plain._tracker.store_round(checkpoint=True, wait=True)

        # A round first: one that finds the fleet's keys due (every refresh_s, 30 s
        # here; setup takes longer) reads all 15 x 10,000 of them, which is no part
        # of a checkpoint's cost.
        timer_round()
        plain_round()
        ck = _rounds(server, {"per-key": timer_round, "plain": plain_round},
                         blocks=6, per_block=5)
        print(f"load average now: {os.getloadavg()[0]:.1f}")
        for name, (walls, client_ms, server_ms) in ck.items():
            what = (f"{keys}-key entry" if name == "per-key"
                    else "the same calls, no per-key budget")
            print(f"checkpoint (timer round, {what}): {_spread(walls)}; CPU per round: "
                  f"{client_ms:.1f} ms here, {server_ms:.1f} ms in PostgreSQL")
        med, worst = _ms(writer.checkpoint, 10)
        pmed, pworst = _ms(plain.checkpoint, 10)
        print(f"meter.checkpoint() (+ reading {writers - 1} x {keys} keys): median {med:.1f} ms,"
              f" max {worst:.1f} ms; without per-key budget {pmed:.1f} / {pworst:.1f} ms")

        def start(budget: Budget, name: str) -> Callable[[], None]:
            def run() -> None:
                where = url if budget is PER_KEY else plain_url
                meter = BudgetMeter(_config(budget, name), store=open_store(where))
                began = time.perf_counter()
                meter.start()
                starts.append((time.perf_counter() - began) * 1000)
                if budget is PER_KEY:  # start()'s read of the fleet's keys, done beside it
                    meter.budget(PER_KEY.name, {"customer": "c00001"})
                    first_reads.append((time.perf_counter() - began) * 1000)
                meter.shutdown()
            return run

        starts: list[float] = []
        first_reads: list[float] = []
        for i in range(5):
            start(PER_KEY, f"s{i}")()
        per_key_starts, starts = starts, []
        for i in range(5):
            start(PLAIN, f"p{i}")()
        print(f"start() with {writers} x {keys} keys stored: median "
              f"{statistics.median(per_key_starts):.1f} ms (max {max(per_key_starts):.1f}); "
              f"without per-key budget {statistics.median(starts):.1f} ms; the fleet's keys "
              f"known (start's background read done) after "
              f"{statistics.median(first_reads):.1f} ms")

        attrs = {"customer": "c00001"}
        writer.reserve(0.001, attrs).settle(0.001)  # the key's lease
        plain.reserve(0.001, attrs).settle(0.001)
        rounds = []
        for _ in range(5):
            pk = _per_call_us(lambda: writer.reserve(0.001, attrs).settle(0.001), 2000)
            pl = _per_call_us(lambda: plain.reserve(0.001, attrs).settle(0.001), 2000)
            rounds.append((pk, pl))
        pk = statistics.median(r[0] for r in rounds)
        pl = statistics.median(r[1] for r in rounds)
        print(f"reserve+settle: per-key {pk:.1f} us/call, plain hard budget {pl:.1f} us/call "
              f"(ratio {pk / pl:.2f}); round trips/reservation: per-key "
              f"{writer.lease_stats()['round_trips_per_reservation']}, plain "
              f"{plain.lease_stats()['round_trips_per_reservation']}")
        fresh = [{"customer": f"new{k}"} for k in range(200)]
        it = iter(fresh)
        first = _per_call_us(lambda: writer.reserve(0.001, next(it)).settle(0.001), 200)
        print(f"a key's first reservation in the window (its lease row): {first / 1000:.2f} ms")
    finally:
        for meter in meters:
            meter.shutdown()
        server.destroy()
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
