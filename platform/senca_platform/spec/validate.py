"""Validating a parsed spec: pydantic errors mapped onto the YAML lines ("did you mean" on typos), the
``model:`` settings checked against ``SencaConfig``, duplicate ids, and every path resolved relative to the YAML
file's folder (``paths.confine_to_spec_dir``). :func:`load_spec` reads, parses and validates a file."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .._confine import escape_of
from .limits import read_spec_bytes
from .schema import PATH_FIELDS, CohortSpec, SpecError, SpecIssue, _Base, _SlideBase
from .yaml_lines import _format_loc, parse_yaml

#: model settings that the spec sets elsewhere (training section), not under ``model:``
_MODEL_KEYS_SET_ELSEWHERE = {"epochs": "training.epochs", "seed": "training.seed", "device": "training.use_gpu"}


def _locate(loc: tuple, lines: dict[tuple, int]) -> tuple[tuple, int | None]:
    """Match a pydantic error location onto the YAML key paths (skipping union tags); deepest known line."""
    path: tuple = ()
    best = lines.get((), None)
    for part in loc:
        candidate = path + (part,)
        if candidate not in lines and not isinstance(part, str):
            candidate = path + (str(part),)  # a non-string key (``1: x``) is stored as its text
        if candidate in lines:
            path = candidate
            best = lines[candidate]
        # else: a union tag ('legacy_st') or a missing key: keep the parent's line
    return path, best


def _issues_from_validation(err: ValidationError, lines: dict[tuple, int]) -> list[SpecIssue]:
    issues = []
    for e in err.errors():
        loc = tuple(e["loc"])
        msg = e["msg"]
        if loc and loc[-1] == "[key]":  # a mapping key that is not a string (``1: x``, ``null: x``)
            loc = loc[:-1]
            msg = f"keys must be strings, got {e['input']!r}"
        elif e["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc = loc + ("reader",)
        path, line = _locate(loc, lines)
        # show the path as the user wrote it (no union tags), ending with the offending key
        shown = path if (loc and path and str(path[-1]) == str(loc[-1])) else path + ((loc[-1],) if loc else ())
        if e["type"] == "extra_forbidden":
            msg = "unknown field (not allowed here)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] == "union_tag_invalid":
            msg = f"unknown reader {e['input'] if not isinstance(e['input'], dict) else e['input'].get('reader')!r}; " \
                  "expected one of: legacy_st, visium, h5ad"
        elif e["type"] == "union_tag_not_found":
            msg = "required field is missing (one of: legacy_st, visium, h5ad)"
        elif e["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        elif e["type"] == "finite_number":
            msg = f"must be a finite number, got {e['input']!r}"
        elif (e["type"].endswith(("_type", "_parsing")) and isinstance(e["input"], (str, int, float, bool))
              and len(repr(e["input"])) <= 60):
            msg = f"{msg} (got {e['input']!r})"
        issues.append(SpecIssue(_format_loc(shown), line, msg))
    return _merge_typos(issues)


def _vocabulary() -> set[str]:
    """Every field name of every spec section (for 'did you mean' on unknown keys)."""
    classes = [*_Base.__subclasses__(), *_SlideBase.__subclasses__()]
    return {name for cls in classes for name in cls.model_fields}


def _merge_typos(issues: list[SpecIssue]) -> list[SpecIssue]:
    """An unknown key that is a near miss of a known field gets 'did you mean'; when that field is reported
    missing at the same place, the two issues become one (the typo's, on its line)."""
    import difflib

    vocab = sorted(_vocabulary())
    missing = {i.field: i for i in issues if i.message == "required field is missing"}
    drop: set[int] = set()
    for issue in issues:
        if issue.message != "unknown field (not allowed here)":
            continue
        parent, _, key = issue.field.rpartition(".")
        match = difflib.get_close_matches(key, vocab, n=1, cutoff=0.75)
        if not match:
            continue
        twin = missing.get(f"{parent}.{match[0]}" if parent else match[0])
        if twin is not None:
            drop.add(id(twin))
            issue.message = f"unknown field; did you mean {match[0]!r} (required, missing)?"
        else:
            issue.message = f"unknown field (not allowed here); did you mean {match[0]!r}?"
    return [i for i in issues if id(i) not in drop]


def _type_problem(value: Any, default: Any) -> str | None:
    """Why ``value`` cannot stand for a SencaConfig field whose default is ``default`` (None when it can)."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else \
            f"must be an integer, got {value!r}"
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number, got {value!r}"
        return None if math.isfinite(value) else f"must be a finite number, got {value!r}"
    if isinstance(default, str):
        return None if isinstance(value, str) else f"must be a string, got {value!r}"
    return None


def _model_setting_issues(spec: CohortSpec, lines: dict[tuple, int]) -> list[SpecIssue]:
    """``model:`` and ``tuning.search_space`` keys must be SencaConfig fields (checked when senca_core is there)."""
    issues: list[SpecIssue] = []
    try:
        from dataclasses import fields

        from senca_core.model import SencaConfig
    except Exception:  # noqa: BLE001 - the model package may not be importable yet; skip the check
        return issues
    defaults = {f.name: f.default for f in fields(SencaConfig)}
    known = set(defaults)
    for key, value in spec.model.items():
        if key in _MODEL_KEYS_SET_ELSEWHERE:
            issues.append(SpecIssue(f"model.{key}", lines.get(("model", key)),
                                    f"set it as {_MODEL_KEYS_SET_ELSEWHERE[key]}, not under model"))
        elif key not in known:
            issues.append(SpecIssue(f"model.{key}", lines.get(("model", key)),
                                    f"unknown model setting; known: {', '.join(sorted(known))}"))
        elif (problem := _type_problem(value, defaults[key])) is not None:
            issues.append(SpecIssue(f"model.{key}", lines.get(("model", key)), problem))
    if not issues:
        try:
            overrides = {k: v for k, v in spec.model.items()}
            SencaConfig.from_dict({**overrides, "epochs": spec.training.epochs, "seed": spec.training.seed})
        except Exception as err:  # ConfigError(field, problem)  # noqa: BLE001
            field = getattr(err, "field", None)
            problem = getattr(err, "problem", str(err))
            issues.append(SpecIssue(f"model.{field}" if field else "model",
                                    lines.get(("model", field)) or lines.get(("model",)), problem))
    for key, dim in spec.tuning.search_space.items():
        where = f"tuning.search_space.{key}"
        line = lines.get(("tuning", "search_space", key))
        if key not in known or key in ("device", "seed", "expr_key", "hist_key", "neighbors_key"):
            issues.append(SpecIssue(where, line, "not a tunable model setting (SencaConfig field)"))
            continue
        default = defaults[key]
        for i, v in enumerate(dim.values or []):
            if (problem := _type_problem(v, default)) is not None:
                issues.append(SpecIssue(f"{where}.values[{i}]",
                                        lines.get(("tuning", "search_space", key, "values", i), line), problem))
        if dim.type == "randint" and (isinstance(default, bool) or not isinstance(default, (int, float))):
            issues.append(SpecIssue(f"{where}.type", line, f"randint draws integers; {key} is not a number"))
        if dim.type in ("uniform", "loguniform") and not isinstance(default, float):
            issues.append(SpecIssue(f"{where}.type", line, f"{dim.type} draws real numbers; {key} is not one"))
    return issues


def _duplicate_issues(spec: CohortSpec, lines: dict[tuple, int]) -> list[SpecIssue]:
    issues = []
    seen_p: dict[str, int] = {}
    seen_s: dict[str, tuple[int, int]] = {}
    for pi, patient in enumerate(spec.patients):
        if patient.id in seen_p:
            issues.append(SpecIssue(f"patients[{pi}].id", lines.get(("patients", pi, "id")),
                                    f"duplicate patient id {patient.id!r} (first at patients[{seen_p[patient.id]}])"))
        seen_p.setdefault(patient.id, pi)
        for si, slide in enumerate(patient.slides):
            if slide.id in seen_s:
                a, b = seen_s[slide.id]
                issues.append(SpecIssue(f"patients[{pi}].slides[{si}].id",
                                        lines.get(("patients", pi, "slides", si, "id")),
                                        f"duplicate slide id {slide.id!r} (first at patients[{a}].slides[{b}])"))
            seen_s.setdefault(slide.id, (pi, si))
    return issues


def _resolve(spec: CohortSpec, base: Path, lines: dict[tuple, int]) -> list[SpecIssue]:
    """Resolve every path against ``base`` in place; return the problems (``~user`` that cannot be expanded,
    input paths outside ``base`` when ``paths.confine_to_spec_dir`` is on)."""
    issues: list[SpecIssue] = []
    confine = spec.paths.confine_to_spec_dir
    real_base = base.resolve()

    def fix(p: Path | None, key: tuple, *, is_input: bool = True) -> Path | None:
        if p is None:
            return None
        where, line = _format_loc(key), lines.get(key)
        raw = Path(p)
        try:
            expanded = raw.expanduser()
        except RuntimeError as err:  # '~nosuchuser/...'
            issues.append(SpecIssue(where, line, f"cannot expand {str(raw)!r}: {err}"))
            return raw
        try:
            resolved = expanded if expanded.is_absolute() and not confine else (base / expanded).resolve()
        except (OSError, RuntimeError, ValueError) as err:  # symlink loop, name too long …
            issues.append(SpecIssue(where, line, f"cannot resolve {str(raw)!r}: {err}"))
            return raw
        escape = escape_of(resolved, real_base) if confine and is_input else None
        if escape is not None:  # the path, or a file in its folder (a symlink), resolves outside
            via = "" if escape == str(resolved) else f" through {escape}"
            issues.append(SpecIssue(where, line, f"path {str(raw)!r} points outside the spec's folder "
                                                 f"{str(real_base)!r}{via} (paths.confine_to_spec_dir is true)"))
        return resolved

    for pi, patient in enumerate(spec.patients):
        for si, slide in enumerate(patient.slides):
            for name in PATH_FIELDS:
                if name in type(slide).model_fields:
                    setattr(slide, name, fix(getattr(slide, name), ("patients", pi, "slides", si, name)))
    spec.preprocess.encoder_weights = fix(spec.preprocess.encoder_weights, ("preprocess", "encoder_weights"))
    spec.output_dir = fix(spec.output_dir, ("output_dir",), is_input=False)
    return issues


def validate_data(data: Any, *, source: str = "<spec>", base_dir: str | Path = ".",
                  lines: dict[tuple, int] | None = None) -> CohortSpec:
    """Validate an already-parsed spec (a dict) and resolve its paths relative to ``base_dir``."""
    lines = lines or {}
    if not isinstance(data, dict):
        raise SpecError(source, [SpecIssue("<root>", 1, "the spec must be a YAML mapping (name:, patients:, ...)")])
    try:
        spec = CohortSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(source, _issues_from_validation(err, lines)) from None
    except RecursionError:
        raise SpecError(source, [SpecIssue("<root>", 1, "the spec nests too deeply")]) from None
    issues = _duplicate_issues(spec, lines) + _model_setting_issues(spec, lines)
    issues += _resolve(spec, Path(base_dir).resolve(), lines)
    if issues:
        raise SpecError(source, issues)
    spec._lines = dict(lines)
    spec._source = str(source)
    return spec


def load_spec(path: str | Path) -> CohortSpec:
    """Read, validate and resolve a cohort spec. Raises :class:`SpecError` (field + line) on any problem."""
    path = Path(path)
    try:
        raw = read_spec_bytes(path)  # a regular file under the size cap, never read past it
    except OSError as err:
        raise SpecError(path, [SpecIssue("<file>", None, f"cannot read the spec: {err.strerror or err}")]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise SpecError(path, [SpecIssue("<file>", line, f"not UTF-8 text (byte {raw[err.start]:#04x} at offset "
                                                         f"{err.start}): save the spec as UTF-8")]) from None
    data, lines = parse_yaml(text, str(path))
    if data is None:
        raise SpecError(path, [SpecIssue("<root>", 1, "the spec is empty")])
    return validate_data(data, source=str(path), base_dir=path.resolve().parent, lines=lines)

