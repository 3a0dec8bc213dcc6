"""Stage 1, preprocessing, with Ray Data: one row per slide (paths only), one task per slide.

The cohort version of ``senca_core.pp.preprocess(list_of_slides)``, split so that no worker ever holds more
than one slide:

1. ``read_and_prepare`` (Ray Data ``map``, bounded concurrency): read one slide with its reader
   (``senca_core.io``), ``validate_counts``, histology features when there is an image
   (``senca_core.hist.patch_features``), then ``pp.qc`` → ``pp.normalize_log`` → ``pp.spatial_neighbors`` →
   ``pp.select_genes`` (spatially autocorrelated genes by default, or variable ones). Writes
   ``OUT/preprocess/prepared/<slide>.h5ad``; returns a small row
   (status, error, paths, sizes, this worker's peak memory). Any exception is caught and recorded for that slide.
2. ``fit_shared_basis`` (driver): the shared gene panel (genes common to every finished slide) and ONE PCA basis
   fitted on the pooled log-expression of the cohort's selected genes (spatially autocorrelated by default, or
   highly variable; ``senca_core.pp.pca`` on a list: the same gene selection and solver as in-process). The
   driver reads only ``var`` and the selected genes' ``layers["log1p"]`` columns of each slide.
3. ``project_slide`` (Ray Data ``map``): subset one slide to the shared panel and project it on the basis
   (``pp.pca_project``); writes ``OUT/preprocess/slides/<slide>.h5ad`` (the model's input). The same
   ``project_prepared`` projects a new slide on a registered model's basis (``senca-platform predict``).

Every output is written atomically (temp file + rename) and is keyed by a content hash (see ``jobs.pipeline``).

Worker failures: a task whose worker process dies (killed, out of memory) is a Ray system failure; Ray Data retries
it, here at most ``TASK_MAX_RETRIES`` times (explicit ``max_retries`` on the map; Ray Data's own default is
unlimited, which would hang the stage on a slide that kills its worker every time). A retried task first deletes
the temp files its killed attempt left (``_files.remove_stale_temps``), then rewrites the same output. A slide whose
task still fails after the retries is dropped by Ray Data (``DataContext.max_errored_blocks``) and comes back from
:func:`run_map` as a failed row naming the slide: it fails alone, the cohort goes on.

Fault injection for the tests (off by default, see ``jobs._faults``): ``read_and_prepare`` calls
``fault_point("prepare.<slide>")`` once the prepared h5ad is written to its temp file, before the rename.
"""

from __future__ import annotations

import functools
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ._cache import StageCache
from ._errors import error_text, short_traceback
from ._faults import fault_point
from ._files import atomic_write_with, remove_stale_temps
from ._memory import PeakSampler, peak_rss_mb, release_memory
from ._say import say

#: Ray Data retries of a per-slide task whose worker process died (system failures; a slide's own errors are
#: caught in the task and never retried)
TASK_MAX_RETRIES = 3


# ------------------------------------------------------------------------------------------- one slide
def read_slide(slide: dict[str, Any]):
    """Read one slide with the reader named in the spec (plain-dict slide entry), its counts validated
    (``senca_core.io.validate_counts``). Returns an AnnData."""
    from senca_core import io

    return io.validate_counts(read_entry(slide))  # its return value: spots with zero counts are dropped in a copy


def read_entry(slide: dict[str, Any]):
    """A plain-dict slide entry (``reader``, ``slide_id``, ``patient_id`` and its files, as in the plan) read with
    the one reader dispatch, ``senca_core.io.read`` (counts not validated). The spec's input check
    (``senca_platform.spec.check_inputs``) reads through it too."""
    from senca_core import io

    rest = {k: v for k, v in slide.items() if k not in ("reader", "path", "counts")}
    return io.read(slide.get("path") or slide.get("counts"), reader=slide["reader"], **rest)


