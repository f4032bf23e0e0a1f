"""`python -m otel_budget.cli`: the same as the `otel-budget` command."""

from . import main

raise SystemExit(main())
