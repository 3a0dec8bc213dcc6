"""MLflow gets the training curve live and each stage's child run with its real start and end (no Ray; a real
local sqlite MLflow store)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from senca_platform.tracking_log import FLUSH_EVERY_S as FLUSH_S

pytestmark = [pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One sqlite store for the module (creating one takes seconds); each test has its own cohort + experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _spec(tmp_path: Path, store: str, name: str):
    from senca_platform.spec import validate_data

    data = {"name": name, "output_dir": str(tmp_path / "out"), "tracking": {"uri": store},
            "patients": [{"id": "P", "slides": [{"id": "S", "reader": "h5ad", "path": str(tmp_path / "s.h5ad")}]}]}
    return validate_data(data, source="test", base_dir=tmp_path)


def _record(epoch: int, t: float) -> dict:
    return {"epoch": epoch, "time": t, "loss": 1.0 / (epoch + 1), "recon": 0.5 / (epoch + 1), "align": 0.1,
            "neigh": float("nan"), "proto": 0.2, "world_size": 2, "peak_rss_mb": 300.0 + epoch,
            "restored_from_epoch": None}


def _stage_info(t0: float, history: list[dict], *, cached: bool = False, ended: float | None = None) -> dict:
    return {"status": "ok", "cached": cached, "seconds": 10.0, "started_at": t0,
            "ended_at": t0 + 10 if ended is None else ended, "params": {"epochs": len(history), "lr": 0.003},
            "metrics": {"final_loss": history[-1]["loss"]}, "history": history}


def _child(mc, tracker, stage: str):
    (kid,) = [r for r in mc.search_runs([tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{tracker.run_id}'")
              if r.data.tags.get("senca.stage") == stage]
    return kid


def _points(mc, run_id: str, key: str) -> list[tuple[int, int, float]]:
    return sorted((m.step, m.timestamp, m.value) for m in mc.get_metric_history(run_id, key))


def test_train_curve_is_live_and_the_child_run_has_the_stage_times(tmp_path, store):
    from senca_platform.tracking import MlflowTracker

    tracker = MlflowTracker(_spec(tmp_path, store, "live"))
    mc = tracker.client
    t0 = float(int(time.time()) - 100)  # whole seconds: exact milliseconds
    tracker.stage_started("train", t0)
    child = tracker.children["train"]
    run = mc.get_run(child)
    assert run.info.status == "RUNNING" and run.info.start_time == int(t0 * 1000)
    assert run.data.tags["senca.stage"] == "train"

    history = [_record(e, t0 + 1 + e) for e in range(4)]
    for rec in history[:2]:  # spaced by more than the flush interval: each one sent as it comes
        tracker.epoch("train", rec)
        time.sleep(FLUSH_S + 0.1)
    # live: visible before the stage ends
    assert _points(mc, child, "loss") == [(e, int((t0 + 1 + e) * 1000), 1.0 / (e + 1)) for e in range(2)]
    assert [(s, t) for s, t, _ in _points(mc, tracker.run_id, "train_loss")] == \
        [(e, int((t0 + 1 + e) * 1000)) for e in range(2)]
    assert "neigh" not in mc.get_run(child).data.metrics  # non-finite: left out
    assert {"time", "epoch"}.isdisjoint(mc.get_run(child).data.metrics)

    tracker.epoch("train", history[2])  # within the interval: buffered ...
    tracker.flush()  # ... until a flush (the stage's end does one too)
    assert len(mc.get_metric_history(child, "loss")) == 3
    tracker.epoch("train", history[3])
    tracker.epoch("train", {**history[3], "time": t0 + 6})  # re-run after a worker restart: both points kept
    tracker.epoch("tune", _record(0, t0 + 1))  # no such stage open: ignored

    tracker.stage("train", _stage_info(t0, history))
    run = mc.get_run(child)
    assert run.info.status == "FINISHED"
    assert run.info.start_time == int(t0 * 1000) and run.info.end_time == int((t0 + 10) * 1000)
    assert run.data.tags["senca.cached"] == "False" and run.data.params["lr"] == "0.003"
    want = [(e, int((t0 + 1 + e) * 1000)) for e in range(4)] + [(3, int((t0 + 6) * 1000))]
    assert [(s, t) for s, t, _ in _points(mc, child, "loss")] == sorted(want)  # history rows not logged twice
    assert [m.step for m in mc.get_metric_history(child, "peak_rss_mb")] == [0, 1, 2, 3, 3]
    assert [(s, t) for s, t, _ in _points(mc, tracker.run_id, "train_loss")] == sorted(want)
    (seconds,) = mc.get_metric_history(child, "seconds")
    assert seconds.value == 10.0 and seconds.timestamp == int((t0 + 10) * 1000)
    assert tracker.summary_info()["child_runs"] == {"train": child}


def test_a_stage_without_stage_started_uses_the_recorded_times(tmp_path, store):
    """A cached stage (or a sync replay from the tracking journal): the child run is created at the end, with the
    info's times, and each history row at its own time (a row without one: at the stage's end)."""
    from senca_platform.sync import Journal
    from senca_platform.tracking import MlflowTracker

    tracker = MlflowTracker(_spec(tmp_path, store, "cached"))
    mc = tracker.client
    t0 = float(int(time.time()) - 1000)
    history = [_record(e, t0 + 2 + e) for e in range(3)] + [{"epoch": 3, "loss": 0.1}]
    journal = Journal(tmp_path / "out")  # as `senca-platform sync` replays it: through the JSON journal
    journal.stage("train", _stage_info(t0, history, cached=True, ended=t0 + 30))
    (entry,) = journal.read()["stages"]
    tracker.stage(entry["name"], entry["info"])
    kid = _child(mc, tracker, "train")
    assert kid.info.start_time == int(t0 * 1000) and kid.info.end_time == int((t0 + 30) * 1000)
    assert kid.info.status == "FINISHED" and kid.data.tags["senca.cached"] == "True"
    want = [(e, int((t0 + 2 + e) * 1000)) for e in range(3)] + [(3, int((t0 + 30) * 1000))]
    assert [(s, t) for s, t, _ in _points(mc, kid.info.run_id, "loss")] == want
    assert [(s, t) for s, t, _ in _points(mc, tracker.run_id, "train_loss")] == want


def test_a_continued_run_does_not_log_the_parent_curve_twice(tmp_path, store):
    """A sync (or resume) continues a parent whose curve was partly sent live before tracking stopped: the
    replayed history adds only the missing points; the cut-off child run is replaced."""
    from senca_platform.tracking import MlflowTracker

    spec = _spec(tmp_path, store, "continued")
    first = MlflowTracker(spec)
    t0 = float(int(time.time()) - 500)
    history = [_record(e, t0 + 1 + e) for e in range(4)]
    first.stage_started("train", t0)
    for rec in history[:2]:
        first.epoch("train", rec)
    first.flush()  # then the driver is gone: the stage never ends
    again = MlflowTracker(spec, run_id=first.run_id, run_key=first.run_key)
    assert again.continued and again.run_id == first.run_id and "train" not in again.children
    again.stage("train", _stage_info(t0, history))
    mc = again.client
    want = [(e, int((t0 + 1 + e) * 1000)) for e in range(4)]
    assert [(s, t) for s, t, _ in _points(mc, again.run_id, "train_loss")] == want
    kid = _child(mc, again, "train")  # one child: the cut-off one was deleted
    assert [(s, t) for s, t, _ in _points(mc, kid.info.run_id, "loss")] == want


def test_tune_trials_and_best_curve_use_the_rows_times(tmp_path, store):
    from senca_platform.tracking import MlflowTracker

    tracker = MlflowTracker(_spec(tmp_path, store, "tune"))
    mc = tracker.client
    t0 = float(int(time.time()) - 300)
    tracker.stage_started("tune", t0)
    tracker.epoch("tune", {**_record(0, t0 + 1), "trial": "a"})  # trials: logged at the stage's end
    hist = [{**_record(e, t0 + 1 + e), "objective": -e, "trial": "a"} for e in range(3)]
    trial = {"trial_id": "a", "status": "ok", "config": {"lr": 0.002}, "history": hist, "objective": -2,
             "epochs": 3}
    tracker.stage("tune", {"status": "ok", "cached": False, "seconds": 5, "started_at": t0, "ended_at": t0 + 5,
                           "params": {}, "metrics": {}, "trials": [trial],
                           "best": {"config": {"lr": 0.002}, "objective": -2, "history": hist}})
    tune = _child(mc, tracker, "tune")
    assert tune.info.start_time == int(t0 * 1000) and tune.info.end_time == int((t0 + 5) * 1000)
    (tr,) = mc.search_runs([tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{tune.info.run_id}'")
    want = [(e, int((t0 + 1 + e) * 1000)) for e in range(3)]
    assert [(s, t) for s, t, _ in _points(mc, tr.info.run_id, "loss")] == want
    assert not mc.get_metric_history(tune.info.run_id, "loss")
    assert [(s, t) for s, t, _ in _points(mc, tracker.run_id, "train_loss")] == want
    assert [(s, t) for s, t, _ in _points(mc, tracker.run_id, "tune_objective")] == want


def test_live_sends_are_throttled_thread_safe_and_never_raise(tmp_path, store):
    from senca_platform.tracking import MlflowTracker

    tracker = MlflowTracker(_spec(tmp_path, store, "throttle"))
    calls = []
    real = tracker.client.log_batch

    def counting(run_id, *args, **kwargs):  # a spy on the real client: counts requests, logs for real
        calls.append(time.monotonic())
        return real(run_id, *args, **kwargs)

    tracker.client.log_batch = counting
    t0 = time.time()
    tracker.stage_started("train", t0)
    threads = [threading.Thread(target=lambda k=k: [tracker.epoch("train", _record(10 * k + e, t0 + (10 * k + e) / 100))
                                                    for e in range(10)]) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(calls) <= 2  # 40 epochs at once: one send (child + parent), the rest buffered
    tracker.stage("train", _stage_info(t0, [_record(e, t0 + e / 100) for e in range(40)]))
    child = tracker.children["train"]
    assert len(tracker.client.get_metric_history(child, "loss")) == 40
    assert len(tracker.client.get_metric_history(tracker.run_id, "train_loss")) == 40

    # a failure while live: training never sees it; the stage's end raises it (the runner's guard records it)
    from mlflow.exceptions import MlflowException

    tracker.client.log_batch = real
    tracker.stage_started("tune", t0)
    tracker.client.delete_run(tracker.children["tune"])  # MLflow now refuses to log into it
    time.sleep(FLUSH_S + 0.1)
    tracker.epoch("tune", _record(0, t0))  # the send fails: no exception here
    tracker.epoch("tune", _record(1, t0))  # nothing more is tried
    assert isinstance(tracker.live.error, MlflowException)
    with pytest.raises(MlflowException):
        tracker.stage("tune", {"status": "ok", "cached": False, "seconds": 1, "started_at": t0, "ended_at": t0 + 1})


def test_the_parent_run_describes_itself(tmp_path, store):
    """A description the MLflow UI shows, the command as source, the tool's version and the code's git commit."""
    import subprocess

    from senca_platform.tracking import MlflowTracker

    tracker = MlflowTracker(_spec(tmp_path, store, "described"), spec_path=tmp_path / "cohort.yaml")
    tags = tracker.client.get_run(tracker.run_id).data.tags
    assert "cohort run of 'described': 1 patient(s), 1 slide(s)" in tags["mlflow.note.content"]
    assert str(tmp_path / "cohort.yaml") in tags["mlflow.note.content"]
    assert tags["mlflow.source.name"] == "senca-platform run" and tags["senca.version"]
    here = Path(__file__).resolve().parent
    head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a checkout: the commit that ran
        assert tags["mlflow.source.git.commit"] == head.stdout.strip()
        assert tags["senca.git_dirty"] in ("true", "false")
