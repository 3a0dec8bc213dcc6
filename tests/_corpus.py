"""The bad-input corpus (tests/bad_inputs) for the tests that read it: its folder and the script that writes it."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "bad_inputs"


@functools.cache
def load_make_corpus():
    """tests/bad_inputs/make_corpus.py (a script that writes the corpus, not a package) as a module, loaded once
    per process (importing it builds every case)."""
    spec = importlib.util.spec_from_file_location("make_corpus", CORPUS / "make_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
