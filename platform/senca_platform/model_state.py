"""The model state: what ``predict`` needs beside the registered model to put new spots in the training cohort's
regions (``model_state/``, next to the model in MLflow):

| file | what | from the training run |
|---|---|---|
| ``genes.npy`` | the shared gene panel (str) | ``OUT/preprocess/genes.npy`` |
| ``pca_state.npz`` | the cohort's PCA basis (``senca_core.pp.pca`` state) | ``OUT/preprocess/pca_state.npz`` |
| ``preprocess.json`` | the spec's ``preprocess`` section (gene choice, patches, encoder) | the resolved spec |
| ``region_model.pkl`` | the cohort's fitted ``senca_core.tl.RegionModel`` (slide aligner, reducer, estimator, ids) | ``OUT/infer/region_model.pkl`` |
| ``manifest.json`` | format, cohort, model sha256, k, categories, per-slide reproduction check | |

The region model is the one the infer stage fitted (``senca_core.tl.cluster(..., return_model=True)``), checked
against the run's regions (``OUT/infer/regions``) before it is shipped.

Where predict finds it, in order: the model version's own artifacts (a ``model_state`` directory logged with the
pyfunc), the training run's ``model_state/`` artifacts, else it is built from the training run's output directory
(param ``output_dir``, when this machine sees it) and logged to the run for next time (``attach_model_state``;
``senca-platform models attach-state`` does it explicitly; ``submit``'s job does it right after training).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .registry import _explain, client

STATE_FORMAT = "senca-model-state/2"  # 2: region_model.pkl is a senca_core.tl.RegionModel
STATE_DIR = "model_state"
STATE_FILES = ("genes.npy", "pca_state.npz", "preprocess.json", "region_model.pkl", "manifest.json")


class PredictError(RuntimeError):
    """Predict cannot start (model, model state or slides spec); one line for the user."""


# ============================================================================================ model state
def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def build_model_state(output_dir: str | Path, dest: str | Path, *, preprocess: dict[str, Any],
                      clustering: dict[str, Any], k: int | None = None, cohort: str | None = None,
                      model_sha256: str | None = None, slides: list[str] | None = None) -> dict[str, Any]:
    """Write the model state of a finished cohort run (its ``output_dir``) into ``dest``; returns the manifest.

    ``preprocess`` / ``clustering`` are the resolved spec's sections; ``k`` the number of regions used and
    ``slides`` the cohort's slide ids in spec order (the pooling order of the clustering) — both default to
    ``OUT/cohort_summary.json``. The region model is the infer stage's ``OUT/infer/region_model.pkl``, checked
    against the run's regions: ``manifest["reproduced"]`` is the fraction of spots of each training slide that get their
    training region back (1.0 = exact). Callable before the summary exists (pass ``k`` and ``slides``).
    """
    from jobs.infer import read_obsm
    from jobs.stage_predict import slide_regions

    out = Path(output_dir)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    summary_path = out / "cohort_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for name in ("genes.npy", "pca_state.npz"):
        src = out / "preprocess" / name
        if not src.exists():
            raise PredictError(f"{src} is missing: the run's preprocessing state is not in {out}")
        shutil.copyfile(src, dest / name)
    k = int(k if k is not None else summary.get("k") or 0)
    order = list(slides) if slides else [s["slide"] for s in summary.get("slides", [])]
    emb_dir, reg_dir = out / "infer" / "embeddings", out / "infer" / "regions"
    if not order:
        order = sorted(p.stem for p in reg_dir.glob("*.npy"))
    slides = [s for s in order if (emb_dir / f"{s}.npy").exists() and (reg_dir / f"{s}.npy").exists()]
    if not slides or k < 1:
        raise PredictError(f"{out} has no finished infer stage (infer/embeddings, infer/regions, k)")
    Z = [np.load(emb_dir / f"{s}.npy") for s in slides]
    regions = [np.load(reg_dir / f"{s}.npy").astype(int) for s in slides]
    nbs = [read_obsm(out / "preprocess" / "slides" / f"{s}.h5ad", "spatial_neighbors")
           if (out / "preprocess" / "slides" / f"{s}.h5ad").exists() else None for s in slides]
    method = clustering.get("method", "gmm")
    src = out / "infer" / "region_model.pkl"
    if not src.exists():
        raise PredictError(f"{src} is missing: the run's infer stage predates the saved region model; rerun it "
                           "(senca-platform run --fresh)")
    with open(src, "rb") as fh:
        region_model = pickle.load(fh)  # noqa: S301 - written by this run's infer stage
    reproduced = {s: float(np.mean(slide_regions(region_model, z, nb) == r))
                  for s, z, nb, r in zip(slides, Z, nbs, regions)}
    categories = [str(i) for i in range(max(int(region_model.k), int(max(r.max() for r in regions)) + 1))]
    shutil.copyfile(src, dest / "region_model.pkl")
    (dest / "preprocess.json").write_text(json.dumps(preprocess, indent=2, default=str))
    genes = np.load(dest / "genes.npy", allow_pickle=False)
    with np.load(dest / "pca_state.npz", allow_pickle=False) as z:
        n_comps = int(z["n_comps"])
    manifest = {"format": STATE_FORMAT, "cohort": cohort or summary.get("cohort"), "model_sha256": model_sha256,
                "k": k, "method": method, "refine": bool(region_model.refine),
                "seed": int(clustering.get("seed", 0)), "align": clustering.get("align", "matched"),
                "categories": categories, "n_genes_panel": int(len(genes)), "n_pca": n_comps,
                "training_slides": slides, "reproduced": reproduced, "exact": bool(method != "leiden" and reproduced
                                                                             and min(reproduced.values()) == 1.0),
                "files": {n: _sha256(dest / n) for n in STATE_FILES if n != "manifest.json"},
                "region_names": _read_json(out / "infer" / "region_names.json"),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def _download(mc, run_id: str, path: str, dst: str | Path) -> Path | None:
    import mlflow.artifacts

    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst),
                                                        tracking_uri=mc.tracking_uri))
    except Exception:  # noqa: BLE001 - absent
        return None


def _training_spec(mc, run_id: str) -> dict[str, Any]:
    """The training run's resolved spec (artifact ``spec/cohort.resolved.yaml``), else rebuilt from its params."""
    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        path = _download(mc, run_id, "spec/cohort.resolved.yaml", tmp)
        if path is not None and path.exists():
            return yaml.safe_load(path.read_text()) or {}
    params = mc.get_run(run_id).data.params
    spec: dict[str, Any] = {}
    for key, value in params.items():
        if "." in key and key.split(".", 1)[0] in ("preprocess", "clustering"):
            section, name = key.split(".", 1)
            try:
                spec.setdefault(section, {})[name] = json.loads(value)
            except ValueError:
                spec.setdefault(section, {})[name] = None if value == "None" else value
    return spec


