"""The prediction stage: new slides through a fitted cohort (its gene panel, PCA basis, preprocess settings, model
file, region model and region names: :class:`Fitted`), with the run's own per-slide functions; no training.

Per slide: ``jobs.preprocess.read_and_prepare`` (the training ``preprocess`` settings) → ``project_prepared`` on
the cohort's panel and basis (panel genes the slide lacks taken at the basis mean) → ``jobs.infer.embed_slide``
(the same readout as the run's infer stage) → the fitted region model → ``jobs.infer.summarise_slide`` (the h5ad
stamped with the model version) → the cohort's tables (``jobs._tables.write_tables``). Each slide's failure is
recorded in its status row; the others go on.

``senca-platform predict`` (``senca_platform.predict``) resolves the registered model and its state, builds
:class:`Fitted` and calls :func:`stage_predict`; it has no slide loop of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np


@dataclass(frozen=True)
class Fitted:
    """What a training run fitted and a prediction reuses unchanged."""

    genes: np.ndarray
    pca_state: dict[str, Any]
    preprocess: dict[str, Any]
    region_model: Any  # senca_core.tl.RegionModel
    categories: list[str]
    region_names: dict[str, list] | None
    model_file: Path
    n_hist: int  # histology feature columns the model expects (0: none)


def slide_regions(region_model, embedding: np.ndarray, neighbors: np.ndarray | None) -> np.ndarray:
    """Region ids (ints, the training cohort's ids) of one slide's spots: ``senca_core.tl.RegionModel.labels``
    (the slide aligned onto the cohort like at fit time, reduced, the fitted estimator, refined). The one place a
    saved region model labels a slide: prediction here, the reproduction check of ``senca_platform.model_state``."""
    return slide_regions_report(region_model, embedding, neighbors)[0]


def slide_regions_report(region_model, embedding: np.ndarray,
                         neighbors: np.ndarray | None) -> tuple[np.ndarray, dict | None]:
    """(:func:`slide_regions`, the restarts report of the slide's own cut, ``{seeds, chosen, agreement}``, or None).
    A model whose slides are cut alone (``cut_by: slide``) cuts a new slide from the fit's clustering seeds and
    reports how well they agree; a pooled model labels it with its fitted estimator (no restarts: None)."""
    X = np.asarray(embedding, dtype=np.float64)
    if hasattr(region_model, "labels_report"):
        labels, report = region_model.labels_report(X, neighbors)
    else:
        labels, report = region_model.labels(X, neighbors), None
    return np.asarray(labels, dtype=int), report


def predict_slide(entry: dict[str, Any], fitted: Fitted, out: Path, *, stamp: dict[str, Any],
                  say: Callable[[str], None]) -> tuple[dict[str, Any], dict | None]:
    """One slide (``entry``: patient_id, slide_id and the spec's slide fields). Returns its status row and its
    summary (None when it failed before summarising)."""
    from ._errors import error_text, short_traceback
    from ._files import atomic_write_with
    from ._report_data import restarts_line
    from .infer import embed_slide, summarise_slide
    from .preprocess import project_prepared, read_and_prepare

    sid = entry["slide_id"]
    st = {"patient": entry["patient_id"], "slide": sid, "n_spots": 0, "n_regions": 0, "ari": None, "nmi": None,
          "status": "ok", "error": None}
    say(f"slide {sid}: preprocess, project on the cohort basis, embed, regions, summaries")
    row = read_and_prepare({"slide": entry, "cfg": dict(fitted.preprocess), "key": "predict",
                            "out_path": str(out / "preprocess" / "prepared" / f"{sid}.h5ad")})
    if row["status"] != "ok":
        st.update(status="failed", stage="preprocess", error=row["error"])
        return st, None
    path, emb_path = out / "preprocess" / "slides" / f"{sid}.h5ad", out / "infer" / "embeddings" / f"{sid}.npy"
    reg_path = out / "infer" / "regions" / f"{sid}.npy"
    try:
        adata, n_missing = project_prepared(row["path"], fitted.genes, fitted.pca_state, path, slide_id=sid,
                                            allow_missing=True)
        if n_missing:
            st["warnings"] = [f"{n_missing} of {len(fitted.genes)} panel genes absent (taken at the basis mean)"]
        hist_dim = int(adata.obsm["X_hist"].shape[1]) if "X_hist" in adata.obsm else 0
        if hist_dim and fitted.n_hist and hist_dim != fitted.n_hist:
            raise ValueError(f"histology features have {hist_dim} columns, the model expects {fitted.n_hist} "
                             "(same encoder / patch settings as training?)")
        neighbors = np.asarray(adata.obsm["spatial_neighbors"])
        del adata
        emb = embed_slide({"slide_id": sid, "path": str(path), "model_path": str(fitted.model_file),
                           "emb_path": str(emb_path)})
        if emb["status"] != "ok":
            st.update(status="failed", stage="predict", error=emb["error"], traceback=emb["traceback"])
            return st, None
        labels, restarts = slide_regions_report(fitted.region_model, np.load(emb_path), neighbors)
        if restarts:
            st["restarts"] = restarts
            say(f"slide {sid}: " + restarts_line(restarts))
        atomic_write_with(reg_path, lambda tmp: np.save(open(tmp, "wb"), labels))
    except Exception as err:  # noqa: BLE001 - this slide's failure, recorded
        st.update(status="failed", stage="predict", error=error_text(err, sid), traceback=short_traceback(err))
        return st, None
    summ = summarise_slide({"slide_id": sid, "patient_id": entry["patient_id"], "path": str(path),
                            "emb_path": str(emb_path), "region_path": str(reg_path),
                            "readout_blocks": emb.get("readout_blocks"),
                            "categories": list(fitted.categories),
                            "h5ad_path": str(out / "slides" / f"{sid}.h5ad"),
                            "map_path": str(out / "maps" / f"{sid}_regions.png"),
                            "markers_path": str(out / "infer" / "markers" / f"{sid}.csv"),
                            "summary_file": str(out / "infer" / "summaries" / f"{sid}.json"),
                            "region_names": fitted.region_names, "stamp": stamp})
    if summ["status"] != "ok":
        st.update(status="failed", stage="summarise", error=summ["error"])
        return st, summ
    st.update(n_spots=summ["n_spots"], n_regions=summ["n_regions"], ari=summ["ari"], nmi=summ["nmi"],
              silhouette=summ["silhouette"], h5ad=summ["h5ad_path"], region_map=summ["map_path"],
              warnings=st.get("warnings", []) + (summ.get("warnings") or []))
    return st, summ


def stage_predict(entries: list[dict[str, Any]], fitted: Fitted, out: str | Path, *, stamp: dict[str, Any],
                  say: Callable[[str], None]) -> dict[str, Any]:
    """Every slide of ``entries`` through :func:`predict_slide`, then the tables of the slides that succeeded.
    Returns ``{"rows": status rows (spec order, no tracebacks), "tables": {name: path}}``."""
    from ._tables import write_tables

    out = Path(out)
    rows, summaries = [], []
    for entry in entries:
        st, summ = predict_slide(entry, fitted, out, stamp=stamp, say=say)
        rows.append({k: v for k, v in st.items() if k != "traceback"})
        summaries += [summ] if summ is not None else []
    tables = {}
    if any(s["status"] == "ok" for s in summaries):  # the same tables as the run's infer stage
        tables = {k.removesuffix("_path"): v for k, v in
                  write_tables(out / "tables", summaries, fitted.categories, fitted.region_names).items()}
    return {"rows": rows, "tables": tables}
