"""Fuzz tests (hypothesis) of ``senca_platform.spec``: arbitrary text, mutated YAML text and mutated valid spec dicts
(wrong types, missing and extra keys, odd unicode, huge / negative / non-finite numbers) either load or raise
``SpecError``, never a raw exception. Settings: tests/_fuzz.py."""

from __future__ import annotations

import copy
import math

import yaml
from hypothesis import given
from hypothesis import strategies as st

from senca_platform.spec import SpecError, load_spec, parse_yaml, validate_data

from _fuzz import FUZZ

GOOD_SPEC = {
    "name": "fuzz",
    "output_dir": "out",
    "patients": [
        {"id": "P1", "slides": [
            {"id": "S1", "reader": "legacy_st", "counts": "legacy/S1.tsv.gz", "spots": "legacy/S1_selection.tsv",
             "labels": "legacy/S1_labels.tsv", "image": "legacy/S1.jpg", "image_scale": 0.5},
            {"id": "V1", "reader": "visium", "path": "visium/V1"}]},
        {"id": "P2", "slides": [{"id": "H1", "reader": "h5ad", "path": "h5/x.h5ad"}]},
    ],
    "preprocess": {"n_top_genes": 500, "n_pca": 10, "encoder": "morphology"},
    "model": {"hidden": 64, "lr": 0.001},
    "training": {"epochs": 3, "num_workers": 1, "resources_per_worker": {"CPU": 1.0}},
    "tuning": {"enabled": True, "num_samples": 2,
               "search_space": {"lr": {"type": "loguniform", "low": 0.0001, "high": 0.01},
                                "hidden": {"type": "choice", "values": [32, 64]}}},
    "clustering": {"k": 4, "method": "gmm"},
    "tracking": {"alias": "champion"},
    "paths": {"confine_to_spec_dir": False},
}
GOOD_TEXT = yaml.safe_dump(GOOD_SPEC, sort_keys=False)


def _spec_outcome(call) -> None:
    """``call()`` may succeed or raise SpecError; anything else fails the test (with the exception)."""
    try:
        call()
    except SpecError as err:
        assert err.issues, "a SpecError names at least one problem"
        for issue in err.issues:
            assert issue.field and isinstance(issue.message, str) and issue.message
        assert "Traceback" not in str(err)


# ------------------------------------------------------------------------------------------------ (a) the spec
def test_the_fuzz_seed_spec_is_valid(tmp_path):
    path = tmp_path / "cohort.yaml"
    path.write_text(GOOD_TEXT)
    spec = load_spec(path)
    assert [s.id for _, s in spec.slides()] == ["S1", "V1", "H1"]


@FUZZ
@given(text=st.text(max_size=400))
def test_arbitrary_text(text):
    _spec_outcome(lambda: validate_data(parse_yaml(text)[0], source="fuzz.yaml"))


_YAML_BITS = st.sampled_from([":", "- ", "[", "]", "{", "}", "&a ", "*a", "!!python/object:os.system ", "!!str ",
                              "!!binary ", "? ", "|", ">", "'", '"', "#", "\t", "\n", "  ", ",", "%YAML 1.1\n",
                              "---\n", "...\n", "<<: ", "~", "null", ".nan", "-.inf", "1e999", "-1",
                              "99999999999999999999999", "0x1F", "0o17", "2001-12-14", "\u00e9", "\u202e", "\U0001F9EC",
                              "\ufeff", "\x85", "\u2028", "\x00", "\x07", "\\u0000"])


@st.composite
def _mutated_yaml(draw) -> str:
    text = GOOD_TEXT
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "swap_lines", "dup_line"]))
        i = draw(st.integers(0, len(text)))
        if op == "insert":
            text = text[:i] + draw(st.one_of(_YAML_BITS, st.text(max_size=8))) + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 40)):]
        elif op == "replace":
            text = text[:i] + draw(_YAML_BITS) + text[i + draw(st.integers(1, 6)):]
        else:
            lines = text.split("\n")
            a, b = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            if op == "swap_lines":
                lines[a], lines[b] = lines[b], lines[a]
            else:
                lines.insert(b, lines[a])
            text = "\n".join(lines)
    return text


@FUZZ
@given(text=_mutated_yaml())
def test_mutated_yaml_text(text, tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "mutated.yaml"
    path.write_bytes(text.encode("utf-8", errors="replace"))
    _spec_outcome(lambda: load_spec(path))


_WEIRD = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10 ** 30), max_value=10 ** 30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["", " ", "../../etc/passwd", "~", "~nobody_here/x", "a\x00b", "\u202e\u0000", "auto", "gmm",
                     "legacy_st", "visium", "h5ad", "-1", "1e999", "nan", "yes", "\U0001F9EC" * 3, "x" * 300]),
)
_VALUES = st.recursive(_WEIRD, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                       max_leaves=6)


def _paths(obj, prefix=()):
    """Every (path, value) in a nested dict / list."""
    yield prefix, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


_ALL_PATHS = [p for p, _ in _paths(GOOD_SPEC) if p]


@st.composite
def _mutated_dict(draw) -> dict:
    data = copy.deepcopy(GOOD_SPEC)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_ALL_PATHS))
        parent = data
        try:
            for part in path[:-1]:
                parent = parent[part]
            key = path[-1]
            parent[key]  # noqa: B018 - still there after an earlier mutation?
        except (KeyError, IndexError, TypeError):
            continue
        op = draw(st.sampled_from(["replace", "delete", "extra", "negate", "huge"]))
        if op == "replace":
            parent[key] = draw(_VALUES)
        elif op == "delete":
            del parent[key]
        elif op == "extra" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = draw(_VALUES)
        elif op == "negate" and isinstance(parent[key], (int, float)) and not isinstance(parent[key], bool):
            parent[key] = -parent[key]
        elif op == "huge" and isinstance(parent[key], (int, float)) and not isinstance(parent[key], bool):
            parent[key] = draw(st.sampled_from([10 ** 40, -(10 ** 40), 1e308, math.inf, -math.inf, math.nan, 0]))
    return data


@FUZZ
@given(data=_mutated_dict())
def test_mutated_spec_dict(data, tmp_path_factory):
    _spec_outcome(lambda: validate_data(data, source="fuzz.yaml", base_dir=tmp_path_factory.getbasetemp()))
    # the same through the YAML file (line numbers, the safe loader)
    try:
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    except yaml.YAMLError:
        return
    path = tmp_path_factory.getbasetemp() / "dict.yaml"
    path.write_bytes(text.encode("utf-8", errors="replace"))
    _spec_outcome(lambda: load_spec(path))
