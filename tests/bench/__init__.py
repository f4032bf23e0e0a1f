"""Speed and memory figures, run from a checkout (never collected by pytest: no file
here is named test_*.py). `python -m tests.bench.run` prints one table."""