def prepare_slide(adata, cfg: dict[str, Any]) -> None:
    """Histology features (when the slide has an image) and the per-slide expression chain, in place.

    The expression chain is ``senca_core.pp.preprocess_slide``, the per-slide half of ``pp.preprocess``.
    """
    from senca_core import hist, pp

    if adata.uns.get("senca", {}).get("image_path"):
        kwargs: dict[str, Any] = {"encoder": cfg.get("encoder", "morphology"),
                                  "context": float(cfg.get("patch_context", 2.0)),
                                  "size": int(cfg.get("patch_size", 64))}
        if cfg.get("encoder_weights"):
            kwargs["weights"] = cfg["encoder_weights"]
        hist.patch_features(adata, **kwargs)
    n_top = cfg.get("n_top_genes")
    pp.preprocess_slide(adata, genes=str(cfg.get("genes", "spatial")),
                        n_top_genes=None if n_top is None else int(n_top),
                        target_sum=float(cfg.get("target_sum", 1e4)), min_counts=int(cfg.get("min_counts", 1)),
                        min_genes=int(cfg.get("min_genes", 1)), min_cells=int(cfg.get("min_cells", 3)))


def read_and_prepare(row: dict[str, Any]) -> dict[str, Any]:
    """Ray Data task: one slide in, one small row out (never raises: errors are recorded in the row)."""
    t0 = time.perf_counter()
    slide = row["slide"]
    out = {"slide_id": slide["slide_id"], "patient_id": slide["patient_id"], "key": row["key"],
           "status": "ok", "error": None, "traceback": None, "path": None, "n_spots": 0, "n_genes": 0,
           "hist_dim": 0, "has_labels": False, "seconds": 0.0, "peak_rss_mb": 0.0}
    try:
        path = Path(row["out_path"])
        remove_stale_temps(path)  # a killed earlier attempt of this task
        adata = read_slide(slide)
        prepare_slide(adata, row["cfg"])
        atomic_write_with(path, functools.partial(_write_prepared, adata, slide["slide_id"]))
        out.update(path=str(path), n_spots=int(adata.n_obs), n_genes=int(adata.n_vars),
                   hist_dim=int(adata.obsm["X_hist"].shape[1]) if "X_hist" in adata.obsm else 0,
                   has_labels=bool("label" in adata.obs and adata.obs.get("label_scored", np.ones(1)).any()))
        del adata
    except Exception as err:  # noqa: BLE001 - any failure is this slide's, recorded, never the cohort's
        out.update(status="failed", error=error_text(err, slide["slide_id"]), traceback=short_traceback(err))
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_mb"] = peak_rss_mb()
    if out["status"] == "ok" and row.get("cache_root"):
        # the slide's own cache entry, written as soon as it is done: a driver killed before the map returns
        # does not lose it (``--resume`` reuses every slide finished before the kill)
        StageCache(row["cache_root"]).put(f"prepare/{slide['slide_id']}", row["key"], out)
    return out


def _write_prepared(adata, slide_id: str, tmp: Path) -> None:
    adata.write_h5ad(tmp, compression=None)
    fault_point(f"prepare.{slide_id}")  # tests only: a no-op unless SENCA_FAULT_PIDDIR is set (jobs._faults)


# ------------------------------------------------------------------------------------------- shared basis
def _read_var_and_layer(path: str, genes: np.ndarray | None = None):
    """``var`` of an h5ad and (when ``genes`` is given) the log1p columns of those genes, without the rest."""
    import anndata as ad
    import h5py
    import scipy.sparse as sp

    read_elem = getattr(getattr(ad, "io", ad), "read_elem", None) or ad.experimental.read_elem
    with h5py.File(path, "r") as f:
        var = read_elem(f["var"])
        uns_senca = read_elem(f["uns/senca"]) if "uns/senca" in f else {}
        n_obs = int(f["obs"][f["obs"].attrs["_index"]].shape[0])
        layer = None
        if genes is not None:
            full = read_elem(f["layers/log1p"])
            idx = var.index.get_indexer(genes)
            layer = sp.csr_matrix(full)[:, idx]
            del full
    return var, layer, n_obs, uns_senca


