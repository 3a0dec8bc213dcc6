"""Worker fault injection on an embedded Ray: real worker processes SIGKILLed by pid, no mocks.

The module's Ray is started with ``SENCA_FAULT_PIDDIR`` / ``SENCA_FAULT_SLOW_S`` in its environment, so every
worker reports its pid at the fault points of ``jobs`` (``jobs._faults.fault_point``) and pauses there; a
``tests._faults.Killer`` thread of this process kills the chosen pid with ``SIGKILL``.

1. Ray Data (preprocessing): a worker is killed while a slide's prepared h5ad sits in its temp file, before the
   rename; Ray Data retries the task in a new worker; the stage finishes with every slide, no temp file is left,
   and every output is identical to the same stage run without a fault.
2. Ray Train: worker rank 0 is killed mid-epoch (optimiser steps done, epoch not yet reported) once Ray Train has
   registered a checkpoint of epoch >= 2; ``FailureConfig(max_failures=1)`` restarts the worker group from that
   last checkpoint; every epoch is in the history exactly once and the final model loads and embeds.
3. A slide whose worker dies on every attempt (retries exhausted) fails alone, with an error naming it; the other
   slide's output is complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from _faults import FAULT_ENV, Killer, is_ray_worker, pid_files

pytestmark = [pytest.mark.slow]

SLOW_S = 1.5  # the pause at a fault point: the window in which the killer acts ...
FRESH_S = 1.0  # ... on a pid file younger than this (its process still paused there)
N_SLIDES, N_SPOTS, EPOCHS = 3, 250, 7
#: a checkpoint (and a report) after every epoch: the kill windows below need checkpoints to restart from
EVERY_EPOCH = {"every_epochs": 1, "min_interval_s": 0.0, "report_interval_s": 0.0}


@pytest.fixture(scope="module")
def piddir(tmp_path_factory):
    """An embedded Ray whose workers run with the fault points on (pid files in the yielded folder)."""
    import ray

    from senca_platform.runner import start_local_ray

    d = tmp_path_factory.mktemp("fault_pids")
    saved = {k: os.environ.get(k) for k in FAULT_ENV.values()}
    os.environ[FAULT_ENV["piddir"]] = str(d)
    os.environ[FAULT_ENV["slow"]] = str(SLOW_S)
    try:
        start_local_ray(2, log_to_driver=False, logging_level="ERROR")
        yield d
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    """A synthetic cohort (3 patients × 250 spots, with H&E images) as the plan ``jobs.pipeline`` takes."""
    from senca_platform.demo import write_demo
    from senca_platform.runner import build_plan
    from senca_platform.spec import load_spec

    out = tmp_path_factory.mktemp("fault_cohort")
    spec_path = write_demo(out, n_patients=N_SLIDES, n_spots=N_SPOTS, seed=4, epochs=EPOCHS, tuning=False)
    return build_plan(load_spec(spec_path), 2)


def _preprocess(plan: dict, out: Path):
    from jobs._cache import StageCache
    from jobs.pipeline import Tracker, stage_preprocess

    plan = dict(plan, output_dir=str(out))
    status = {s["slide_id"]: {"status": "ok", "error": None} for s in plan["slides"]}
    pre = stage_preprocess(plan, StageCache(out / "cache"), Tracker(), status, progress=False)
    return pre, status


@pytest.fixture(scope="module")
def reference(piddir, plan, tmp_path_factory):
    """The preprocessing stage without a fault (the fault points pause, nothing is killed)."""
    out = tmp_path_factory.mktemp("fault_reference")
    pre, status = _preprocess(plan, out)
    assert pre["info"]["status"] == "ok" and len(pre["paths"]) == N_SLIDES
    return out, pre, status


# ------------------------------------------------------------------------------------------------ comparisons
def _same_array(a, b) -> bool:
    if isinstance(a, pd.DataFrame) or isinstance(b, pd.DataFrame):
        return isinstance(a, pd.DataFrame) and isinstance(b, pd.DataFrame) and a.equals(b)
    if sp.issparse(a) or sp.issparse(b):
        if not (sp.issparse(a) and sp.issparse(b)) or a.shape != b.shape or a.dtype != b.dtype:
            return False
        a, b = sp.csr_matrix(a), sp.csr_matrix(b)
        a.sort_indices(), b.sort_indices()
        return (np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
                and np.array_equal(a.data, b.data, equal_nan=True))
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")


def _same_uns(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_uns(a[k], b[k]) for k in a)
    if isinstance(a, (np.ndarray, pd.DataFrame)) or sp.issparse(a):
        return _same_array(a, b)
    return bool(a == b) if not isinstance(a, float) or a == a else b != b


def assert_same_h5ad(path_a: Path, path_b: Path) -> None:
    """Two h5ad files hold exactly the same AnnData: X, layers, obsm, obsp, obs, var and uns, bit for bit."""
    import anndata as ad

    a, b = ad.read_h5ad(path_a), ad.read_h5ad(path_b)
    assert a.shape == b.shape and a.n_obs > 0, (path_a, a.shape, b.shape)
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    assert _same_array(a.X, b.X), f"X differs: {path_b}"
    for name in ("layers", "obsm", "obsp", "varm"):
        ma, mb = getattr(a, name), getattr(b, name)
        assert set(ma) == set(mb), (name, set(ma), set(mb))
        for key in ma:
            assert _same_array(ma[key], mb[key]), f"{name}[{key!r}] differs: {path_b}"
    assert _same_uns(dict(a.uns), dict(b.uns)), f"uns differs: {path_b}"


def leftovers(folder: Path) -> list[str]:
    """Temp files of the atomic writes (``.<stem>.XXXXXXXX<suffix>`` / ``.*.tmp``) anywhere under ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if p.is_file())


