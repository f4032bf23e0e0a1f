"""multiprocessing children that record spend and end the way multiprocessing ends
them, for tests/integration/test_graceful_stop.py: `Process` children and `Pool` workers end
with `os._exit` under fork (no atexit), and the `Pool` context manager ends its
workers with `terminate()` (SIGTERM). The meter is built at import, as the README
shows; nothing calls shutdown() in a child.

    python -m tests.support.apps.mp_spend fork|spawn|forkserver

Prints one JSON line: the amount recorded in all processes and the exit codes.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
from typing import Any

import otel_budget

meter = otel_budget.from_env()
AMOUNT = 0.0105


def work(i: int) -> int:
    meter.record(AMOUNT * (i % 3 + 1), {"phase": "child"})
    return round(AMOUNT * (i % 3 + 1) * 1e9)


def main(method: str) -> None:
    ctx: Any = mp.get_context(method)  # typeshed's BaseContext lacks Process
    nanos = 0
    processes = [ctx.Process(target=work, args=(i,)) for i in range(2)]
    for p in processes:
        p.start()
    for p in processes:
        p.join()
    nanos += sum(round(AMOUNT * (i % 3 + 1) * 1e9) for i in range(2))
    with ctx.Pool(2) as pool:  # close() + join(): the workers return
        nanos += sum(pool.map(work, range(2, 8)))
        pool.close()
        pool.join()
    with ctx.Pool(2) as pool:  # leaving the block terminate()s the workers
        nanos += sum(pool.map(work, range(8, 14)))
    meter.record(0.5, {"phase": "parent"})
    nanos += 500_000_000
    print(json.dumps({"nanos": nanos, "exitcodes": [p.exitcode for p in processes],
                      "pid": os.getpid()}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
