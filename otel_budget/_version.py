"""The package's one version: pyproject.toml reads it, the CLI prints it, the meter's
instrumentation scope carries it."""

__version__ = "0.3.0"
