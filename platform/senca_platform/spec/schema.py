"""The cohort spec's schema (``cohort.yaml``): pydantic v2 models with their defaults, and the error types.

Unknown keys are refused everywhere (``extra="forbid"``); non-finite numbers are refused (``allow_inf_nan``).
:class:`SpecIssue` / :class:`SpecError` name the field (dotted path) and the YAML line of every problem."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from .._redact import redact

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


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
    genes: Literal["spatial", "variable"] = Field(
        "spatial", description="spatial: genes by spatial autocorrelation (Moran's I); variable: seurat_v3 HVGs")
    n_top_genes: int | None = Field(None, ge=10, description="genes of the shared panel (default: 2000 spatial, "
                                    "3000 variable)")
    n_pca: int = Field(30, ge=2, description="size of the shared PCA basis")
    patch_size: int = Field(64, ge=8, description="histology patch side in pixels")
    patch_context: float = Field(2.0, gt=0, description="patch side in spot diameters")
    encoder: Literal["morphology", "cnn", "vit"] = "morphology"
    encoder_weights: SpecPath | None = None
    concurrency: int | None = Field(None, ge=1, description="slides preprocessed at once (default: CPUs)")
    cpus_per_slide: float | None = Field(None, gt=0, description="CPUs each slide's task holds (default: an "
                                         "embedded Ray's CPUs shared among the slides, 1 to 4 each; 1 on a cluster)")


class TrainingSpec(_Base):
    epochs: int = Field(200, ge=1, description="full passes over the slides; 200 = SencaConfig's default, chosen by "
                        "leave-one-section-out over 100/200/400 (docs/BENCHMARKS.md)")
    num_workers: int = Field(2, ge=1, description="Ray Train workers (DDP over slides)")
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = Field(default_factory=lambda: {"CPU": 1.0})
    seed: int = 0
    max_failures: int = Field(1, ge=0, description="worker-group restarts from the last checkpoint")
    min_spots_per_worker: int = Field(5000, ge=0, description="fewer spots per worker: fewer workers (0: off)")
    min_spot_epochs_per_worker: int = Field(
        1_500_000, ge=0, description="fewer spot-epochs (spots x epochs) per worker: fewer workers, as a Ray Train "
        "worker group's start (about 10 s on 2 cores) would cost more than it saves (0: off)")
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
    spatial_prior: float = Field(16.0, ge=0, allow_inf_nan=False,
                                 description="gmm: Potts prior weight per spatial neighbour (0: off)")
    prior_em_rounds: int = Field(0, ge=0, le=100, description="gmm + prior, one cut (consensus off): HMRF-EM rounds "
                                                               "re-estimating the mixture from the prior's labels")
    consensus: bool | None = Field(None, description="gmm: the regions two GMM cuts agree on (full covariance on "
                                                     "1x and 2/3x the components, each with HMRF-EM); "
                                                     "default (unset): on unless prior_em_rounds chooses one cut; "
                                                     "false: one cut")
    cut_by: Literal["auto", "cohort", "slide"] = Field(
        "auto", description="several slides: 'slide' cuts each slide alone (k per slide when auto) and matches "
                            "the slides' regions into cohort ids; 'cohort' cuts the pooled spots once; 'auto': "
                            "'slide' when k is auto, 'cohort' when k is a number (senca_core.tl.cluster cut_by)")
    restarts: int = Field(3, ge=1, le=20, description="gmm: the cut fitted from this many clustering seeds, the one "
                                                        "the others agree with most kept (1: one seed; "
                                                        "senca_core.tl.cluster restarts)")
    seed: int = 0

    @field_validator("k")
    @classmethod
    def _k(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 2:
            raise ValueError(f"k must be >= 2 or 'auto', got {v}")
        return v

    @model_validator(mode="after")
    def _one_cut(self) -> "ClusteringSpec":
        if self.consensus is True and self.method == "gmm" and self.prior_em_rounds:
            raise ValueError("prior_em_rounds applies to one GMM cut: set consensus: false to use it (the "
                             "consensus already includes cuts with HMRF-EM)")
        return self


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


#: the slide fields that hold an input path (file or folder)
PATH_FIELDS = ("counts", "spots", "labels", "image", "path")


def spec_to_dict(spec: CohortSpec) -> dict[str, Any]:
    """The resolved spec as plain JSON-able data (paths as strings), secrets redacted."""
    return redact(spec.model_dump(mode="json"))


def spec_to_yaml(spec: CohortSpec) -> str:
    return yaml.safe_dump(spec_to_dict(spec), sort_keys=False)
