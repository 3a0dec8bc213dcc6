"""The cohort spec (``cohort.yaml``): a pydantic v2 model, loaded with the YAML line of every field.

``load_spec(path)`` reads the file with ``yaml.safe_load`` semantics (a ``SafeLoader`` that also keeps the
line of every node), validates it and resolves every path relative to the YAML file's folder. Any problem
raises :class:`SpecError`, whose message names the field (dotted path, e.g. ``patients[0].slides[1].counts``)
and the line of the YAML file (``cohort.yaml:12``). Unknown keys are refused everywhere (``extra="forbid"``).

Only the schema is checked here; whether the input files exist is reported by :func:`missing_files`
(``senca-platform validate`` prints them; at run time a missing file fails only that slide).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"

#: model settings that the spec sets elsewhere (training section), not under ``model:``
_MODEL_KEYS_SET_ELSEWHERE = {"epochs": "training.epochs", "seed": "training.seed", "device": "training.use_gpu"}


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False)


# ---------------------------------------------------------------------------------------------- slides
class _SlideBase(_Base):
    id: str = Field(pattern=ID_PATTERN, description="slide id, unique across the cohort (used in file names)")


class LegacySTSlide(_SlideBase):
    """A legacy Spatial Transcriptomics section (HER2ST layout): counts TSV + spot selection file."""

    reader: Literal["legacy_st"]
    counts: Path
    spots: Path
    labels: Path | None = None
    image: Path | None = None
    image_scale: float = Field(1.0, gt=0, description="image_xy = spot pixel_xy * image_scale")


class VisiumSlide(_SlideBase):
    """A 10x Visium (Space Ranger ``outs/``) folder."""

    reader: Literal["visium"]
    path: Path
    image: Path | None = None
    labels: Path | None = None


class H5adSlide(_SlideBase):
    """An AnnData file that already follows the senca_core contract."""

    reader: Literal["h5ad"]
    path: Path


Slide = Annotated[Union[LegacySTSlide, VisiumSlide, H5adSlide], Field(discriminator="reader")]


class Patient(_Base):
    id: str = Field(pattern=ID_PATTERN)
    slides: list[Slide] = Field(min_length=1)


# ---------------------------------------------------------------------------------------------- stages
class PreprocessSpec(_Base):
    n_top_genes: int = Field(3000, ge=10, description="highly variable genes of the shared panel")
    n_pca: int = Field(30, ge=2, description="size of the shared PCA basis")
    patch_size: int = Field(64, ge=8, description="histology patch side in pixels")
    patch_context: float = Field(2.0, gt=0, description="patch side in spot diameters")
    encoder: Literal["morphology", "cnn"] = "morphology"
    encoder_weights: Path | None = None
    concurrency: int | None = Field(None, ge=1, description="slides preprocessed at once (default: CPUs)")
    cpus_per_slide: float = Field(1.0, gt=0)


class TrainingSpec(_Base):
    epochs: int = Field(100, ge=1)
    num_workers: int = Field(2, ge=1, description="Ray Train workers (DDP over slides)")
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = Field(default_factory=lambda: {"CPU": 1.0})
    seed: int = 0
    max_failures: int = Field(1, ge=0, description="worker-group restarts from the last checkpoint")

    @field_validator("resources_per_worker")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        for key, value in v.items():
            if value < 0:
                raise ValueError(f"resource {key!r} must be >= 0, got {value}")
        return v


class SearchDim(_Base):
    """One tuned hyperparameter: ``choice``/``grid`` take ``values``; ``uniform``/``loguniform``/``randint``
    take ``low`` and ``high``."""

    type: Literal["choice", "grid", "uniform", "loguniform", "randint"]
    values: list[Any] | None = None
    low: float | None = None
    high: float | None = None

    @model_validator(mode="after")
    def _shape(self) -> "SearchDim":
        if self.type in ("choice", "grid"):
            if not self.values:
                raise ValueError(f"type {self.type!r} needs a non-empty 'values' list")
            if self.low is not None or self.high is not None:
                raise ValueError(f"type {self.type!r} takes 'values', not 'low'/'high'")
        else:
            if self.low is None or self.high is None:
                raise ValueError(f"type {self.type!r} needs 'low' and 'high'")
            if self.values is not None:
                raise ValueError(f"type {self.type!r} takes 'low'/'high', not 'values'")
            if not self.low < self.high:
                raise ValueError(f"'low' ({self.low}) must be < 'high' ({self.high})")
            if self.type == "loguniform" and self.low <= 0:
                raise ValueError("'low' must be > 0 for loguniform")
        return self


class TuningSpec(_Base):
    enabled: bool = False
    num_samples: int = Field(4, ge=1)
    scheduler: Literal["asha", "fifo"] = "asha"
    metric: Literal["auto", "ari", "silhouette", "loss"] = Field(
        "auto", description="auto: mean ARI when any slide has labels, else embedding silhouette")
    epochs: int | None = Field(None, ge=1, description="epochs per trial (default: training.epochs)")
    eval_every: int = Field(1, ge=1, description="epochs between objective evaluations inside a trial")
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)
    max_concurrent_trials: int | None = Field(None, ge=1)
    trial_resources: dict[str, float] = Field(default_factory=lambda: {"cpu": 0.01})
    keep: Literal["checkpoint", "retrain"] = Field(
        "checkpoint", description="checkpoint: keep the best trial's model; retrain: train its config again")
    search_space: dict[str, SearchDim] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _space(self) -> "TuningSpec":
        if self.enabled and not self.search_space:
            raise ValueError("tuning is enabled but 'search_space' is empty")
        return self


class ClusteringSpec(_Base):
    k: int | Literal["auto"] = "auto"
    method: Literal["gmm", "kmeans", "leiden"] = "gmm"
    refine: bool = True
    seed: int = 0

    @field_validator("k")
    @classmethod
    def _k(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 2:
            raise ValueError(f"k must be >= 2 or 'auto', got {v}")
        return v


class TrackingSpec(_Base):
    uri: str | None = Field(None, description="MLflow tracking URI (default sqlite:///<output_dir>/mlflow.db)")
    experiment: str | None = Field(None, description="default: the cohort name")
    model_name: str | None = Field(None, description="registered model name (default: the cohort name)")
    alias: str = Field("champion", pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    register_model: bool = True


class RaySpec(_Base):
    address: str | None = Field(None, description="absent: start an embedded local Ray")
    num_cpus: int | None = Field(None, ge=1, description="embedded Ray only (default: all cores)")


class CohortSpec(_Base):
    name: str = Field(pattern=ID_PATTERN)
    output_dir: Path = Path("senca_out")
    ray: RaySpec = Field(default_factory=RaySpec)
    patients: list[Patient] = Field(min_length=1)
    preprocess: PreprocessSpec = Field(default_factory=PreprocessSpec)
    model: dict[str, Any] = Field(default_factory=dict, description="senca_core.model.SencaConfig settings")
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    tuning: TuningSpec = Field(default_factory=TuningSpec)
    clustering: ClusteringSpec = Field(default_factory=ClusteringSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)

    # ------------------------------------------------------------------ convenience
    def slides(self) -> list[tuple[str, Any]]:
        """``[(patient_id, slide), ...]`` in spec order."""
        return [(p.id, s) for p in self.patients for s in p.slides]

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def model_name(self) -> str:
        return self.tracking.model_name or self.name

    def tracking_uri(self) -> str:
        if self.tracking.uri:
            return self.tracking.uri
        return f"sqlite:///{Path(self.output_dir).resolve() / 'mlflow.db'}"


# ---------------------------------------------------------------------------------------------- errors
@dataclass
class SpecIssue:
    field: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.field}: {self.message}"


class SpecError(ValueError):
    """One or more problems with a cohort spec; each names the field and the YAML line."""

    def __init__(self, path: str | Path, issues: list[SpecIssue]):
        self.path = str(path)
        self.issues = issues
        lines = [f"{self.path}:{i.line or '?'}: {i.field}: {i.message}" for i in issues]
        super().__init__(f"invalid cohort spec {self.path} ({len(issues)} problem(s)):\n  " + "\n  ".join(lines))


# ---------------------------------------------------------------------------------------------- YAML + lines
class _LineLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (same types, same semantics); lines are read from the composed node tree."""


