"""How ``run_cohort`` holds its Ray session: the embedded Ray's deferred shutdown is joined before it returns or
raises, also when the closing work (summary, report) fails (an in-process caller may start another Ray at once);
Ray's dashboard only where a Ray Train worker group may need it."""

from __future__ import annotations

import contextlib

import pytest

from senca_platform import runner
from senca_platform.demo import write_demo
from senca_platform.spec import load_spec


class _Shutdown:
    joined = False

    def join(self):
        self.joined = True


@pytest.mark.parametrize("report_fails", [False, True])
def test_deferred_ray_shutdown_is_joined_after_the_closing_work(tmp_path, monkeypatch, report_fails):
    import jobs.pipeline
    import jobs.report

    shutdown = _Shutdown()

    @contextlib.contextmanager
    def fake_session(*args, **kwargs):
        assert kwargs.get("defer_shutdown") is True
        yield {"embedded": False, "num_cpus": 1, "shutdown": shutdown}

    def fake_report(out, on_error):
        assert not shutdown.joined  # the shutdown runs beside the closing work, not before it
        if report_fails:
            raise OSError("disk full")
        return None

    monkeypatch.setattr(runner, "ray_session", fake_session)
    monkeypatch.setattr(jobs.pipeline, "run_pipeline", lambda plan, **kw: {
        "slides": [], "model_path": None, "error": None, "tables": {}, "stages": {}})
    monkeypatch.setattr(jobs.report, "write_report", fake_report)
    spec_path = write_demo(tmp_path, n_patients=1, n_spots=60, seed=0, epochs=1, tuning=False)
    run = lambda: runner.run_cohort(load_spec(spec_path), spec_path=spec_path, progress=False,  # noqa: E731
                                    echo=lambda m: None, track=False)
    if report_fails:
        with pytest.raises(OSError, match="disk full"):
            run()
    else:
        assert run().summary_path.is_file()
    assert shutdown.joined


@pytest.mark.parametrize("n_patients,launcher,minimums,dashboard", [
    (1, "auto", {}, False), (1, "ray_train", {}, True),
    (2, "auto", {"min_spots_per_worker": 0, "min_spot_epochs_per_worker": 0}, True),  # two workers however small
    (2, "auto", {}, False),  # 2 x 60 spots counted before Ray starts: fewer than two workers' 5,000 each
    (2, "auto", {"min_spots_per_worker": 60, "min_spot_epochs_per_worker": 0}, True),  # 120 spots: two of 60
    # 120 spots x 12 epochs (the trials': more than the trainer's 1) = 1,440 spot-epochs: two workers of 720
    (2, "auto", {"min_spots_per_worker": 0, "min_spot_epochs_per_worker": 720}, True),
    (2, "auto", {"min_spots_per_worker": 0, "min_spot_epochs_per_worker": 721}, False)])
def test_ray_starts_without_its_dashboard_when_no_worker_group_can_train(tmp_path, monkeypatch, n_patients,
                                                                          launcher, minimums, dashboard):
    import jobs.pipeline
    import yaml

    asked = {}

    @contextlib.contextmanager
    def fake_session(*args, **kwargs):
        asked.update(kwargs)
        yield {"embedded": False, "num_cpus": 1, "shutdown": None}

    monkeypatch.setattr(runner, "ray_session", fake_session)
    monkeypatch.setattr(jobs.pipeline, "run_pipeline", lambda plan, **kw: {
        "slides": [], "model_path": None, "error": None, "tables": {}, "stages": {}})
    spec_path = write_demo(tmp_path, n_patients=n_patients, n_spots=60, seed=0, epochs=1, tuning=True, **minimums)
    spec = yaml.safe_load(spec_path.read_text())
    spec["training"]["launcher"] = launcher
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    runner.run_cohort(load_spec(spec_path), spec_path=spec_path, progress=False, echo=lambda m: None, track=False)
    assert asked["dashboard"] is dashboard


def test_ray_handles_in_garbage_cycles_are_freed_before_the_deferred_shutdown():
    """A reference cycle holding an ObjectRef (Tune and Ray Data leave such garbage behind) is collected while Ray
    is up: freed by the collector beside the deferred shutdown, its destructor reaches a core worker being shut
    down and Ray ends the process (exit 1, no summary)."""
    import gc
    import weakref

    import ray

    from senca_platform.ray_local import ray_session

    class Holder:
        def __init__(self):
            self.ref = ray.put(1)
            self.me = self  # only the collector frees it

    was_enabled = gc.isenabled()
    gc.disable()  # no automatic collection: only the session's own can free the cycle
    try:
        with ray_session(num_cpus=1, quiet=True, defer_shutdown=True, dashboard=False) as session:
            holder = Holder()
            alive = weakref.ref(holder)
            del holder
            assert alive() is not None
        assert alive() is None  # collected before the shutdown thread started
    finally:
        if session.get("shutdown") is not None:
            session["shutdown"].join()
        if was_enabled:
            gc.enable()
    assert not ray.is_initialized()


def test_an_embedded_rays_shutdown_stops_every_process_it_started_monitor_first(monkeypatch):
    """``ray_local.shutdown`` SIGKILLs the embedded node's autoscaler monitor before Ray's own shutdown reaches it
    (Ray would wait a second for it: its SIGTERM handler reports to the GCS Ray stopped before it), and every
    process of the node, its worker included, is gone afterwards."""
    import os
    import time

    import ray
    from ray._private import node as ray_node
    from ray._private import ray_constants
    from ray._private import worker as ray_worker

    from senca_platform.ray_local import ray_session

    from _services import _alive

    reached = []  # the monitor's state when Ray's shutdown came to it
    own_kill = ray_node.Node._kill_process_type

    def spy(self, process_type, *args, **kwargs):
        if process_type == ray_constants.PROCESS_TYPE_MONITOR:
            reached.extend(info.process.poll() for info in self.all_processes.get(process_type, []))
        return own_kill(self, process_type, *args, **kwargs)

    monkeypatch.setattr(ray_node.Node, "_kill_process_type", spy)
    with ray_session(num_cpus=1, quiet=True, dashboard=False):
        worker = ray.get(ray.remote(lambda: os.getpid()).options(num_cpus=1).remote())
        processes = ray_worker._global_node.all_processes
        monitors = [info.process for info in processes[ray_constants.PROCESS_TYPE_MONITOR]]
        pids = [worker] + [info.process.pid for infos in processes.values() for info in infos]
        assert monitors and all(m.poll() is None for m in monitors) and _alive(pids) == pids
    assert not ray.is_initialized()
    assert reached == [-9] * len(monitors)  # already killed when Ray's one-second grace would have begun
    deadline = time.monotonic() + 10
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _alive(pids) == []
