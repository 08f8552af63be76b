"""Fault-injection scenarios (issue 11, `make chaos`); docs/reliability.md reports their figures."""
