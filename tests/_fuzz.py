"""Shared settings of the fuzz tests (test_fuzz_spec, test_fuzz_readers): deterministic (``derandomize=True``, no
example database) and bounded (``max_examples``), so CI sees the same examples every run."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
FUZZ_READERS = settings(FUZZ, max_examples=120)
