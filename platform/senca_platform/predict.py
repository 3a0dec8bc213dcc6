"""Apply a registered SENCA-st model to new slides (no training): ``senca-platform predict --model models:/NAME@ALIAS``.

A prediction must preprocess a new slide exactly as the training cohort was preprocessed and put its spots in the
SAME regions. So a model version comes with its **model state** (``model_state/``, next to the model in MLflow):

| file | what | from the training run |
|---|---|---|
| ``genes.npy`` | the shared gene panel (str) | ``OUT/preprocess/genes.npy`` |
| ``pca_state.npz`` | the cohort's PCA basis (``senca_core.pp.pca`` state) | ``OUT/preprocess/pca_state.npz`` |
| ``preprocess.json`` | the spec's ``preprocess`` section (HVGs, patches, encoder) | the resolved spec |
| ``region_model.pkl`` | the cohort's fitted ``senca_core.tl.RegionModel`` (slide aligner, reducer, estimator, ids) | ``OUT/infer/region_model.pkl`` |
| ``manifest.json`` | format, cohort, model sha256, k, categories, per-slide reproduction check | |

The region model is the one the infer stage fitted (``senca_core.tl.cluster(..., return_model=True)``), checked
against the run's regions (``OUT/infer/regions``) before it is shipped.

Where predict finds it, in order: the model version's own artifacts (a ``model_state`` directory logged with the
pyfunc), the training run's ``model_state/`` artifacts, else it is built from the training run's output directory
(param ``output_dir``, when this machine sees it) and logged to the run for next time (``attach_model_state``;
``senca-platform models attach-state`` does it explicitly; ``submit``'s job does it right after training).

Per slide (in this process; no Ray needed): read + ``jobs.preprocess.prepare_slide`` with the training
``preprocess`` settings → subset to the shared panel and ``senca_core.pp.pca_project`` on the cohort basis → the
registered model's region readout (``senca_core.model.readout`` on the SencaModel inside the registered pyfunc, as
the pipeline's infer stage does) → regions with the region model → ``jobs.infer.summarise_slide`` (ARI/NMI when labels,
heterogeneity, micro-environment, markers, region map, ``slides/<slide>.h5ad``) → per-patient table.
For a slide of the training cohort this reproduces the training run's regions exactly (tested).

Outputs under ``--out``: ``predict_summary.json``, ``slides/<slide>.h5ad``, ``maps/<slide>_regions.png``,
``tables/patients.{parquet,csv}``, ``tables/slides.{parquet,csv}``, ``preprocess/``, ``infer/``; one MLflow run
(``senca.role=predict``, tags ``senca.model_name`` / ``senca.model_version`` / ``senca.training_run_id``, in the
training run's experiment unless ``--experiment``) with the tables, region maps and summary as artifacts.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ._redact import redact_text
from .registry import ModelRef, _explain, client, get_version, parse_model_uri, redact_uri

STATE_FORMAT = "senca-model-state/2"  # 2: region_model.pkl is a senca_core.tl.RegionModel
STATE_DIR = "model_state"
STATE_FILES = ("genes.npy", "pca_state.npz", "preprocess.json", "region_model.pkl", "manifest.json")


class PredictError(RuntimeError):
    """Predict cannot start (model, model state or slides spec); one line for the user."""


# ============================================================================================ region model
def assign_regions(region_model, embedding: np.ndarray, neighbors: np.ndarray | None) -> np.ndarray:
    """Region ids (ints, the training cohort's ids) of one slide's spots: ``senca_core.tl.RegionModel.labels``
    (the slide aligned onto the cohort like at fit time, reduced, the fitted estimator, refined)."""
    return np.asarray(region_model.labels(np.asarray(embedding, dtype=np.float64), neighbors), dtype=int)


# ============================================================================================ model state
def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _read_obsm(path: str | Path, key: str) -> np.ndarray | None:
    import anndata as ad
    import h5py

    read_elem = getattr(getattr(ad, "io", ad), "read_elem", None) or ad.experimental.read_elem
    with h5py.File(path, "r") as f:
        return None if f"obsm/{key}" not in f else np.asarray(read_elem(f[f"obsm/{key}"]))


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
    nbs = [_read_obsm(out / "preprocess" / "slides" / f"{s}.h5ad", "spatial_neighbors")
           if (out / "preprocess" / "slides" / f"{s}.h5ad").exists() else None for s in slides]
    method = clustering.get("method", "gmm")
    src = out / "infer" / "region_model.pkl"
    if not src.exists():
        raise PredictError(f"{src} is missing: the run's infer stage predates the saved region model; rerun it "
                           "(senca-platform run --fresh)")
    with open(src, "rb") as fh:
        region_model = pickle.load(fh)  # noqa: S301 - written by this run's infer stage
    reproduced = {s: float(np.mean(assign_regions(region_model, z, nb) == r))
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
    from jobs.preprocess import _load_state

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
                      pca_state=_load_state(path / "pca_state.npz"),
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


# ============================================================================================ slides spec
def load_slides(path: str | Path):
    """A slides file: ``patients:`` as in a cohort spec (readers, paths relative to the file, labels optional),
    plus optional ``name`` and ``output_dir``; a full cohort.yaml is accepted (only its patients are used).
    Errors name the field and the line (``SpecError``)."""
    from .spec import SpecError, SpecIssue, parse_yaml, validate_data

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecError(path, [SpecIssue("<file>", None, f"cannot read the slides file: {err.strerror or err}")]) \
            from None
    data, lines = parse_yaml(text, str(path))
    if not isinstance(data, dict):
        raise SpecError(path, [SpecIssue("<root>", 1, "the slides file must be a mapping with 'patients:'")])
    explicit_out = "output_dir" in data
    data = dict(data)
    data.setdefault("name", path.stem.replace(" ", "_") or "predict")
    spec = validate_data(data, source=str(path), base_dir=path.resolve().parent, lines=lines)
    return spec, explicit_out


# ============================================================================================ predict
@dataclass
class PredictResult:
    summary: dict[str, Any]
    summary_path: Path
    exit_code: int
    extra: dict[str, Any] = field(default_factory=dict)


def _project(prepared: Path, state: ModelState, out_path: Path) -> dict[str, Any]:
    """Subset a prepared slide to the shared panel (genes it lacks are left out: ``pca_project`` takes them at
    the basis mean) and project it on the cohort's PCA basis. Same result as ``jobs.preprocess.project_slide``
    for a slide that has every panel gene."""
    import anndata as ad
    from senca_core import pp

    from jobs._util import atomic_write_with

    adata = ad.read_h5ad(prepared)
    idx = adata.var_names.get_indexer(state.genes)
    present = idx >= 0
    adata = adata[:, idx[present]].copy()
    pp.pca_project(adata, state.pca_state)
    adata.uns.setdefault("senca", {})["gene_panel"] = {"n_genes": int(len(state.genes)), "shared": True,
                                                       "n_missing": int((~present).sum())}
    atomic_write_with(out_path, lambda tmp: adata.write_h5ad(tmp, compression=None))
    return {"n_missing_genes": int((~present).sum()), "n_genes": int(present.sum()),
            "hist_dim": int(adata.obsm["X_hist"].shape[1]) if "X_hist" in adata.obsm else 0}


def predict_cohort(model_uri: str, slides_path: str | Path, *, tracking_uri: str, output_dir: str | Path | None = None,
                   experiment: str | None = None, track: bool = True,
                   echo: Callable[[str], None] | None = None) -> PredictResult:
    """Apply the registered model ``model_uri`` to the slides of ``slides_path``; see the module docstring."""
    import mlflow
    import torch

    from jobs._util import atomic_write_json, atomic_write_with, error_text, short_traceback
    from jobs.infer import latent_path_of, summarise_slide
    from jobs.preprocess import read_and_prepare
    from senca_core.model import readout

    echo = echo or (lambda m: print(f"[senca-platform] {m}", file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    ref = parse_model_uri(model_uri)
    spec, explicit_out = load_slides(slides_path)
    mc = client(tracking_uri)
    mv = get_version(mc, tracking_uri, ref)
    name, version = mv.name, int(mv.version)
    out = Path(output_dir) if output_dir else (Path(spec.output_dir) if explicit_out
                                               else Path(slides_path).resolve().parent / "predict_out")
    out = out.resolve()
    if (out / "cohort_summary.json").exists():
        raise PredictError(f"{out} holds a training run (cohort_summary.json): choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    echo(f"model {name} version {version} ({ref.uri}) from {redact_uri(tracking_uri)}")

    work = Path(tempfile.mkdtemp(prefix="senca-predict-"))
    try:
        import mlflow.artifacts

        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        try:
            model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}",
                                                                 dst_path=str(work / "model"),
                                                                 tracking_uri=tracking_uri))
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pyfunc = mlflow.pyfunc.load_model(str(model_dir))
        except Exception as err:  # noqa: BLE001
            raise PredictError(f"cannot load {name} version {version}: {type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else ''}") from None
        net = getattr(pyfunc.unwrap_python_model(), "model", None)
        if net is None:
            raise PredictError(f"{name} version {version} is not a SENCA-st pyfunc (no .model inside)")
        state = resolve_model_state(mc, tracking_uri, mv, model_dir, work, echo)
        echo(f"model state: {state.source} (panel {len(state.genes)} genes, PCA {state.pca_state['n_comps']}, "
             f"{state.manifest['method']} k={state.manifest['k']})")
        if state.manifest.get("model_sha256") and (mv.tags or {}).get("senca.model_sha256") and \
                state.manifest["model_sha256"] != mv.tags["senca.model_sha256"]:
            raise PredictError("the model state was built for another model (sha256 differs from the version's)")
        n_expr, n_hist = int(getattr(net, "n_expr", 0)), int(getattr(net, "n_hist", 0))
        if n_expr and n_expr != int(state.pca_state["n_comps"]):
            raise PredictError(f"the model expects {n_expr} PCA components, the model state has "
                               f"{state.pca_state['n_comps']}")
        pp_cfg = dict(state.preprocess)
        categories = list(state.manifest["categories"])

        torch.set_num_threads(1)  # as the pipeline's infer stage: bit-identical embeddings
        slides = []
        patients = {}
        for pid, s in spec.slides():
            d = s.model_dump(mode="json")
            entry = {"patient_id": pid, "slide_id": d.pop("id"), **d}
            slides.append(entry)
            patients[entry["slide_id"]] = pid
        status: dict[str, dict[str, Any]] = {}
        summaries = []
        for entry in slides:
            sid = entry["slide_id"]
            st = {"patient": entry["patient_id"], "slide": sid, "n_spots": 0, "n_regions": 0, "ari": None,
                  "nmi": None, "status": "ok", "error": None}
            status[sid] = st
            echo(f"slide {sid}: preprocess, project on the cohort basis, embed, regions, summaries")
            row = read_and_prepare({"slide": entry, "cfg": pp_cfg, "key": "predict",
                                    "out_path": str(out / "preprocess" / "prepared" / f"{sid}.h5ad")})
            if row["status"] != "ok":
                st.update(status="failed", stage="preprocess", error=row["error"])
                continue
            try:
                proj = _project(Path(row["path"]), state, out / "preprocess" / "slides" / f"{sid}.h5ad")
                if proj["n_missing_genes"]:
                    st.setdefault("warnings", []).append(
                        f"{proj['n_missing_genes']} of {len(state.genes)} panel genes absent (taken at the basis mean)")
                import anndata as ad

                adata = ad.read_h5ad(out / "preprocess" / "slides" / f"{sid}.h5ad")
                if "X_hist" in adata.obsm and n_hist and adata.obsm["X_hist"].shape[1] != n_hist:
                    raise PredictError(f"histology features have {adata.obsm['X_hist'].shape[1]} columns, the "
                                       f"model expects {n_hist} (same encoder / patch settings as training?)")
                if "X_hist" in adata.obsm and not n_hist:
                    del adata.obsm["X_hist"]  # the model has no image branch
                latent, Z = readout(net, adata)  # what the infer stage clusters (float32 as stored there)
                Z = Z.astype(np.float32)
                if not (np.isfinite(Z).all() and np.isfinite(latent).all()):
                    raise PredictError("the embedding has NaN/inf values")
                emb_path = out / "infer" / "embeddings" / f"{sid}.npy"
                atomic_write_with(emb_path, lambda tmp, Z=Z: np.save(open(tmp, "wb"), Z))
                atomic_write_with(latent_path_of(emb_path), lambda tmp, z=latent: np.save(open(tmp, "wb"), z))
                labels = assign_regions(state.region_model, Z, np.asarray(adata.obsm["spatial_neighbors"]))
                reg_path = out / "infer" / "regions" / f"{sid}.npy"
                atomic_write_with(reg_path, lambda tmp, labels=labels: np.save(open(tmp, "wb"), labels))
                del adata
            except Exception as err:  # noqa: BLE001 - this slide's failure, recorded
                st.update(status="failed", stage="predict", error=error_text(err, sid),
                          traceback=short_traceback(err))
                continue
            summ = summarise_slide({"slide_id": sid, "patient_id": entry["patient_id"],
                                    "path": str(out / "preprocess" / "slides" / f"{sid}.h5ad"),
                                    "emb_path": str(emb_path), "region_path": str(reg_path),
                                    "categories": categories, "h5ad_path": str(out / "slides" / f"{sid}.h5ad"),
                                    "map_path": str(out / "maps" / f"{sid}_regions.png"),
                                    "markers_path": str(out / "infer" / "markers" / f"{sid}.csv"),
                                    "summary_file": str(out / "infer" / "summaries" / f"{sid}.json")})
            summaries.append(summ)
            if summ["status"] != "ok":
                st.update(status="failed", stage="summarise", error=summ["error"])
                continue
            _stamp_h5ad(Path(summ["h5ad_path"]), {"name": name, "version": version, "uri": ref.uri,
                                                  "training_run_id": mv.run_id or ""})
            st.update(n_spots=summ["n_spots"], n_regions=summ["n_regions"], ari=summ["ari"], nmi=summ["nmi"],
                      silhouette=summ["silhouette"], h5ad=summ["h5ad_path"], region_map=summ["map_path"],
                      warnings=st.get("warnings", []) + (summ.get("warnings") or []))

        tables = _write_tables(out / "tables", [s for s in summaries if s["status"] == "ok"], summaries, categories)
        rows = [{k: v for k, v in s.items() if k != "traceback"} for s in status.values()]
        n_failed = sum(r["status"] != "ok" for r in rows)
        aris = [r["ari"] for r in rows if r.get("ari") is not None]
        summary: dict[str, Any] = {
            "kind": "predict", "status": "ok" if not n_failed else ("failed" if n_failed == len(rows) else "partial"),
            "model": {"name": name, "version": version, "uri": ref.uri, "training_run_id": mv.run_id,
                      "cohort": state.manifest.get("cohort"), "model_state": state.source,
                      "training_regions_reproduced": state.manifest.get("reproduced")},
            "slides_spec": str(Path(slides_path).resolve()), "output_dir": str(out), "n_slides": len(rows),
            "n_failed": n_failed, "slides": rows, "k": state.manifest["k"], "categories": categories,
            "mean_ari": float(np.mean(aris)) if aris else None, "tables": tables, "mlflow_run_id": None,
            "seconds": None}
        if track:
            summary["mlflow_run_id"] = _log_predict_run(mc, mv, ref, summary, slides_path, experiment, echo)
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        summary_path = atomic_write_json(out / "predict_summary.json", summary)
        if track and summary["mlflow_run_id"]:
            mc.log_artifact(summary["mlflow_run_id"], str(summary_path))
            mc.set_terminated(summary["mlflow_run_id"], "FAILED" if summary["status"] == "failed" else "FINISHED")
        for r in rows:
            if r["status"] != "ok":
                echo(f"FAILED slide {r['slide']} (patient {r['patient']}): {r['error']}")
        echo(f"summary: {summary_path} ({summary['status']}, {len(rows) - n_failed}/{len(rows)} slides ok)")
        return PredictResult(summary, Path(summary_path), 0 if not n_failed else 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _write_tables(tables_dir: Path, ok: list[dict], summaries: list[dict], categories: list[str]) -> dict[str, str]:
    """``patients`` / ``slides`` / ``markers`` tables (Parquet + CSV), as the pipeline's infer stage writes them."""
    import pandas as pd

    from jobs._util import atomic_write_with
    from jobs.infer import patient_table

    if not ok:
        return {}
    table = patient_table(ok, categories)
    slides_df = pd.DataFrame([{k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in s.items()
                               if k not in ("traceback", "microenvironment", "markers")} for s in summaries])
    marker_files = [s["markers_path"] for s in ok if s.get("markers_path") and Path(s["markers_path"]).exists()]
    frames = [("patients", table), ("slides", slides_df)]
    if marker_files:
        frames.append(("markers", pd.concat([pd.read_csv(f) for f in marker_files], ignore_index=True)))
    tables: dict[str, str] = {}
    for tname, df in frames:
        for ext, write in (("parquet", lambda tmp, df=df: df.to_parquet(tmp, index=False)),
                           ("csv", lambda tmp, df=df: df.to_csv(tmp, index=False))):
            tables[f"{tname}_{ext}"] = str(atomic_write_with(tables_dir / f"{tname}.{ext}", write))
    return tables


def _stamp_h5ad(path: Path, model: dict[str, Any]) -> None:
    """Record the model version that produced the regions in ``uns["senca"]["model"]``."""
    import anndata as ad

    from jobs._util import atomic_write_with

    a = ad.read_h5ad(path)
    a.uns.setdefault("senca", {})["model"] = {k: str(v) for k, v in model.items()}
    atomic_write_with(path, lambda tmp: a.write_h5ad(tmp, compression="gzip"))


def _log_predict_run(mc, mv, ref: ModelRef, summary: dict[str, Any], slides_path, experiment: str | None,
                     echo) -> str:
    """The prediction's own MLflow run, linked to the model version (tags + the logged model as an input)."""
    from mlflow.entities import Metric, Param

    if experiment:
        exp = mc.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else mc.create_experiment(experiment)
    elif mv.run_id:
        exp_id = mc.get_run(mv.run_id).info.experiment_id
    else:
        exp = mc.get_experiment_by_name(f"{mv.name}-predict")
        exp_id = exp.experiment_id if exp is not None else mc.create_experiment(f"{mv.name}-predict")
    run = mc.create_run(exp_id, run_name=f"predict-{mv.name}-v{mv.version}-{time.strftime('%Y%m%d-%H%M%S')}",
                        tags={"senca.role": "predict", "senca.model_name": mv.name,
                              "senca.model_version": str(mv.version), "senca.model_uri": ref.uri,
                              "senca.training_run_id": mv.run_id or "",
                              "senca.cohort": str(summary["model"].get("cohort") or ""),
                              "senca.status": summary["status"],
                              "mlflow.note.content": f"Regions of new slides with registered model "
                                                     f"{mv.name} version {mv.version} ({ref.uri})."})
    rid = run.info.run_id
    rows = summary["slides"]
    params = [Param("model_uri", ref.uri), Param("model_name", mv.name), Param("model_version", str(mv.version)),
              Param("n_slides", str(len(rows))), Param("slides", ",".join(r["slide"] for r in rows)[:6000]),
              Param("k", str(summary["k"])), Param("output_dir", summary["output_dir"])]
    now = int(time.time() * 1000)
    metrics = [Metric("n_slides_ok", len(rows) - summary["n_failed"], now, 0),
               Metric("n_slides_failed", summary["n_failed"], now, 0)]
    if summary.get("mean_ari") is not None:
        metrics.append(Metric("mean_ari", summary["mean_ari"], now, 0))
    for r in rows:
        for key in ("ari", "nmi", "silhouette"):
            if r.get(key) is not None:
                metrics.append(Metric(f"{key}_{r['slide']}", float(r[key]), now, 0))
        if r["status"] != "ok":
            mc.set_tag(rid, f"senca.error.{r['slide']}", (r.get("error") or "?")[:5000])
    mc.log_batch(rid, metrics=metrics, params=params)
    try:  # MLflow 3: show the model as this run's input
        from mlflow.entities import LoggedModelInput

        model_id = getattr(mv, "model_id", None) or (mv.source.split("/", 1)[1]
                                                      if str(mv.source).startswith("models:/m-") else None)
        if model_id:
            mc.log_inputs(rid, models=[LoggedModelInput(model_id=model_id)])
    except Exception:  # noqa: BLE001 - older servers: the tags are the link
        pass
    for key, path in summary["tables"].items():
        mc.log_artifact(rid, path, "tables")
    for r in rows:
        if r.get("region_map") and Path(r["region_map"]).exists():
            mc.log_artifact(rid, r["region_map"], "region_maps")
    with tempfile.TemporaryDirectory() as tmp:  # the YAML as written, comments and secrets removed
        copy = Path(tmp) / Path(slides_path).name
        copy.write_text(redact_text(Path(slides_path).read_text(encoding="utf-8-sig")))
        mc.log_artifact(rid, str(copy), "spec")
    echo(f"MLflow prediction run {rid}")
    return rid


__all__ = ["ModelState", "PredictError", "PredictResult", "assign_regions", "attach_model_state",
           "build_model_state", "load_slides", "load_state_dir", "predict_cohort",
           "resolve_model_state"]
