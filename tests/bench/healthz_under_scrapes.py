"""/healthz while scrapers hammer /metrics: a meter with 2,000 attribute sets (a
render costs tens of ms of CPU), 40 threads scraping /metrics back to back, and a
probe asking /healthz every 50 ms. Prints the render time, how many probes
answered 200, and how many scrapes were answered 503 busy. Run from the
repository root:

    python -m tests.bench.healthz_under_scrapes [seconds]
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from otel_budget import BudgetConfig, BudgetMeter
from otel_budget.stores.memory import MemoryStore


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0


def main(seconds: float) -> None:
    config = BudgetConfig(daily_cap_usd=1e6, instance_id="bench", collect_interval_s=3600.0,
                          spool_dir=tempfile.mkdtemp(prefix="otel-budget-bench-"))
    meter = BudgetMeter(config, store=MemoryStore()).start()
    for i in range(2000):
        meter.record(0.001, {"agent": f"a{i % 40}", "task": f"t{i}"})
    started = time.monotonic()
    meter.render_metrics()
    print(f"one /metrics render: {1000 * (time.monotonic() - started):.0f} ms")
    server = meter.serve_health()
    stop = threading.Event()
    scrapes: list[int] = []

    def scrape() -> None:
        while not stop.is_set():
            scrapes.append(_status(server.url + "/metrics"))

    threads = [threading.Thread(target=scrape, daemon=True) for _ in range(40)]
    for thread in threads:
        thread.start()
    probes: list[int] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        probes.append(_status(server.url + "/healthz"))
        time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join(15)
    server.shutdown()
    meter.shutdown(timeout=2)
    ok = sum(1 for s in probes if s == 200)
    print(f"/healthz: {ok}/{len(probes)} answered 200 "
          f"({100 * (len(probes) - ok) / max(1, len(probes)):.0f}% not)")
    print(f"/metrics: {len(scrapes)} scrapes, {scrapes.count(200)} answered 200, "
          f"{scrapes.count(503)} answered 503 busy")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 10.0)