def fit_shared_basis(paths: list[str], *, n_comps: int, seed: int = 0) -> tuple[dict[str, Any], list[str]]:
    """One PCA basis for the cohort (``senca_core.pp.pca`` on the pooled slides) and the shared gene panel.

    Gene selection is exactly ``pp.pca``'s for a list (common genes ranked by the number of slides where they are
    highly variable, then median rank); it is computed from ``var`` alone, then only those genes' log-expression is
    loaded and ``pp.pca`` fits the basis on the pooled spots. Returns ``(state, common_genes)``.
    """
    import pandas as pd
    import scipy.sparse as sp
    from anndata import AnnData
    from senca_core import pp

    # 1. gene selection from var only (slim AnnData: zero matrices of the right shape, the real var)
    metas = [_read_var_and_layer(p) for p in paths]
    slims = []
    for (var, _, n_obs, senca), p in zip(metas, paths):
        a = AnnData(X=sp.csr_matrix((n_obs, len(var)), dtype=np.float32), var=var)
        a.uns["senca"] = dict(senca) if isinstance(senca, dict) else {}
        slims.append(a)
    # a slide whose genes cover too little of the panel the others share is left out of it (its projection then
    # fails alone, naming it: ``project_slide``); it would shrink every slide's panel to its few genes
    names = [str(a.uns["senca"].get("slide_id", Path(p).stem)) for a, p in zip(slims, paths)]
    left: dict[str, str] = {}
    while True:
        outliers = pp.panel_outliers(dict(zip(names, slims)))
        if not outliers or len(outliers) >= len(slims):  # all of them: common_genes names them (a cohort error)
            break
        left.update(outliers)
        keep = [i for i, n in enumerate(names) if n not in outliers]
        metas, paths, slims, names = ([x[i] for i in keep] for x in (metas, paths, slims, names))
    common = pp.common_genes(slims)
    selected = pp.pca_genes(slims)  # pp.pca's own rule (one slide: its HVGs; a list: ranked common HVGs)
    left_out = "".join(f"; left out: slide {n!r}: {why}" for n, why in left.items())
    say(f"gene panel: {len(common)} genes shared by {len(slims)} slide(s), {len(selected)} "
        f"used for the PCA basis{left_out}")
    del slims
    # 2. the pooled fit on the selected genes only; every selected gene is marked (rank = order) so pca keeps them
    parts = []
    for (var, _, n_obs, senca), p in zip(metas, paths):
        _, layer, _, _ = _read_var_and_layer(p, selected)
        v = pd.DataFrame(index=pd.Index(selected, name=var.index.name))
        v["highly_variable"] = True
        v["highly_variable_rank"] = np.arange(len(selected), dtype=np.float64)
        a = AnnData(X=sp.csr_matrix(layer.shape, dtype=np.float32), var=v)
        a.layers["log1p"] = layer
        a.uns["senca"] = dict(senca) if isinstance(senca, dict) else {}
        parts.append(a)
    with warnings.catch_warnings():  # pp.pca's "n_comps reduced" warning: said below, where it reaches the user
        warnings.filterwarnings("ignore", message="n_comps reduced")
        state = pp.pca(parts if len(parts) > 1 else parts[0], n_comps=n_comps, use_hvg=True, seed=seed)
    said = []
    if int(state["n_comps"]) < int(n_comps):
        said.append(f"preprocess.n_pca: {n_comps} asked but {int(state['n_comps'])} principal components used (the "
                    f"cohort has {int(state['n_spots'])} spots and {len(selected)} genes for the basis)")
        say(f"warning: {said[-1]}")
    state["cohort_warnings"] = np.asarray(said, dtype=str)  # copied into every slide's warnings by project_slide
    return state, [str(g) for g in common]


