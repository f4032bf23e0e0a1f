"""`otel-budget serve` failure paths, in process (the happy path runs as a real
subprocess in test_prometheus_e2e.py)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from otel_budget.cli import main


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in list(os.environ):
        if key.startswith("OTEL_"):
            monkeypatch.delenv(key)
    db = tmp_path / "budget.db"
    monkeypatch.setenv("OTEL_BUDGET_DAILY_CAP_USD", "10")
    monkeypatch.setenv("OTEL_BUDGET_STORE", f"sqlite:///{db}")
    monkeypatch.setenv("OTEL_BUDGET_COLLECT_INTERVAL_S", "3600")
    return db


def test_busy_port_is_a_one_line_error(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("otel-budget serve: cannot listen on 127.0.0.1:")
    assert "\n" not in err and "Traceback" not in err


def test_missing_cap_is_a_one_line_error(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_BUDGET_DAILY_CAP_USD")
    assert main(["serve", "--port", "0"]) == 2
    assert "OTEL_BUDGET_DAILY_CAP_USD" in capsys.readouterr().err


def test_bad_port_is_refused(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--port", "70000"]) == 2
    assert "--port must be 0-65535" in capsys.readouterr().err


def test_bad_otlp_protocol_is_refused_before_serving(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    assert main(["serve", "--port", "0"]) == 2
    assert "OTEL_EXPORTER_OTLP_PROTOCOL" in capsys.readouterr().err