def _node_lines(node: yaml.Node, prefix: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Map every key path (tuple of str keys / int indices) to its 1-based line in the YAML text."""
    out = {} if out is None else out
    out.setdefault(prefix, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            path = prefix + (key,)
            out[path] = key_node.start_mark.line + 1
            _node_lines(value_node, path, out)
            out[path] = key_node.start_mark.line + 1  # the key's line wins over its value's
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _node_lines(item, prefix + (i,), out)
    return out


def parse_yaml(text: str, name: str = "<spec>") -> tuple[Any, dict[tuple, int]]:
    """``yaml.safe_load(text)`` plus the line of every key path."""
    loader = _LineLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else None
        raise SpecError(name, [SpecIssue("<yaml>", line, f"{err.problem or err}")]) from None
    finally:
        loader.dispose()
    return data, _node_lines(node)


def _format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def _locate(loc: tuple, lines: dict[tuple, int]) -> tuple[tuple, int | None]:
    """Match a pydantic error location onto the YAML key paths (skipping union tags); deepest known line."""
    path: tuple = ()
    best = lines.get((), None)
    for part in loc:
        candidate = path + (part,)
        if candidate in lines:
            path = candidate
            best = lines[candidate]
        # else: a union tag ('legacy_st') or a missing key: keep the parent's line
    return path, best


def _issues_from_validation(err: ValidationError, lines: dict[tuple, int]) -> list[SpecIssue]:
    issues = []
    for e in err.errors():
        loc = tuple(e["loc"])
        if e["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc = loc + ("reader",)
        path, line = _locate(loc, lines)
        # show the path as the user wrote it (no union tags), ending with the offending key
        shown = path if (loc and path and path[-1] == loc[-1]) else path + ((loc[-1],) if loc else ())
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (not allowed here)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] == "union_tag_invalid":
            msg = f"unknown reader {e['input'] if not isinstance(e['input'], dict) else e['input'].get('reader')!r}; " \
                  "expected one of: legacy_st, visium, h5ad"
        elif e["type"] == "union_tag_not_found":
            msg = "required field is missing (one of: legacy_st, visium, h5ad)"
        issues.append(SpecIssue(_format_loc(shown), line, msg))
    return issues


def _model_setting_issues(spec: CohortSpec, lines: dict[tuple, int]) -> list[SpecIssue]:
    """``model:`` and ``tuning.search_space`` keys must be SencaConfig fields (checked when senca_core is there)."""
    issues: list[SpecIssue] = []
    try:
        from dataclasses import fields

        from senca_core.model import SencaConfig
    except Exception:  # noqa: BLE001 - the model package may not be importable yet; skip the check
        return issues
    known = {f.name for f in fields(SencaConfig)}
    for key in spec.model:
        if key in _MODEL_KEYS_SET_ELSEWHERE:
            issues.append(SpecIssue(f"model.{key}", lines.get(("model", key)),
                                    f"set it as {_MODEL_KEYS_SET_ELSEWHERE[key]}, not under model"))
        elif key not in known:
            issues.append(SpecIssue(f"model.{key}", lines.get(("model", key)),
                                    f"unknown model setting; known: {', '.join(sorted(known))}"))
    if not issues:
        try:
            overrides = {k: v for k, v in spec.model.items()}
            SencaConfig.from_dict({**overrides, "epochs": spec.training.epochs, "seed": spec.training.seed})
        except Exception as err:  # ConfigError(field, problem)
            field = getattr(err, "field", None)
            problem = getattr(err, "problem", str(err))
            issues.append(SpecIssue(f"model.{field}" if field else "model",
                                    lines.get(("model", field)) or lines.get(("model",)), problem))
    for key in spec.tuning.search_space:
        if key not in known or key in ("device", "seed", "expr_key", "hist_key", "neighbors_key"):
            issues.append(SpecIssue(f"tuning.search_space.{key}", lines.get(("tuning", "search_space", key)),
                                    "not a tunable model setting (SencaConfig field)"))
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


_PATH_FIELDS = ("counts", "spots", "labels", "image", "path")


def _resolve(spec: CohortSpec, base: Path) -> CohortSpec:
    def fix(p: Path | None) -> Path | None:
        if p is None:
            return None
        p = Path(p).expanduser()
        return p if p.is_absolute() else (base / p).resolve()

    for patient in spec.patients:
        for slide in patient.slides:
            for name in _PATH_FIELDS:
                if name in type(slide).model_fields:
                    setattr(slide, name, fix(getattr(slide, name)))
    spec.preprocess.encoder_weights = fix(spec.preprocess.encoder_weights)
    spec.output_dir = fix(spec.output_dir)
    return spec


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
    issues = _duplicate_issues(spec, lines) + _model_setting_issues(spec, lines)
    if issues:
        raise SpecError(source, issues)
    return _resolve(spec, Path(base_dir).resolve())


def load_spec(path: str | Path) -> CohortSpec:
    """Read, validate and resolve a cohort spec. Raises :class:`SpecError` (field + line) on any problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecError(path, [SpecIssue("<file>", None, f"cannot read the spec: {err.strerror or err}")]) from None
    data, lines = parse_yaml(text, str(path))
    if data is None:
        raise SpecError(path, [SpecIssue("<root>", 1, "the spec is empty")])
    return validate_data(data, source=str(path), base_dir=path.resolve().parent, lines=lines)


def spec_lines(path: str | Path) -> dict[tuple, int]:
    """The line of every key path of a spec file (for reporting against it later)."""
    return parse_yaml(Path(path).read_text(), str(path))[1]


def missing_files(spec: CohortSpec) -> list[SpecIssue]:
    """Input files named by the spec that do not exist (field paths as in the YAML; no lines)."""
    issues = []
    for pi, patient in enumerate(spec.patients):
        for si, slide in enumerate(patient.slides):
            for name in _PATH_FIELDS:
                value = getattr(slide, name, None)
                if value is not None and not Path(value).exists():
                    issues.append(SpecIssue(f"patients[{pi}].slides[{si}].{name}", None,
                                            f"slide {slide.id!r}: file not found: {value}"))
    if spec.preprocess.encoder_weights is not None and not spec.preprocess.encoder_weights.exists():
        issues.append(SpecIssue("preprocess.encoder_weights", None,
                                f"file not found: {spec.preprocess.encoder_weights}"))
    return issues


_SECRET_KEY = re.compile(r"(password|passwd|secret|token|credential|api[_-]?key)", re.I)
_URI_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)([^/@]+)@")


def redact(value: Any, key: str = "") -> Any:
    """Remove secrets before anything is logged: values under secret-looking keys and URI user:password parts."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if key and _SECRET_KEY.search(key):
        return "***"
    if isinstance(value, str):
        return _URI_USERINFO.sub(r"\1***@", value)
    return value


def spec_to_dict(spec: CohortSpec) -> dict[str, Any]:
    """The resolved spec as plain JSON-able data (paths as strings), secrets redacted."""
    return redact(spec.model_dump(mode="json"))


def spec_to_yaml(spec: CohortSpec) -> str:
    return yaml.safe_dump(spec_to_dict(spec), sort_keys=False)
