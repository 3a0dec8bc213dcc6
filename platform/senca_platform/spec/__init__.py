"""The cohort spec (``cohort.yaml``): a pydantic v2 model, loaded with the YAML line of every field.

``load_spec(path)`` reads the file with ``yaml.safe_load`` semantics (a ``SafeLoader`` that also keeps the
line of every node), validates it and resolves every path relative to the YAML file's folder. Any problem
raises :class:`SpecError`, whose message names the field (dotted path, e.g. ``patients[0].slides[1].counts``)
and the line of the YAML file (``cohort.yaml:12``). Unknown keys are refused everywhere (``extra="forbid"``).

Only the schema is checked here; whether the input files exist and can be read is reported by
:func:`check_inputs` / :func:`missing_files` (``senca-platform validate`` prints them; at run time a missing or
bad file fails only that slide).

The YAML is parsed with safe semantics only (no ``!!python/...`` tags: refused with the line, nothing is
constructed), duplicate keys are refused, and a spec that nests too deeply, refers to itself or expands (through
aliases) to more than :data:`MAX_YAML_VALUES` values is refused (``limits``: not a regular file, over 5 MB,
too many patients/slides: before parsing). Non-finite numbers (``.nan``, ``.inf``, ``1e400``) are refused.

Modules: ``schema`` (the models, their defaults, :class:`SpecIssue` / :class:`SpecError`), ``yaml_lines``
(:func:`parse_yaml`), ``limits`` (size limits checked before parsing, resource warnings), ``validate``
(:func:`validate_data`, :func:`load_spec`), ``checks`` (the input files: :func:`check_inputs`), ``plan``
(:func:`build_plan`: the spec as the plain data ``jobs.pipeline`` takes)."""

from .._redact import SECRET_WORDS, redact  # noqa: F401 - re-exported (the one redaction helper)
from . import checks as _checks
from .checks import check_inputs, missing_files, read_slide
from .limits import MAX_PATIENTS, MAX_SLIDES, MAX_SPEC_BYTES, check_cohort_size, read_spec_bytes, resource_warnings
from .plan import build_plan, slide_entries
from .schema import (ID_PATTERN, PATH_FIELDS, ClusteringSpec, CohortSpec, H5adSlide, LegacySTSlide, PathsSpec,
                     Patient, PreprocessSpec, RaySpec, SearchDim, Slide, SpecError, SpecIssue, SpecPath,
                     TrackingSpec, TrainingSpec, TuningSpec, VisiumSlide, spec_to_dict, spec_to_yaml)
from .validate import load_spec, validate_data
from .yaml_lines import MAX_YAML_VALUES, parse_yaml

_decode_image = _checks._decode_image  # private, kept importable here for tests/test_fuzz_readers.py

__all__ = ["ID_PATTERN", "MAX_PATIENTS", "MAX_SLIDES", "MAX_SPEC_BYTES", "MAX_YAML_VALUES", "PATH_FIELDS",
           "SECRET_WORDS", "ClusteringSpec", "CohortSpec", "H5adSlide", "LegacySTSlide", "PathsSpec", "Patient",
           "PreprocessSpec", "RaySpec", "SearchDim", "Slide", "SpecError", "SpecIssue", "SpecPath", "TrackingSpec",
           "TrainingSpec", "TuningSpec", "VisiumSlide", "build_plan", "check_cohort_size", "check_inputs",
           "load_spec", "missing_files", "parse_yaml", "read_slide", "read_spec_bytes", "redact", "resource_warnings",
           "spec_to_dict", "spec_to_yaml", "validate_data"]
