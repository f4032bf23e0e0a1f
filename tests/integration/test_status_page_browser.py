"""The status page in a real browser: Debian's chromium, headless, without a driver
(`--dump-dom` prints the DOM after the page's script ran; `--virtual-time-budget`
lets its fetch of api/status complete first). The store is a real SQLite file fed
by real meters; the server is `meter.serve_health()`, stopped in `finally`.

chromium is a test requirement (`.ci/run` installs it): when missing the tests fail
saying so, never skip."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from functools import partial
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from otel_budget import Budget, BudgetConfig, BudgetMeter
from otel_budget.health_server import serve_health
from otel_budget.web.app import respond
from otel_budget.web.page import render_page
from otel_budget.web.status import StatusSource

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("chromium is not installed: `apt-get install chromium` (.ci/run does it)",
                pytrace=False)


def _browse(url: str, profile: Path, *extra: str) -> str:
    """The DOM after the page's scripts ran (fetches included), as chromium prints it."""
    args = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-extensions", f"--user-data-dir={profile}",
            "--virtual-time-budget=5000", *extra]
    if not any(arg.startswith("--screenshot") for arg in extra):
        args.append("--dump-dom")
    args.append(url)
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class _Page(HTMLParser):
    """The budgets' cards (name -> shown spend text and exact data-usd) and the texts."""

    def __init__(self) -> None:
        super().__init__()
        self.budgets: dict[str, dict[str, str]] = {}
        self.body: dict[str, str | None] = {}
        self.text: list[str] = []
        self._card: str | None = None
        self._depth = 0
        self._in_spend = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if tag == "body":
            self.body = attr
        if self._card is not None:
            self._depth += 1
        if tag == "article" and attr.get("data-budget"):
            self._card = str(attr["data-budget"])
            self._depth = 1
            self.budgets[self._card] = {}
        if self._card is not None and tag == "span" and "spend" in (attr.get("class") or ""):
            self.budgets[self._card]["usd"] = str(attr.get("data-usd"))
            self.budgets[self._card]["shown"] = ""
            self._in_spend = True

    def handle_endtag(self, tag: str) -> None:
        self._in_spend = False
        if self._card is not None:
            self._depth -= 1
            if self._depth == 0:
                self._card = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_spend and self._card is not None:
            self.budgets[self._card]["shown"] += data


def _parse(dom: str) -> _Page:
    page = _Page()
    page.feed(dom)
    return page


def _shown(usd: float) -> str:
    """The page's money format (usd() in page.py): JavaScript's toFixed rounds the
    exact binary value, ties away from zero."""
    digits = 2 if usd >= 1 or usd == 0 else (4 if usd >= 0.01 else 6)
    exact = Decimal(usd).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    return f"${exact}"


def _config(url: str, instance: str) -> BudgetConfig:
    return BudgetConfig(
        daily_cap_usd=25.0, store_url=url, collect_interval_s=3600, instance_id=instance,
        budgets=(Budget("coder", 10.0, match={"agent": "coder"}, alert_ratios=(0.5, 0.8),
                        hard=True),
                 Budget("weekly", 100.0, period="week", alert_ratios=(0.5, 0.9))))


@pytest.fixture
def meters(tmp_path: Path) -> Iterator[tuple[BudgetMeter, BudgetMeter]]:
    url = f"sqlite:///{tmp_path / 'budget.db'}"
    a = BudgetMeter(_config(url, "api-1")).start()
    b = BudgetMeter(_config(url, "api-2")).start()
    try:
        yield a, b
    finally:
        a.shutdown()
        b.shutdown()


def _spend(a: BudgetMeter, b: BudgetMeter, rounds: int) -> None:
    for _ in range(rounds):
        a.record(0.17, {"agent": "coder", "gen_ai.request.model": "claude-sonnet-4-5"})
        b.record(0.09, {"agent": "reviewer", "gen_ai.request.model": "gpt-4o"})
        b.record(0.0125, {"agent": "triage", "gen_ai.request.model": "claude-haiku-4-5"})
    assert a.checkpoint() and b.checkpoint()
    assert a.checkpoint()  # a's view now holds b's entry


def _check_budgets(page: _Page, budgets: list[dict[str, Any]]) -> None:
    assert set(page.budgets) == {row["name"] for row in budgets}
    for row in budgets:
        card = page.budgets[row["name"]]
        assert float(card["usd"]) == row["spend_usd"], row["name"]
        assert card["shown"] == _shown(row["spend_usd"]), row["name"]