def attach_model_state(tracking_uri: str, run_id: str, output_dir: str | Path | None = None, *,
                       model_name: str | None = None, model_version: str | int | None = None,
                       echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build the model state of the cohort run ``run_id`` from its output directory (default: the run's
    ``output_dir`` param) and log it as the run's ``model_state/`` artifacts; tag the run (and the model version,
    when given) ``senca.model_state``. Returns the manifest. Refuses when the output directory's model is not the
    registered one (sha256 differs)."""
    echo = echo or (lambda m: None)
    mc = client(tracking_uri)
    try:
        run = mc.get_run(run_id)
    except Exception as err:  # noqa: BLE001
        raise _explain(err, tracking_uri, f"run {run_id}") from None
    out = Path(output_dir or run.data.params.get("output_dir") or "")
    if not str(out) or not (out / "cohort_summary.json").exists():
        raise PredictError(f"the training run's output directory {str(out) or '(unknown)'} is not readable here: "
                           "run `senca-platform models attach-state` where it is (or pass --output-dir)")
    summary = json.loads((out / "cohort_summary.json").read_text())
    sha = None
    model_path = summary.get("model_path")
    if model_path and Path(model_path).exists():
        sha = _sha256(model_path)
    if model_name and model_version is not None:
        mv = mc.get_model_version(model_name, str(model_version))
        want = (mv.tags or {}).get("senca.model_sha256")
        if want and sha and want != sha:
            raise PredictError(f"{out} now holds another model than {model_name} version {model_version} "
                               "(sha256 differs): its model state cannot be rebuilt from there")
    spec = _training_spec(mc, run_id)
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / STATE_DIR
        manifest = build_model_state(out, dest, preprocess=spec.get("preprocess") or {},
                                     clustering=spec.get("clustering") or {}, k=summary.get("k"),
                                     cohort=summary.get("cohort"), model_sha256=sha)
        mc.log_artifacts(run_id, str(dest), STATE_DIR)
    mc.set_tag(run_id, "senca.model_state", STATE_DIR)
    if model_name and model_version is not None:
        mc.set_model_version_tag(model_name, str(model_version), "senca.model_state", f"runs:/{run_id}/{STATE_DIR}")
    worst = min(manifest["reproduced"].values()) if manifest["reproduced"] else None
    echo(f"model state attached to run {run_id} ({STATE_DIR}/: gene panel {manifest['n_genes_panel']}, "
         f"PCA {manifest['n_pca']}, {manifest['method']} k={manifest['k']}; training regions reproduced "
         f"{'-' if worst is None else f'{worst:.1%}'} (worst slide))")
    return manifest


@dataclass
class ModelState:
    root: Path
    manifest: dict[str, Any]
    genes: np.ndarray
    pca_state: dict[str, Any]
    preprocess: dict[str, Any]
    region_model: Any  # senca_core.tl.RegionModel
    source: str = ""


def _find_state_dir(root: Path) -> Path | None:
    for manifest in sorted(root.rglob("manifest.json")):
        try:
            if json.loads(manifest.read_text()).get("format") == STATE_FORMAT:
                return manifest.parent
        except (OSError, ValueError):
            continue
    return None


def load_state_dir(path: str | Path, source: str = "") -> ModelState:
    from jobs.preprocess import load_state

    path = Path(path)
    missing = [n for n in STATE_FILES if not (path / n).exists()]
    if missing:
        raise PredictError(f"model state at {source or path} is incomplete: missing {', '.join(missing)}")
    manifest = json.loads((path / "manifest.json").read_text())
    if manifest.get("format") != STATE_FORMAT:
        raise PredictError(f"model state at {source or path} has format {manifest.get('format')!r}, this version "
                           f"reads {STATE_FORMAT!r}: rebuild it with `senca-platform models attach-state`")
    for name, sha in (manifest.get("files") or {}).items():
        if _sha256(path / name) != sha:
            raise PredictError(f"model state file {name} at {source or path} does not match its manifest")
    with open(path / "region_model.pkl", "rb") as fh:
        region_model = pickle.load(fh)  # noqa: S301 - our own artifact, checked against the manifest
    return ModelState(root=path, manifest=manifest, genes=np.load(path / "genes.npy", allow_pickle=False),
                      pca_state=load_state(path / "pca_state.npz"),
                      preprocess=json.loads((path / "preprocess.json").read_text()), region_model=region_model,
                      source=source or str(path))


def resolve_model_state(mc, tracking_uri: str, mv, model_dir: Path, work: Path,
                        echo: Callable[[str], None]) -> ModelState:
    """The model state of a model version: its own artifacts, the run's ``model_state/``, or built from the run's
    output directory (and then attached to the run)."""
    found = _find_state_dir(model_dir)
    if found is not None:
        return load_state_dir(found, f"models:/{mv.name}/{mv.version} ({found.relative_to(model_dir)})")
    if not mv.run_id:
        raise PredictError(f"{mv.name} version {mv.version} has no training run: no model state to preprocess with")
    got = _download(mc, mv.run_id, STATE_DIR, work)
    if got is not None and (got / "manifest.json").exists():
        return load_state_dir(got, f"runs:/{mv.run_id}/{STATE_DIR}")
    echo(f"the training run {mv.run_id} has no {STATE_DIR}/ yet: building it from its output directory")
    try:
        attach_model_state(tracking_uri, mv.run_id, model_name=mv.name, model_version=mv.version, echo=echo)
    except PredictError as err:
        raise PredictError(f"{mv.name} version {mv.version}: no model state (gene panel, PCA basis, region "
                           f"model) in MLflow, and {err}") from None
    got = _download(mc, mv.run_id, STATE_DIR, work / "attached")
    if got is None:
        raise PredictError(f"could not read back runs:/{mv.run_id}/{STATE_DIR}")
    return load_state_dir(got, f"runs:/{mv.run_id}/{STATE_DIR}")


def attach_after_run(tracker, model_info: dict[str, Any], out: Path, echo) -> None:
    """Log what ``predict`` needs (gene panel, PCA basis, region model) with the run, so a registered version is
    usable where this output directory is not visible. A failure here leaves the regions intact: it is reported,
    and ``senca-platform models attach-state`` can redo it."""
    from .model_state import attach_model_state

    try:
        attach_model_state(tracker.uri, tracker.run_id, out, model_name=model_info.get("name"),
                           model_version=model_info.get("version"))
        echo("model state for predict logged with the run (gene panel, PCA basis, region model)")
    except Exception as err:  # noqa: BLE001 - never lose finished results over this
        echo(f"warning: model state for predict not logged ({type(err).__name__}: {err}); "
             "run `senca-platform models attach-state` later")