def project_slide(row: dict[str, Any]) -> dict[str, Any]:
    """Ray Data task: subset one prepared slide to the shared panel, project it on the basis, write it."""
    t0 = time.perf_counter()
    out = {"slide_id": row["slide_id"], "status": "ok", "error": None, "traceback": None, "path": None,
           "seconds": 0.0, "peak_rss_mb": 0.0}
    try:
        remove_stale_temps(row["out_path"])  # a killed earlier attempt of this task
        state = load_state(row["state_file"])
        genes = np.load(row["genes_file"], allow_pickle=False)
        project_prepared(row["prepared_path"], genes, state, row["out_path"], slide_id=row["slide_id"],
                         cohort_warnings=state.get("cohort_warnings", []))
        out["path"] = row["out_path"]
    except Exception as err:  # noqa: BLE001
        out.update(status="failed", error=error_text(err, row["slide_id"]), traceback=short_traceback(err))
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def project_prepared(prepared_path: str | Path, genes: np.ndarray, state: dict[str, Any], out_path: str | Path, *,
                     slide_id: str, allow_missing: bool = False, cohort_warnings=()) -> tuple[Any, int]:
    """One prepared slide subset to the gene panel ``genes`` and projected on the PCA basis ``state``
    (``pp.pca_project``), ``cohort_warnings`` added to the slide's, written to ``out_path``. Returns the projected
    AnnData (as written) and the number of panel genes the slide lacks.

    A slide lacking panel genes is a SlideError (the run: the panel is what every slide shares), unless
    ``allow_missing`` (``predict``: the genes it lacks are left out and ``pca_project`` takes them at the basis
    mean; ``uns["senca"]["gene_panel"]["n_missing"]`` counts them)."""
    import anndata as ad
    from senca_core import pp
    from senca_core.io import add_warning

    adata = ad.read_h5ad(prepared_path)
    idx = adata.var_names.get_indexer(genes)
    present = idx >= 0
    if not allow_missing and not present.all():  # never index with -1 (that would silently take the last gene)
        from senca_core.errors import SlideError

        raise SlideError(f"its {adata.n_vars} gene(s) cover only {int(present.sum())} of the {len(genes)} genes of "
                         "the cohort's shared panel: a slide must cover at least max(50, 10 %) of the genes the "
                         "other slides share, else it would shrink every slide's panel; it is left out of the "
                         f"panel (missing e.g. {str(genes[np.flatnonzero(~present)[0]])!r}; wrong or filtered "
                         "counts file?)", slide=slide_id,
                         file=(adata.uns.get("senca", {}).get("source_files") or {}).get("counts"),
                         field="var_names")
    adata = adata[:, idx[present]].copy()
    pp.pca_project(adata, state)
    for w in np.atleast_1d(cohort_warnings):
        add_warning(adata, str(w))
    panel = {"n_genes": int(len(genes)), "shared": True}
    if allow_missing:
        panel["n_missing"] = int((~present).sum())
    adata.uns.setdefault("senca", {})["gene_panel"] = panel
    atomic_write_with(Path(out_path), lambda tmp: adata.write_h5ad(tmp, compression=None))
    return adata, int((~present).sum())


def save_state(state: dict[str, Any], path: str | Path) -> Path:
    """The PCA state as an ``.npz`` (arrays and scalars), written atomically."""
    arrays = {k: (np.asarray(v) if not isinstance(v, (int, float, str)) else np.asarray(v)) for k, v in state.items()}
    return atomic_write_with(Path(path), lambda tmp: np.savez(open(tmp, "wb"), **arrays))


def load_state(path: str | Path) -> dict[str, Any]:
    """The PCA state :func:`save_state` wrote (scalars back to Python numbers)."""
    with np.load(path, allow_pickle=False) as z:
        state = {k: z[k] for k in z.files}
    for k in ("target_sum",):
        state[k] = float(state[k])
    if "cohort_warnings" in state:
        state["cohort_warnings"] = [str(w) for w in np.atleast_1d(state["cohort_warnings"])]
    for k in ("n_comps", "n_slides", "n_spots", "seed"):
        if k in state:
            state[k] = int(state[k])
    return state