def test_page_shows_every_budget_as_the_meter_has_it_and_new_spend_on_reload(
    meters: tuple[BudgetMeter, BudgetMeter], tmp_path: Path,
) -> None:
    a, b = meters
    _spend(a, b, 40)
    server = a.serve_health()
    try:
        shot = tmp_path / "status-page.png"
        _browse(server.url + "/", tmp_path / "profile-shot", "--window-size=1200,1300",
                f"--screenshot={shot}")
        first = _parse(_browse(server.url + "/", tmp_path / "profile-1"))
        before = a.budgets()
        _spend(a, b, 10)
        second = _parse(_browse(server.url + "/", tmp_path / "profile-2"))
        after = a.budgets()
    finally:
        server.shutdown()
    _check_budgets(first, before)
    assert [r["spend_usd"] for r in before] == [10.9, 6.8, 10.9]
    # The script's fetch of api/status ran and rendered (not only the embedded copy).
    assert int(first.body.get("data-refreshes") or 0) >= 1
    text = " ".join(first.text)
    for name in ("claude-sonnet-4-5", "gpt-4o", "reviewer", "triage", "api-1", "api-2"):
        assert name in text
    _check_budgets(second, after)
    assert [r["spend_usd"] for r in after] == [13.625, 8.5, 13.625]
    assert shot.read_bytes()[:8] == PNG_SIGNATURE and shot.stat().st_size > 10_000


def test_page_refreshes_in_place_from_api_status(
    meters: tuple[BudgetMeter, BudgetMeter], tmp_path: Path,
) -> None:
    """The page's embedded first document is one from before more spend; the DOM
    the browser ends with shows the spend after it: the fetch re-rendered in place."""
    a, b = meters
    _spend(a, b, 2)
    source = StatusSource(a, cache_s=0)
    stale = source.status()
    _spend(a, b, 3)

    def pages(method: str, path: str) -> tuple[int, list[tuple[str, str]], bytes]:
        if path == "/":
            return 200, [("Content-Type", "text/html; charset=utf-8")], render_page(stale)
        return respond(source, method, path)

    server = serve_health(a.health, a.render_metrics, pages=pages)
    try:
        page = _parse(_browse(server.url + "/", tmp_path / "profile"))
    finally:
        server.shutdown()
    now = a.budgets()
    assert [r["spend_usd"] for r in stale["budgets"]] != [r["spend_usd"] for r in now]
    _check_budgets(page, now)
    assert int(page.body.get("data-refreshes") or 0) >= 1


def test_page_under_a_path_prefix_fetches_relative_to_itself(
    meters: tuple[BudgetMeter, BudgetMeter], tmp_path: Path,
) -> None:
    a, b = meters
    _spend(a, b, 1)
    source = StatusSource(a)
    seen: list[str] = []

    def pages(method: str, path: str) -> tuple[int, list[tuple[str, str]], bytes]:
        seen.append(path)
        if path.startswith("/budget"):
            return respond(source, method, path[len("/budget"):])
        return 404, [("Content-Type", "text/plain")], b"not found\n"

    server = serve_health(a.health, a.render_metrics, pages=partial(pages))
    try:
        page = _parse(_browse(server.url + "/budget/", tmp_path / "profile"))
    finally:
        server.shutdown()
    assert "/budget/api/status" in seen and "/api/status" not in seen
    assert int(page.body.get("data-refreshes") or 0) >= 1
    _check_budgets(page, a.budgets())


def test_a_per_key_budget_shows_its_top_keys_from_two_writers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'budget.db'}"

    def config(instance: str) -> BudgetConfig:
        return BudgetConfig(daily_cap_usd=50.0, store_url=url, collect_interval_s=3600,
                            instance_id=instance,
                            budgets=(Budget("per-customer", 5.0, per="customer"),))

    a = BudgetMeter(config("api-1")).start()
    b = BudgetMeter(config("api-2")).start()
    try:
        for customer, usd, meter in (("acme", 1.25, a), ("acme", 0.5, b), ("globex", 0.75, b),
                                     ("initech", 0.125, a)):
            meter.record(usd, {"customer": customer})
        assert a.checkpoint() and b.checkpoint() and a.checkpoint()
        expected = {k["key"]["customer"]: k["spend_usd"]
                    for k in next(r for r in a.budgets() if r["name"] == "per-customer")["top_keys"]}
        assert expected == {"acme": 1.75, "globex": 0.75, "initech": 0.125}, "fleet-wide keys"
        server = a.serve_health()
        try:
            page = _parse(_browse(server.url + "/", tmp_path / "profile"))
        finally:
            server.shutdown()
    finally:
        a.shutdown()
        b.shutdown()
    text = " ".join(page.text)
    for customer, usd in expected.items():
        assert customer in text and _shown(usd) in text, (customer, usd)
    assert page.budgets["per-customer"]["usd"] == "1.75", "the biggest key against the cap"