# ------------------------------------------------------------------------------------------------ 1. Ray Data
@pytest.mark.timeout(240)
def test_killed_preprocessing_worker_is_retried_and_outputs_are_identical(piddir, plan, reference, tmp_path):
    ref_out, ref_pre, _ = reference
    out = tmp_path / "faulted"
    prepared = out / "preprocess" / "prepared"
    killer = Killer(piddir, "prepare.", timeout=180, fresh_s=FRESH_S,
                    observe=lambda f: sorted(p.name for p in prepared.glob(".*"))).start()
    pre, status = _preprocess(plan, out)
    [kill] = killer.kills()

    # a real worker process was killed, mid-write: its slide's temp file was there, not yet renamed
    sid = kill.point.split(".", 1)[1]
    assert kill.dead and is_ray_worker(kill.cmdline), kill
    assert any(name.startswith(f".{sid}.") for name in kill.observed), kill.observed
    # ... and Ray Data ran the task again, in another process, after the kill
    retries = [f for f in pid_files(piddir, kill.point) if f.n > kill.file.n and f.pid != kill.pid]
    assert retries, f"slide {sid}: no retry after the kill of pid {kill.pid}"

    # the stage finished with every slide (nothing lost) ...
    assert all(s["status"] == "ok" for s in status.values()), status
    assert pre["info"]["status"] == "ok" and pre["info"]["metrics"]["n_slides_failed"] == 0
    assert sorted(pre["paths"]) == sorted(s["slide_id"] for s in plan["slides"])
    assert [r["status"] for r in pre["info"]["slides"]] == ["ok"] * N_SLIDES
    # ... left no temp file behind, and every output equals the run without a fault
    assert leftovers(out / "preprocess") == []
    for s in plan["slides"]:
        for sub in ("prepared", "slides"):
            assert_same_h5ad(ref_out / "preprocess" / sub / f"{s['slide_id']}.h5ad",
                             out / "preprocess" / sub / f"{s['slide_id']}.h5ad")
    assert np.array_equal(np.load(ref_out / "preprocess" / "genes.npy"), np.load(out / "preprocess" / "genes.npy"))
    with np.load(ref_out / "preprocess" / "pca_state.npz") as a, np.load(out / "preprocess" / "pca_state.npz") as b:
        assert a.files == b.files and all(_same_array(a[k], b[k]) for k in a.files)
    assert pre["n_expr"] == ref_pre["n_expr"]
    print(f"\nFAULT data-worker: killed pid {kill.pid} at {kill.point} after {kill.seconds}s; "
          f"retried by pid {retries[0].pid}; {N_SLIDES}/{N_SLIDES} slides ok, identical outputs")


# ------------------------------------------------------------------------------------------------ 2. Ray Train
def _registered_epoch(run_dir: Path) -> int:
    """Epoch of the latest checkpoint Ray Train has registered (the one a restarted worker group gets), from the
    controller's checkpoint-manager snapshot in the run folder; -1 when there is none yet."""
    from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME

    try:
        snapshot = json.loads((run_dir / CHECKPOINT_MANAGER_SNAPSHOT_FILENAME).read_text())
    except (OSError, ValueError):  # not written yet, or being written
        return -1
    latest = snapshot.get("latest_checkpoint_result") or {}
    return int((latest.get("metrics") or {}).get("epoch", -1))