# ------------------------------------------------------------------------------------------- Ray Data driver
def run_map(rows: list[dict[str, Any]], fn, *, concurrency: int | None, num_cpus: float, progress: bool = True,
            max_retries: int = TASK_MAX_RETRIES) -> list[dict[str, Any]]:
    """Ray Data: ``from_items`` (one block per row) → ``map(fn)`` with at most ``concurrency`` tasks at once
    (``None``: as many as the CPUs hold, see :func:`_pool_size`).

    Rows travel as JSON text (one column), so optional fields (``None`` here, a path there) never meet Arrow's
    schema unification; results come back in input order, one per row. A task whose worker process dies is retried
    up to ``max_retries`` times; a row whose task still failed (Ray Data drops its block) comes back as
    ``{"slide_id", "status": "failed", "error", ...}`` (see :func:`_lost_row`).
    """
    import ray.data

    if not rows:
        return []
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = bool(progress)
    ctx.print_on_execution_start = bool(progress)
    saved = ctx.max_errored_blocks, ctx.op_resource_reservation_enabled
    ctx.max_errored_blocks = len(rows)  # a row whose task failed after its retries is dropped, not fatal
    # one operator, nothing to reserve for: with Ray Data's per-operator reservation the map ran one task at first
    # on 2 CPUs, then staggered (8 one-second tasks 5.4 s); without it two from the start (4.1 s; floor 4.0)
    ctx.op_resource_reservation_enabled = False
    try:
        items = [{"i": i, "payload": json.dumps(r, default=str)} for i, r in enumerate(rows)]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        with warnings.catch_warnings():  # Ray 2.60 has no named parameter for max_retries yet: ray_remote_args
            warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated")
            ds = ds.map(functools.partial(_json_call, fn), num_cpus=num_cpus,
                        compute=ray.data.TaskPoolStrategy(size=_pool_size(concurrency, len(items))),
                        max_retries=int(max_retries))
        out = {r["i"]: json.loads(r["result"]) for r in ds.take_all()}
    finally:
        ctx.max_errored_blocks, ctx.op_resource_reservation_enabled = saved
    return [out[i] if i in out else _lost_row(row, int(max_retries)) for i, row in enumerate(rows)]


def _pool_size(concurrency: int | None, n_rows: int) -> int:
    """Ray Data's task cap for a map. ``concurrency`` given (``preprocess.concurrency``): the user's limit, the cap.
    ``None`` (the default): every row is submitted at once and Ray's own scheduler runs as many as the CPUs hold,
    starting the next the moment one ends. Capped at the CPU slots instead, Ray Data admits the next task only when
    its loop notices a finished one, 0.1-0.2 s later (8 tasks of 0.8-2 s on 2 CPUs: 5.6-5.8 s capped, 5.3 s not;
    ideal 4.85)."""
    return n_rows if concurrency is None else max(1, min(int(concurrency), n_rows))


def _lost_row(row: dict[str, Any], max_retries: int) -> dict[str, Any]:
    """The result of a row whose task failed ``1 + max_retries`` times outside the slide's own code (the worker
    process died each time: killed, out of memory): a failed row naming the slide, as the stages expect."""
    slide = row.get("slide") if isinstance(row.get("slide"), dict) else {}
    sid = row.get("slide_id") or slide.get("slide_id")
    out = {k: v for k, v in (("patient_id", slide.get("patient_id") or row.get("patient_id")),
                             ("key", row.get("key"))) if v is not None}
    error = (f"its task failed {1 + max_retries} time(s) outside the slide's code (the worker process died: "
             "killed or out of memory); see the Ray logs")
    out.update(slide_id=sid, status="failed", error=f"slide {sid!r}: {error}" if sid else error, traceback=None,
               path=None, seconds=0.0, peak_rss_mb=0.0)
    if row.get("out_path"):  # the last killed attempt's temp file (no retry will clean it)
        remove_stale_temps(row["out_path"])
    return out


def _json_call(fn, row: dict[str, Any]) -> dict[str, Any]:
    """``fn(json.loads(row['payload']))``, the result as JSON text, with this task's sampled peak memory."""
    with PeakSampler() as mem:
        result = fn(json.loads(row["payload"]))
    release_memory()
    if isinstance(result, dict):
        result["task_peak_rss_mb"] = mem.peak
    return {"i": row["i"], "result": json.dumps(result, default=str)}
