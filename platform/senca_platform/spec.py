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
aliases) to more than :data:`MAX_YAML_VALUES` values is refused (``spec_limits``: not a regular file, over 5 MB,
too many patients/slides: before parsing). Non-finite numbers (``.nan``, ``.inf``, ``1e400``) are refused."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, field_validator,
                      model_validator)

from ._confine import escape_of, is_inside
from ._redact import SECRET_WORDS, redact  # noqa: F401 - re-exported (the one redaction helper)
from .spec_limits import read_spec_bytes

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"

#: model settings that the spec sets elsewhere (training section), not under ``model:``
_MODEL_KEYS_SET_ELSEWHERE = {"epochs": "training.epochs", "seed": "training.seed", "device": "training.use_gpu"}


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False, allow_inf_nan=False)


def _path_text(value: Any) -> Any:
    """A path field must be a non-empty string without NUL bytes (pydantic then makes it a Path)."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("path is empty")
        if "\x00" in value:
            raise ValueError("path contains a NUL byte")
    elif not isinstance(value, Path):
        raise ValueError(f"expected a path (a string), got {type(value).__name__}")
    return value


#: a file or folder path in the spec: a non-empty string, relative to the YAML file's folder (or absolute)
SpecPath = Annotated[Path, BeforeValidator(_path_text)]


# ---------------------------------------------------------------------------------------------- slides
class _SlideBase(_Base):
    id: str = Field(pattern=ID_PATTERN, description="slide id, unique across the cohort (used in file names)")


class LegacySTSlide(_SlideBase):
    """A legacy Spatial Transcriptomics section (HER2ST layout): counts TSV + spot selection file."""

    reader: Literal["legacy_st"]
    counts: SpecPath
    spots: SpecPath
    labels: SpecPath | None = None
    image: SpecPath | None = None
    image_scale: float = Field(1.0, gt=0, description="image_xy = spot pixel_xy * image_scale")


class VisiumSlide(_SlideBase):
    """A 10x Visium (Space Ranger ``outs/``) folder."""

    reader: Literal["visium"]
    path: SpecPath
    image: SpecPath | None = None
    labels: SpecPath | None = None


class H5adSlide(_SlideBase):
    """An AnnData file that already follows the senca_core contract."""

    reader: Literal["h5ad"]
    path: SpecPath


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
    encoder: Literal["morphology", "cnn", "vit"] = "morphology"
    encoder_weights: SpecPath | None = None
    concurrency: int | None = Field(None, ge=1, description="slides preprocessed at once (default: CPUs)")
    cpus_per_slide: float = Field(1.0, gt=0)


class TrainingSpec(_Base):
    epochs: int = Field(100, ge=1)
    num_workers: int = Field(2, ge=1, description="Ray Train workers (DDP over slides)")
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = Field(default_factory=lambda: {"CPU": 1.0})
    seed: int = 0
    max_failures: int = Field(1, ge=0, description="worker-group restarts from the last checkpoint")
    min_spots_per_worker: int = Field(5000, ge=0, description="fewer spots per worker: fewer workers (0: off)")
    launcher: Literal["auto", "ray_train"] = Field(
        "auto", description="auto: one Ray task when one worker is enough, Ray Train (DDP) otherwise")
    checkpoint_every_epochs: int = Field(10, ge=1, description="a checkpoint at most every N epochs ...")
    checkpoint_interval_s: float = Field(30.0, ge=0, description="... and at most one per N seconds (+ the last)")
    report_interval_s: float = Field(10.0, ge=0, description="metrics to Ray at least this often")

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
    metric: Literal["auto", "reconstruction", "stability", "silhouette", "loss", "ari"] = Field(
        "auto", description="how the best trial is chosen. auto = reconstruction: R² of held-out spots' expression "
        "(no labels). ari: mean ARI against the annotations - only when asked; the run then says the model was "
        "selected on the annotations it is scored on")
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
    align: Literal["centre", "matched", "none"] = Field(
        "matched", description="remove each slide's offset before pooling (senca_core.tl.cluster align)")
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


class PathsSpec(_Base):
    """How input paths may point: by default anywhere (relative to the YAML file's folder, ``../`` included)."""

    confine_to_spec_dir: bool = Field(
        False, description="true: every input path (slide files, encoder_weights) must stay inside the YAML "
                           "file's folder after resolving '..' and symlinks; absolute paths and escapes are refused")


class CohortSpec(_Base):
    name: str = Field(pattern=ID_PATTERN)
    output_dir: SpecPath = Path("senca_out")
    ray: RaySpec = Field(default_factory=RaySpec)
    patients: list[Patient] = Field(min_length=1)
    preprocess: PreprocessSpec = Field(default_factory=PreprocessSpec)
    model: dict[str, Any] = Field(default_factory=dict, description="senca_core.model.SencaConfig settings")
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    tuning: TuningSpec = Field(default_factory=TuningSpec)
    clustering: ClusteringSpec = Field(default_factory=ClusteringSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    paths: PathsSpec = Field(default_factory=PathsSpec)

    #: the YAML line of every key path and the file name (set by load_spec; empty for a spec built in code)
    _lines: dict = PrivateAttr(default_factory=dict)
    _source: str = PrivateAttr("<spec>")

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
    """One problem: the field as a path (``patients[1].slides[0].counts``), its YAML line and the message.

    ``kind``: ``"schema"`` (the spec itself is invalid), ``"missing"`` (an input file does not exist),
    ``"data"`` (an input file exists but cannot be read as that slide) or ``"cohort"`` (the spec and the data
    disagree, e.g. ``clustering.k`` above the number of spots)."""

    field: str
    line: int | None
    message: str
    kind: str = "schema"

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

    def __reduce__(self):
        return (SpecError, (self.path, self.issues))


# ---------------------------------------------------------------------------------------------- YAML + lines
#: most values a spec may expand to (aliases included): a guard against "billion laughs" alias bombs
MAX_YAML_VALUES = 1_000_000

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _LineLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (same types, same semantics); lines are read from the composed node tree."""


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_graph(node: yaml.Node, name: str) -> None:
    """Refuse a node graph that refers to itself or expands to more than MAX_YAML_VALUES values (iterative:
    no recursion, each shared node visited once)."""
    size: dict[int, int] = {}
    state: dict[int, int] = {}  # 1: expanding, 2: done
    stack: list[tuple[yaml.Node, bool]] = [(node, False)]
    while stack:
        n, post = stack.pop()
        i = id(n)
        if post:
            size[i] = 1 + sum(size[id(c)] for c in _children(n))
            state[i] = 2
            if size[i] > MAX_YAML_VALUES:
                raise SpecError(name, [SpecIssue("<yaml>", n.start_mark.line + 1,
                                                 f"the YAML expands to more than {MAX_YAML_VALUES:,} values "
                                                 "(through anchors/aliases)")])
            continue
        if state.get(i) == 2:
            continue
        if state.get(i) == 1:
            raise SpecError(name, [SpecIssue("<yaml>", n.start_mark.line + 1,
                                             "an alias refers to a node that contains it (recursive YAML)")])
        state[i] = 1
        stack.append((n, True))
        stack.extend((c, False) for c in _children(n))


def _key_text(key_node: yaml.Node) -> str:
    return key_node.value if isinstance(key_node, yaml.ScalarNode) else f"<{key_node.id} key>"


def _node_lines(node: yaml.Node, prefix: tuple = (), out: dict | None = None, name: str = "<spec>",
                _seen: set | None = None) -> dict[tuple, int]:
    """Map every key path (tuple of str keys / int indices) to its 1-based line in the YAML text.

    Also refuses a mapping that repeats a key (plain ``yaml.safe_load`` keeps the last one silently). A node
    reached again through an alias is not walked again (its values keep the lines of their first path)."""
    out = {} if out is None else out
    seen = set() if _seen is None else _seen
    out.setdefault(prefix, node.start_mark.line + 1)
    if id(node) in seen:
        return out
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = _key_text(key_node)
            path = prefix + (key,)
            line = key_node.start_mark.line + 1
            ident = (key_node.tag, key) if isinstance(key_node, yaml.ScalarNode) else None
            if ident is not None and ident in first:
                raise SpecError(name, [SpecIssue(_format_loc(path), line,
                                                 f"duplicate key {key!r} (first at line {first[ident]})")])
            if ident is not None:
                first[ident] = line
            out[path] = line
            _node_lines(value_node, path, out, name, seen)
            out[path] = line  # the key's line wins over its value's
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _node_lines(item, prefix + (i,), out, name, seen)
    return out


def _line_of_offset(text: str, offset: int) -> int:
    return text.count("\n", 0, max(0, offset)) + 1


def _char(c: Any) -> str:
    code = c if isinstance(c, int) else (ord(c) if isinstance(c, str) and len(c) == 1 else None)
    return f"U+{code:04X}" if code is not None else repr(c)


def parse_yaml(text: str, name: str = "<spec>") -> tuple[Any, dict[tuple, int]]:
    """``yaml.safe_load(text)`` plus the line of every key path.

    Raises :class:`SpecError` (field ``<yaml>`` and the line) for a syntax error, a tag safe loading refuses
    (``!!python/object`` …: nothing is constructed), a character YAML does not allow, a duplicate key, a
    recursive alias, an alias bomb or a nesting too deep to parse."""
    if not isinstance(text, str):
        raise SpecError(name, [SpecIssue("<file>", None, f"expected text, got {type(text).__name__}")])
    loader = None
    try:
        loader = _LineLoader(text)  # the reader refuses control characters here already
        node = loader.get_single_node()
        if node is None:
            return None, {}
        _check_graph(node, name)
        lines = _node_lines(node, name=name)  # before construction: merge keys are still as written
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else None
        problem = err.problem or str(err)
        tag = re.search(r"for the tag '([^']*)'", problem)
        if isinstance(err, yaml.constructor.ConstructorError) and tag:
            shown = tag.group(1).replace("tag:yaml.org,2002:", "!!")
            problem = (f"tag {shown!r} is not allowed: the spec is read with safe YAML loading (plain values only; "
                       "nothing is constructed or executed)")
        elif err.context and isinstance(err, yaml.constructor.ConstructorError):
            problem = f"{err.context}: {problem}"
        elif err.context and err.context_mark is not None and err.context_mark.line + 1 != line:
            what = err.context.removeprefix("while parsing ")
            problem = f"{problem} (in {what} started at line {err.context_mark.line + 1})"
        raise SpecError(name, [SpecIssue("<yaml>", line, problem)]) from None
    except yaml.reader.ReaderError as err:
        raise SpecError(name, [SpecIssue("<yaml>", _line_of_offset(text, err.position),
                                         f"character {_char(err.character)} is not allowed in YAML "
                                         f"({err.reason})")]) from None
    except yaml.YAMLError as err:  # any other parser error: still one line, no traceback
        raise SpecError(name, [SpecIssue("<yaml>", None, str(err).replace("\n", " "))]) from None
    except RecursionError:
        raise SpecError(name, [SpecIssue("<yaml>", None, "the YAML nests too deeply to be a cohort spec")]) \
            from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, lines


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


_PATH_FIELDS = ("counts", "spots", "labels", "image", "path")


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
            for name in _PATH_FIELDS:
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


def spec_lines(path: str | Path) -> dict[tuple, int]:
    """The line of every key path of a spec file (for reporting against it later)."""
    return parse_yaml(read_spec_bytes(path).decode("utf-8-sig"), str(path))[1]


# ---------------------------------------------------------------------------------------------- input files
def _slide_key(pi: int, si: int, name: str | None = None) -> tuple:
    return ("patients", pi, "slides", si) + ((name,) if name else ())


def _field_of_file(slide: Any, file: str | None) -> str | None:
    """The slide's spec field whose path is ``file`` or a folder holding it (None when no field matches)."""
    if not file:
        return None
    try:
        target = Path(file).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    for name in _PATH_FIELDS:
        value = getattr(slide, name, None)
        if value is None:
            continue
        p = Path(value).resolve()
        if target == p or is_inside(target, p):
            return name
    return None


def read_slide(slide: Any, patient_id: str):
    """Read one spec slide with its senca_core reader (what a run does first). Raises SlideError."""
    from senca_core import io

    if slide.reader == "legacy_st":
        return io.read_legacy_st(slide.counts, slide.spots, labels=slide.labels, image=slide.image,
                                 image_scale=slide.image_scale, slide_id=slide.id, patient_id=patient_id)
    if slide.reader == "visium":
        return io.read_visium(slide.path, image=slide.image, labels=slide.labels, slide_id=slide.id,
                              patient_id=patient_id)
    return io.read_h5ad(slide.path, slide_id=slide.id, patient_id=patient_id)


def _decode_image(path: str, slide_id: str) -> None:
    """Decode the slide's image once, as the histology stage will, at reduced size where the format allows: a
    JPEG/PNG/TIFF whose header is fine but whose pixel data is cut or corrupt fails here (SlideError).

    Opened with ``senca_core.hist.open_slide`` (its header checks and size limits); a plain image is then decoded
    by Pillow (JPEG in draft mode at 1/8 scale: the whole stream is read, ~50x less memory and time than full
    size), a whole-slide image by reading its smallest pyramid level."""
    import warnings

    import openslide
    from PIL import Image

    from senca_core.errors import SlideError
    from senca_core.hist import open_slide

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's "corrupt EXIF" etc.: an error or nothing, not noise
            with open_slide(path, slide_id=slide_id) as osl:
                if isinstance(osl, openslide.ImageSlide):
                    old = Image.MAX_IMAGE_PIXELS
                    Image.MAX_IMAGE_PIXELS = None  # open_slide enforced its own limit already
                    try:
                        with Image.open(path) as im:
                            if im.format == "JPEG":
                                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
                            im.load()
                    finally:
                        Image.MAX_IMAGE_PIXELS = old
                else:
                    level = osl.level_count - 1
                    osl.read_region((0, 0), level, osl.level_dimensions[level])
    except SlideError:
        raise
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - a decoder error in the pixel data
        raise SlideError(f"image pixel data cannot be decoded ({type(err).__name__}: {err})".replace("\n", " "),
                         slide=slide_id, file=path, field="image") from None


def check_inputs(spec: CohortSpec, *, read: bool = True) -> list[SpecIssue]:
    """Problems with the input files a spec names, each naming the field, the slide and the file.

    - ``kind="missing"``: a file or folder that does not exist (every field of every slide);
    - ``read=True``: each slide whose files all exist is read with its reader (``senca_core.io``, as a run
      does) and its image decoded once; a :class:`senca_core.errors.SlideError` becomes one issue
      (``kind="data"``) on the field of the file at fault (``patients[1].slides[0].counts``) whose message is
      the reader's (slide, file, field, problem);
    - ``read=True``: ``clustering.k`` larger than the number of spots of the slides that could be read
      (``kind="cohort"``): the regions could not be fitted.

    A slide that fails here fails alone at run time; ``senca-platform validate`` prints every issue.
    """
    from senca_core.errors import SlideError

    lines = spec._lines
    issues: list[SpecIssue] = []
    n_spots = 0
    n_read = 0
    for pi, patient in enumerate(spec.patients):
        for si, slide in enumerate(patient.slides):
            missing = False
            for name in _PATH_FIELDS:
                value = getattr(slide, name, None)
                if value is not None and not Path(value).exists():
                    missing = True
                    issues.append(SpecIssue(f"patients[{pi}].slides[{si}].{name}",
                                            lines.get(_slide_key(pi, si, name)),
                                            f"slide {slide.id!r}: file not found: {value}", kind="missing"))
            if missing or not read:
                continue
            try:
                adata = read_slide(slide, patient.id)
                image = adata.uns.get("senca", {}).get("image_path")
                if image:
                    _decode_image(str(image), slide.id)
            except SlideError as err:
                err = err.with_slide(slide.id)
                name = _field_of_file(slide, err.file)
                issues.append(SpecIssue(_format_loc(_slide_key(pi, si, name)),
                                        lines.get(_slide_key(pi, si, name)) or lines.get(_slide_key(pi, si)),
                                        str(err), kind="data"))
                continue
            except MemoryError:
                raise
            except Exception as err:  # noqa: BLE001 - a reader bug must still name the slide, not trace back
                issues.append(SpecIssue(_format_loc(_slide_key(pi, si)), lines.get(_slide_key(pi, si)),
                                        f"slide {slide.id!r}: cannot be read ({type(err).__name__}: {err})"
                                        .replace("\n", " "), kind="data"))
                continue
            n_read += 1
            n_spots += int(adata.n_obs)
            del adata
    k = spec.clustering.k
    if read and n_read and isinstance(k, int) and k > n_spots:
        issues.append(SpecIssue("clustering.k", lines.get(("clustering", "k")),
                                f"k={k} regions but the {n_read} readable slide(s) have only {n_spots} spots "
                                "in all", kind="cohort"))
    if spec.preprocess.encoder_weights is not None and not spec.preprocess.encoder_weights.exists():
        issues.append(SpecIssue("preprocess.encoder_weights", lines.get(("preprocess", "encoder_weights")),
                                f"file not found: {spec.preprocess.encoder_weights}", kind="missing"))
    return issues


def missing_files(spec: CohortSpec, *, read: bool = True) -> list[SpecIssue]:
    """The input problems ``senca-platform validate`` reports: :func:`check_inputs` (missing files and, with
    ``read=True``, slides whose data cannot be read, and ``clustering.k`` above the cohort's spots).
    ``read=False``: only the files that do not exist."""
    return check_inputs(spec, read=read)


def spec_to_dict(spec: CohortSpec) -> dict[str, Any]:
    """The resolved spec as plain JSON-able data (paths as strings), secrets redacted."""
    return redact(spec.model_dump(mode="json"))


def spec_to_yaml(spec: CohortSpec) -> str:
    return yaml.safe_dump(spec_to_dict(spec), sort_keys=False)
