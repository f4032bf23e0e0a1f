"""One version everywhere, and the Supabase stack as an extra with a clear error."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import pytest

import otel_budget
from otel_budget import ConfigError, open_store


def test_one_version_in_package_metadata_and_cli() -> None:
    assert version("otel-budget") == otel_budget.__version__
    result = subprocess.run([sys.executable, "-m", "otel_budget.cli", "--version"],
                            capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == f"otel-budget {otel_budget.__version__}"


def test_supabase_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # Stand-in for an install without the extra: the import of supabase-py fails.
    monkeypatch.setitem(sys.modules, "supabase", None)
    monkeypatch.setenv("SUPABASE_URL", "https://example.supabase.co")
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "sekrit-service-key")
    with pytest.raises(ConfigError, match=r'otel-budget\[supabase\]') as info:
        open_store("supabase://")
    assert "sekrit" not in str(info.value)


def test_the_error_tree_is_one_hierarchy_drawn_in_its_docstring() -> None:
    import inspect

    from otel_budget import errors

    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)
               if c.__module__ == errors.__name__]
    assert len(classes) >= 12
    doc = errors.__doc__ or ""
    for cls in classes:
        assert issubclass(cls, otel_budget.BudgetError), cls
        assert cls.__name__ in doc, f"{cls.__name__} is not drawn in errors.py's tree"
        assert getattr(otel_budget, cls.__name__) is cls, f"{cls.__name__} is not exported"
    assert issubclass(errors.InvalidEntryError, ValueError)
    assert not issubclass(errors.CorruptRowError, ValueError), "stored data is not input"
