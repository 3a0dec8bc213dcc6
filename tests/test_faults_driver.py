"""The driver killed mid-run (``SIGKILL`` to the whole process group of ``senca-platform run``: the driver and its
embedded Ray), then ``run --resume`` twice: finished stages are not redone, the MLflow parent run is continued,
one registered model version, no partial file left, no Ray process left behind."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest

from _procs import Cli, ray_tmpdir, wait_until
from _services import assert_same_result, cli, fault_cohort, service_env, tiny_cohort
from jobs._files import TEMP_TAG

pytestmark = [pytest.mark.slow]
NAME = "kill-resume"
EPOCHS = 6  # as in _services.fault_cohort


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """name -> (inode, mtime_ns) of the files in ``folder``."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.glob("*.h5ad"))}


def _checkpoint_history(out: Path) -> list[dict] | None:
    """The per-epoch history of the latest checkpoint training has written (what a resumed run continues from):
    the one Ray Train registered (its ``checkpoint_manager_snapshot.json``), or the newest complete one of a
    one-worker task (``checkpoint_<epoch>/``, renamed into place whole); None before the first."""
    for snapshot in (out / "ray" / "train").glob("*/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]["checkpoint_dir_name"]
            return json.loads((snapshot.parent / latest / "history.json").read_text())
        except (OSError, ValueError, KeyError, TypeError):  # being written
            return None
    solo = sorted((out / "ray" / "train").glob("*/checkpoint_*/history.json"))
    try:
        return json.loads(solo[-1].read_text()) if solo else None
    except (OSError, ValueError):  # removed as a newer one arrived
        return None


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """Run 1, killed with SIGKILL to its process group once preprocessing is cached and Ray Train has written a
    checkpoint; then `run --resume` (2) and `run --resume` again (3)."""
    root = tmp_path_factory.mktemp("killres")
    spec = fault_cohort(root, name=NAME)  # a checkpoint every epoch: there is one to resume from at the kill
    out = root / "results"
    raytmp = ray_tmpdir()
    env = service_env(RAY_TMPDIR=str(raytmp))
    state: dict = {"spec": spec, "out": out, "root": root}
    # run 1's workers pause 1 s at each fault point (jobs._faults.fault_point): an epoch then lasts long enough for
    # the kill to land mid-training (an epoch of this cohort takes milliseconds)
    slow = dict(env, SENCA_FAULT_PIDDIR=str(root / "pids"), SENCA_FAULT_SLOW_S="1.0")
    (root / "pids").mkdir()
    run1 = Cli("run", str(spec), "--json", cwd=root, env=slow, name="run1")
    try:
        def ready():
            if not run1.running():
                raise AssertionError(f"run 1 ended (rc {run1.proc.returncode}) before it could be killed: "
                                     f"{run1.stderr[-3000:]}")
            history = _checkpoint_history(out)
            return history if history and (out / "cache" / "basis.json").exists() else None

        state["checkpoint_history"] = wait_until(ready, timeout=300, what="a Ray Train checkpoint of run 1")
        state["prepared"] = _files(out / "preprocess" / "prepared")
        state["projected"] = _files(out / "preprocess" / "slides")
        run1.kill_group()
        state["train_cached_at_kill"] = (out / "cache" / "train.json").exists()
        state["leftovers_after_killpg"] = run1.leftovers(grace_s=5.0)  # printed only: the cleanup is asserted
    finally:
        state["still_alive_after_cleanup"] = run1.kill_all()
    uri = f"sqlite:///{out / 'mlflow.db'}"
    state["uri"] = uri
    killed_runs = _client(uri).search_runs(
        [_client(uri).get_experiment_by_name(NAME).experiment_id], "tags.`senca.role` = 'parent'")
    state["killed_runs"] = [(r.info.run_id, r.info.status) for r in killed_runs]
    # what a write cut off by the kill leaves: a temp file next to its target (atomic write = temp + rename)
    state["planted"] = [out / "slides" / ".P1_S1.senca-tmp-k1ll3d00.h5ad",
                        out / ".cohort_summary.senca-tmp-k1ll3d00.json",
                        out / "cache" / ".infer.senca-tmp-k1ll3d00.json"]
    for p in state["planted"]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half a file")
    try:
        for i in (2, 3):
            res = cli("run", str(spec), "--resume", "--json", env=env, timeout=500, cwd=root)
            state[f"rc{i}"], state[f"stderr{i}"] = res.returncode, res.stderr
            assert res.returncode == 0, res.stderr[-4000:]
            state[f"summary{i}"] = json.loads(res.stdout)
    finally:
        shutil.rmtree(raytmp, ignore_errors=True)
    return state


@pytest.mark.timeout(900)
def test_the_kill_left_no_process_and_resume_succeeds(killed):
    assert [status for _, status in killed["killed_runs"]] == ["RUNNING"]  # killed: nobody ended it
    print(f"\nprocesses alive 5 s after killpg (Ray workers in their own process groups): "
          f"{len(killed['leftovers_after_killpg'])}; after cleanup by pid: {len(killed['still_alive_after_cleanup'])}")
    assert killed["still_alive_after_cleanup"] == []
    assert killed["rc2"] == 0 and killed["rc3"] == 0
    s2 = killed["summary2"]
    assert s2["status"] == "ok" and s2["n_failed"] == 0
    for s in s2["slides"]:
        assert s["status"] == "ok" and s["n_regions"] >= 2 and Path(s["h5ad"]).exists() and s["ari"] > 0.2


@pytest.mark.timeout(60)
def test_finished_stages_are_not_redone(killed):
    out, s2 = killed["out"], killed["summary2"]
    assert s2["stages"]["preprocess"]["cached"] is True
    # the prepared and projected slides are the same files, untouched (inode and mtime)
    assert _files(out / "preprocess" / "prepared") == killed["prepared"] and len(killed["prepared"]) == 2
    assert _files(out / "preprocess" / "slides") == killed["projected"] and len(killed["projected"]) == 2
    history = json.loads((out / "train" / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(EPOCHS))
    print(f"\nkilled {'after training' if killed['train_cached_at_kill'] else 'mid-training'}; checkpoint at the "
          f"kill: {len(killed['checkpoint_history'])}/{EPOCHS} epochs")
    if killed["train_cached_at_kill"]:  # the kill came after training had finished
        assert s2["stages"]["train"]["cached"] is True
    else:  # training went on from the checkpoint: the epochs done before the kill are the checkpoint's, as is
        ckpt = killed["checkpoint_history"]
        assert s2["stages"]["train"]["cached"] is False and 0 < len(ckpt) < EPOCHS
        assert history[:len(ckpt)] == ckpt  # same values, peak RSS of the killed worker included: not retrained
    # the second --resume: everything cached, same regions
    s3 = killed["summary3"]
    assert all(stage["cached"] for stage in s3["stages"].values()), s3["stages"]
    assert [s["ari"] for s in s3["slides"]] == [s["ari"] for s in s2["slides"]]


@pytest.mark.timeout(60, func_only=True)  # the test itself; its setup is the first conftest.clean_fault_run (a run)
def test_the_resumed_run_computed_what_a_clean_run_computes(killed, clean_fault_run):
    """Killed mid-training and resumed from the checkpoint (weights, optimiser, random generators): the regions and
    embeddings of every slide equal those of a run that was never interrupted, bit for bit."""
    assert_same_result(clean_fault_run, killed["out"])


@pytest.mark.timeout(120)
def test_mlflow_parent_run_is_continued_and_the_model_registered_once(killed):
    mc = _client(killed["uri"])
    (killed_id, _), = killed["killed_runs"]
    s2, s3 = killed["summary2"], killed["summary3"]
    assert s2["mlflow_run_id"] == killed_id and s2["mlflow"]["continued"] is True  # the same run id
    run = mc.get_run(killed_id)
    assert run.info.status == "FINISHED" and run.data.tags["senca.status"] == "ok"
    assert run.data.tags["senca.continued"] == "1" and run.data.tags["senca.tracking"] == "complete"
    kids = mc.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{killed_id}'")
    stages = sorted(k.data.tags["senca.stage"] for k in kids)
    assert stages == ["infer", "preprocess", "train"]  # each stage once: none logged twice, none half-logged
    assert all(k.info.status == "FINISHED" for k in kids)
    assert [m.step for m in mc.get_metric_history(killed_id, "train_loss")] == list(range(EPOCHS))
    assert {"spec", "tables", "region_maps", "cohort_summary.json"} <= {a.path for a in mc.list_artifacts(killed_id)}
    # exactly one registered version, also after the second --resume (a new parent run: the first was complete)
    versions = mc.search_model_versions(f"name = '{NAME}'")
    assert [int(v.version) for v in versions] == [1]
    assert s2["registered_model_version"] == 1 and s3["registered_model_version"] == 1
    assert s3["registered_model"]["reused"] is True and s3["mlflow_run_id"] != killed_id
    assert versions[0].run_id == killed_id and versions[0].tags.get("senca.model_state")
    assert str(mc.get_model_version_by_alias(NAME, "champion").version) == "1"
    parents = mc.search_runs([run.info.experiment_id], "tags.`senca.role` = 'parent'")
    assert sorted(r.info.run_id for r in parents) == sorted([killed_id, s3["mlflow_run_id"]])


@pytest.mark.timeout(60)
def test_no_partial_files_are_visible_after_resume(killed):
    from jobs._files import OUTPUT_MARKER
    from jobs.pipeline import partial_files

    out = killed["out"]
    assert all(not p.exists() for p in killed["planted"])
    assert "removed 3 partial file(s)" in killed["stderr2"]
    assert partial_files(out) == []
    hidden = [p for p in out.rglob(".*") if p.is_file() and not p.is_relative_to(out / "ray")
              and p != out / OUTPUT_MARKER]  # the marker that makes the folder a run's
    assert hidden == [], hidden  # nothing half-written anywhere the platform writes (Ray's storage is Ray's)
    assert not list(out.rglob("*.tmp"))
    assert json.loads((out / "cohort_summary.json").read_text())["mlflow_run_id"] == killed["summary3"]["mlflow_run_id"]


# --------------------------------------------------------------------------------------------- without Ray
def _spec(tmp_path: Path):
    from senca_platform.spec import validate_data

    data = {"name": "sup", "output_dir": str(tmp_path / "out"),
            "patients": [{"id": "P", "slides": [{"id": "S", "reader": "h5ad", "path": str(tmp_path / "s.h5ad")}]}]}
    return validate_data(data, source="test", base_dir=tmp_path)


@pytest.mark.timeout(120)
def test_a_plain_rerun_supersedes_the_killed_run_and_resume_skips_a_live_one(tmp_path):
    """The parent run of a killed driver (its pid no longer runs) is marked FAILED with ``senca.superseded_by`` by
    a plain re-run; ``--resume`` never continues a parent whose driver is alive (a run in progress)."""
    from senca_platform.tracking import MlflowTracker, driver_id

    spec = _spec(tmp_path)
    first = MlflowTracker(spec)
    mc = first.client
    dead = f"{socket.gethostname()}:{2 ** 22 + 12345}:1"  # no such pid
    mc.set_tag(first.run_id, "senca.driver", dead)
    second = MlflowTracker(spec)
    assert second.run_id != first.run_id and second.superseded == [first.run_id]
    old = mc.get_run(first.run_id)
    assert old.info.status == "FAILED" and old.data.tags["senca.superseded_by"] == second.run_id

    mc.set_tag(second.run_id, "senca.driver", driver_id())  # this process: alive
    third = MlflowTracker(spec, resume=True)
    assert third.run_id != second.run_id and not third.continued
    assert mc.get_run(second.run_id).info.status == "RUNNING"  # a live run is left alone
    mc.set_tag(third.run_id, "senca.driver", dead)
    mc.set_tag(second.run_id, "senca.driver", dead)
    fourth = MlflowTracker(spec, resume=True)
    assert fourth.continued and fourth.run_id == third.run_id  # the newest unfinished one
    assert mc.get_run(second.run_id).data.tags["senca.superseded_by"] == third.run_id


@pytest.mark.timeout(120)
def test_a_second_run_on_a_busy_output_directory_is_refused(tmp_path):
    """While a run holds ``<out>/run.lock``, another ``run`` on the same directory exits 3 before any work."""
    from senca_platform.outdir import claim_output_dir
    from senca_platform.runner import output_lock

    spec = tiny_cohort(tmp_path, name="busy")
    out = claim_output_dir(tmp_path / "results")  # what a run does first: the folder is marked as a run's
    with output_lock(out):
        res = cli("run", str(spec), "--json", env=service_env(), timeout=120, cwd=tmp_path)
    assert res.returncode == 3, res.stderr[-3000:]
    assert [line for line in res.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {out} is in use by another senca-platform run (pid {os.getpid()}): wait for it to end, or choose "
        "another --out"]
    assert "Traceback" not in res.stderr and sorted(p.name for p in out.iterdir()) == [".senca-run.json", "run.lock"]


def _cache_entries(folder: Path) -> list[str]:
    """The slides with a cache entry in ``folder``: its ``<slide>.json`` files, not the hidden temp file of an entry
    being written (``.<slide>.senca-tmp-XXXXXXXX.json``, ``jobs._files``), which pathlib's ``*`` also matches: a kill
    while one was open counted that slide as finished (a CI run, 2026-12-07)."""
    return sorted(p.stem for p in folder.glob("*.json") if TEMP_TAG not in p.name)


@pytest.fixture(scope="module")
def killed_in_preprocess(tmp_path_factory):
    """Run 1 of a 3-slide cohort, each slide task held 6 s at its last write (the fault hook, before the rename)
    on a 2-CPU embedded Ray: killed (SIGKILL to its process group) as soon as one slide's own cache entry exists,
    while other slides are still being read; then `run --resume` without the hook."""
    root = tmp_path_factory.mktemp("killpre")
    spec = tiny_cohort(root, name=NAME + "-pre", n_patients=3, n_spots=200, seed=5, epochs=2)
    out = root / "results"
    raytmp = ray_tmpdir()
    piddir = root / "pids"
    piddir.mkdir()
    state: dict = {"out": out}
    run1 = Cli("run", str(spec), "--json", cwd=root, name="run1",
               env=service_env(RAY_TMPDIR=str(raytmp), SENCA_FAULT_PIDDIR=str(piddir), SENCA_FAULT_SLOW_S="6"))
    try:
        def one_slide_done():
            if not run1.running():
                raise AssertionError(f"run 1 ended (rc {run1.proc.returncode}) before it could be killed: "
                                     f"{run1.stderr[-3000:]}")
            return _cache_entries(out / "cache" / "prepare") or None

        wait_until(one_slide_done, timeout=300, what="a slide's own cache entry in run 1")
        run1.kill_group()
        state["done_at_kill"] = _cache_entries(out / "cache" / "prepare")
        state["basis_at_kill"] = (out / "cache" / "basis.json").exists()
        state["prepared_at_kill"] = _files(out / "preprocess" / "prepared")
    finally:
        state["still_alive_after_cleanup"] = run1.kill_all()
    try:
        res = cli("run", str(spec), "--resume", "--json", env=service_env(RAY_TMPDIR=str(raytmp)), timeout=500,
                  cwd=root)
        assert res.returncode == 0, res.stderr[-4000:]
        state["summary"], state["stderr"] = json.loads(res.stdout), res.stderr
    finally:
        shutil.rmtree(raytmp, ignore_errors=True)
    return state


@pytest.mark.timeout(900)
def test_slides_finished_before_a_kill_in_preprocessing_are_not_read_again(killed_in_preprocess):
    st = killed_in_preprocess
    assert st["still_alive_after_cleanup"] == []
    done = st["done_at_kill"]
    assert 1 <= len(done) < 3 and not st["basis_at_kill"], st  # killed in the middle of the slide map
    print(f"\nslides finished at the kill: {done}; resumed: {3 - len(done)} slide(s) read again")
    assert f"preprocess: {3 - len(done)} slide(s) to read ({len(done)} cached)" in st["stderr"]
    after = _files(st["out"] / "preprocess" / "prepared")
    for sid in done:  # the same file, not rewritten (inode and mtime)
        assert after[f"{sid}.h5ad"] == st["prepared_at_kill"][f"{sid}.h5ad"]
    s = st["summary"]
    assert s["status"] == "ok" and len(s["slides"]) == 3 and all(x["status"] == "ok" for x in s["slides"])
    leftovers = [p for p in st["out"].rglob(".*") if p.is_file() and (p.suffix in (".tmp", ".h5ad"))]
    assert leftovers == []  # the slide cut off mid-write left no temp file behind
