"""Budgets whose `match` needs care (shell patterns, LIKE's own characters, several
keys, typed values) and breakdown items to price against them: shared by the tests
that hold the stores' SQL to the Python rule."""

from __future__ import annotations

from typing import Any

from otel_budget.budgets import Budget

MATCH_BUDGETS = (
    Budget("opus", 10.0, period="month", match={"gen_ai.request.model": "claude-opus-4*"}),
    Budget("one", 10.0, period="month", match={"agent": ["a?", "exact%_\\"]}),
    Budget("flag", 10.0, period="month", match={"prod": True, "tier": [2, "x"]}),
    Budget("daily", 10.0, period="month"),
)
MATCH_ITEMS: tuple[tuple[dict[str, Any], float], ...] = (
    ({"gen_ai.request.model": "claude-opus-4-1", "agent": "ab", "prod": 1, "tier": 2.0}, 1.25),
    ({"gen_ai.request.model": "claude-sonnet-4", "agent": "abc", "prod": True}, 0.5),
    ({"gen_ai.request.model": "claude-opus-4", "agent": "exact%_\\", "tier": "x",
      "prod": True}, 2.0),
    ({"agent": "a_", "prod": False}, 0.125),
    ({"otel.metric.overflow": True}, 4.0),
    ({}, 0.0625),
)
