"""Shared by the fuzz and bad-input tests: the hypothesis settings (deterministic: ``derandomize=True``, no example
database; bounded: ``max_examples``, so CI sees the same examples every run) and the corpus script as a module."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from hypothesis import HealthCheck, settings

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
FUZZ_READERS = settings(FUZZ, max_examples=120)


def load_make_corpus():
    """tests/bad_inputs/make_corpus.py (a script that writes the corpus, not a package) as a module."""
    spec = importlib.util.spec_from_file_location("make_corpus", CORPUS / "make_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