@pytest.mark.timeout(360)
def test_killed_train_worker_resumes_from_last_checkpoint(piddir, plan, reference, tmp_path):
    import anndata as ad

    from jobs.pipeline import _eval_cfg, _model_cfg
    from jobs.train import run_training
    from senca_core.model import embed, load_model
    from senca_platform.ray_local import embedded_api_server

    _, pre, status = reference
    plan = dict(plan, output_dir=str(tmp_path))
    cfg = {"model": _model_cfg(plan), "overrides": {}, "slide_paths": list(pre["paths"].values()),
           "n_expr": pre["n_expr"], "n_hist": max(status[s].get("hist_dim", 0) for s in pre["paths"]),
           "eval": _eval_cfg(plan, None, 1), "threads": 1, "checkpoint": EVERY_EPOCH}
    assert cfg["model"]["epochs"] == EPOCHS and cfg["n_hist"] > 0
    storage, name = tmp_path / "ray" / "train", "train-fault"
    run_dir = storage / name
    common = dict(storage_path=storage, num_workers=2, use_gpu=False, resources_per_worker={"CPU": 0.5},
                  max_failures=1, api_server=embedded_api_server())  # the controller from the driver, as a run
    assert common["api_server"]
    clean = run_training(cfg, out_dir=tmp_path / "clean", name="train-clean", **common)

    # kill rank 0 inside an epoch once Ray Train has registered a checkpoint of epoch >= 2
    killer = Killer(piddir, "train.rank0.epoch", timeout=300, fresh_s=FRESH_S,
                    accept=lambda f: _registered_epoch(run_dir) >= 2,
                    observe=lambda f: _registered_epoch(run_dir)).start()
    res = run_training(cfg, out_dir=tmp_path / "train", name=name, **common)
    [kill] = killer.kills()
    killed_epoch = int(kill.point.rsplit("epoch", 1)[1])
    assert kill.dead and is_ray_worker(kill.cmdline), kill
    registered = kill.observed  # the last registered checkpoint's epoch when the worker was killed
    assert 2 <= registered < killed_epoch, (registered, killed_epoch)

    # training finished; every epoch exactly once, all on 2 workers, finite losses
    history = res["history"]
    assert [h["epoch"] for h in history] == list(range(EPOCHS)), [h["epoch"] for h in history]
    assert all(h["world_size"] == 2 and np.isfinite(h["loss"]) for h in history)
    assert res["metrics"]["epoch"] == EPOCHS - 1
    assert json.loads((tmp_path / "train" / "history.json").read_text()) == history
    # it restarted from the last checkpoint (not from scratch): the epochs before it come from the checkpoint,
    # every epoch after it is marked with it, and the killed epoch was run again by a new worker process
    restored = [h for h in history if "restored_from_epoch" in h]
    assert restored, "no epoch ran after a restore"
    start = restored[0]["restored_from_epoch"]
    assert all(h["restored_from_epoch"] == start for h in restored)
    assert [h["epoch"] for h in restored] == list(range(start + 1, EPOCHS))
    # ... the last one Ray Train had registered (or a later one it registered while the kill happened), never one
    # from the killed epoch itself
    assert registered <= start < killed_epoch, (registered, start, killed_epoch)
    rerun = [f for f in pid_files(piddir, kill.point) if f.n > kill.file.n and f.pid != kill.pid]
    assert rerun, f"epoch {killed_epoch} was not run again after the kill"

    # ... and the restarted group (every rank's random generators restored) computed what the clean run computed
    assert _strip(history) == _strip(clean["history"]), "a recovered run must compute what the clean run computed"
    assert _same_weights(clean["model_path"], res["model_path"]), "final weights differ from the clean run"

    # the final model loads and embeds every spot of a slide to finite values
    model = load_model(res["model_path"])
    slide = ad.read_h5ad(next(iter(pre["paths"].values())))
    Z = embed(model, slide)
    assert Z.shape == (slide.n_obs, model.config.embed_dim) and np.isfinite(Z).all() and Z.std() > 0
    print(f"\nFAULT train-worker: killed pid {kill.pid} (rank 0) in epoch {killed_epoch} after {kill.seconds}s; "
          f"last registered checkpoint: epoch {registered}; restarted from checkpoint epoch {start}; "
          f"{len(history)}/{EPOCHS} epochs, none lost or repeated; final weights identical to the clean run")


def _strip(history: list[dict]) -> list[dict]:
    """The computed part of a training history (not its clock, memory or restart marks)."""
    return [{k: v for k, v in h.items() if k not in ("time", "restored_from_epoch", "restored_exact", "peak_rss_mb")}
            for h in history]


def _same_weights(path_a, path_b) -> bool:
    import torch

    a = torch.load(path_a, weights_only=True)["state_dict"]
    b = torch.load(path_b, weights_only=True)["state_dict"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------ 2b. one task
def _solo_cfg(plan, pre, status, live: Path) -> dict:
    from jobs.pipeline import _eval_cfg, _model_cfg

    return {"model": _model_cfg(plan), "overrides": {}, "slide_paths": list(pre["paths"].values()),
            "n_expr": pre["n_expr"], "n_hist": max(status[s].get("hist_dim", 0) for s in pre["paths"]),
            "eval": _eval_cfg(plan, None, 1), "threads": 1, "checkpoint": EVERY_EPOCH,
            "live_path": str(live)}


@pytest.mark.timeout(360)
def test_killed_training_task_resumes_with_the_clean_result(piddir, plan, reference, tmp_path):
    """One worker is enough for a small cohort: the loop runs as one Ray task (no Ray Train worker group). Its
    process is killed mid-epoch; the task is retried in a new process, continues from its newest checkpoint
    (weights, optimiser AND random generators) and ends with the model of the run that was never killed, bit for
    bit, with every epoch in the history once."""
    from jobs.train import run_training

    _, pre, status = reference
    plan = dict(plan, output_dir=str(tmp_path))
    common = dict(num_workers=1, use_gpu=False, resources_per_worker={"CPU": 1.0}, max_failures=1)
    clean = run_training(_solo_cfg(plan, pre, status, tmp_path / "clean.jsonl"), out_dir=tmp_path / "clean",
                         name="solo-clean", storage_path=tmp_path / "ray", **common)
    assert clean["launcher"] == "ray_task"

    run_dir = tmp_path / "ray" / "solo-fault"
    newest = lambda: max([int(p.name.split("_")[1]) for p in run_dir.glob("checkpoint_*")], default=-1)  # noqa: E731
    killer = Killer(piddir, "train.rank0.epoch", timeout=300, fresh_s=FRESH_S,
                    accept=lambda f: newest() >= 2, observe=lambda f: newest()).start()
    res = run_training(_solo_cfg(plan, pre, status, tmp_path / "fault.jsonl"), out_dir=tmp_path / "fault",
                       name="solo-fault", storage_path=tmp_path / "ray", **common)
    [kill] = killer.kills()
    killed_epoch = int(kill.point.rsplit("epoch", 1)[1])
    assert kill.dead and is_ray_worker(kill.cmdline), kill
    assert 2 <= kill.observed < killed_epoch

    history = res["history"]
    assert [h["epoch"] for h in history] == list(range(EPOCHS))
    restored = [h for h in history if "restored_from_epoch" in h]
    assert restored and restored[0]["epoch"] == restored[0]["restored_from_epoch"] + 1
    assert _strip(history) == _strip(clean["history"]), "a resumed run must compute what the clean run computed"
    assert _same_weights(clean["model_path"], res["model_path"]), "final weights differ"
    # the live records: every epoch reached the file the driver tails (the killed epoch never got there)
    live = [json.loads(line)["epoch"] for line in (tmp_path / "fault.jsonl").read_text().splitlines()]
    assert sorted(set(live)) == list(range(EPOCHS)), live
    print(f"\nFAULT train-task: killed pid {kill.pid} in epoch {killed_epoch}; resumed from checkpoint "
          f"{restored[0]['restored_from_epoch']}; final weights identical to the clean run")


# ------------------------------------------------------------------------------------------------ 3. exhausted
@pytest.mark.timeout(240)
def test_a_slide_whose_worker_always_dies_fails_alone(piddir, plan, tmp_path):
    from jobs.preprocess import read_and_prepare, run_map

    slides = plan["slides"][:2]
    victim, other = slides[0]["slide_id"], slides[1]["slide_id"]
    rows = [{"slide": s, "cfg": dict(plan["preprocess"]), "key": f"k{i}",
             "out_path": str(tmp_path / "prepared" / f"{s['slide_id']}.h5ad")} for i, s in enumerate(slides)]
    killer = Killer(piddir, f"prepare.{victim}", timeout=180, count=2, fresh_s=FRESH_S).start()
    results = run_map(rows, read_and_prepare, concurrency=2, num_cpus=1.0, progress=False, max_retries=1)
    kills = killer.kills()
    assert len({k.pid for k in kills}) == 2 and all(k.dead for k in kills)

    assert [r["slide_id"] for r in results] == [victim, other]
    bad, good = results
    assert bad["status"] == "failed" and f"slide {victim!r}" in bad["error"] and "2 time(s)" in bad["error"], bad
    assert bad["patient_id"] == slides[0]["patient_id"] and bad["key"] == "k0"
    assert good["status"] == "ok" and Path(good["path"]).exists(), good
    assert not (tmp_path / "prepared" / f"{victim}.h5ad").exists()
    assert leftovers(tmp_path / "prepared") == []
    print(f"\nFAULT data-worker x2 (max_retries=1): killed pids {[k.pid for k in kills]}; "
          f"{victim} failed alone ({bad['error']}); {other} ok")
