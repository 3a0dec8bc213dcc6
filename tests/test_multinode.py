"""Multi-node, for real: a Ray cluster of a head and two worker nodes on 127.0.0.1 (``ray start`` processes, token
auth), ``senca-platform run`` with ``ray.address`` set, DDP across the two worker nodes; one worker node is
killed mid-training (``SIGKILL`` to its raylet, agents and Train worker at once, as a machine failure) and a
replacement node joins (as an autoscaler would add one).

The run finishes with exit 0, the same regions and embeddings as a clean run on the same cluster (every rank's
random generators are in the checkpoint, so the restarted worker group computes what the first would have), one
registered model version, and the summary says training was restarted from which checkpoint.

The Train workers ask for a ``trainer`` resource only the worker nodes have, so the two ranks land on two
different worker nodes and never on the head (where the driver and Ray Train's controller run).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import subprocess
from pathlib import Path

import pytest
import yaml

from _faults import FAULT_ENV, Killer, wait_for
from _services import VENV_BIN, RayHead, RayNode, assert_same_result, service_env, tiny_cohort

pytestmark = [pytest.mark.slow]

TOKEN = "senca-test-" + secrets.token_hex(12)
EPOCHS, SLOW_S, FRESH_S = 6, 1.0, 0.6
TRAINER = {"trainer": 1}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    piddir = tmp_path_factory.mktemp("node_pids")
    env = {FAULT_ENV["piddir"]: str(piddir), FAULT_ENV["slow"]: str(SLOW_S)}
    # the GCS declares a silent node dead after 3 missed 1 s health checks (Ray's default: 5 x 3 s), so the test
    # waits less for what a production cluster also detects
    head = RayHead(TOKEN, num_cpus=2, env={"RAY_health_check_period_ms": "1000",
                                           "RAY_health_check_timeout_ms": "1000",
                                           "RAY_health_check_failure_threshold": "3"}).start()
    nodes: list[RayNode] = []
    try:
        for _ in range(2):
            nodes.append(RayNode(head, num_cpus=2, resources=TRAINER, env=env).start())
        yield head, nodes, piddir, env
    finally:
        for node in nodes:
            node.stop()
        head.stop()


@pytest.fixture(scope="module")
def spec(cluster, tmp_path_factory):
    head = cluster[0]
    path = tiny_cohort(tmp_path_factory.mktemp("multinode"), name="multinode", n_patients=2, n_spots=150,
                       epochs=EPOCHS)
    data = yaml.safe_load(path.read_text())
    data["training"].update(num_workers=2, min_spots_per_worker=0, min_spot_epochs_per_worker=0,
                            launcher="ray_train",
                            resources_per_worker={"CPU": 1, **TRAINER}, checkpoint_every_epochs=2,
                            checkpoint_interval_s=0, report_interval_s=0, max_failures=1)
    data["ray"] = {"address": head.gcs}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _run(spec: Path, out: Path) -> subprocess.Popen:
    exe = str(VENV_BIN / "senca-platform")
    # the whole cluster is on 127.0.0.1: this driver's node IP is the loopback too (Ray would otherwise resolve
    # 127.0.0.1 in ray.address to the machine's outward IP, where nothing listens)
    env = service_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    return subprocess.Popen([exe, "run", str(spec), "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _finish(proc: subprocess.Popen, timeout: float = 420) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the run did not finish in {timeout:.0f}s: {err[-3000:]}")
    assert proc.returncode == 0, f"exit {proc.returncode}: {err[-4000:]}"
    return out, err


def _session_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2:].split()[3])


def _record(out: Path) -> tuple[dict, int]:
    """(the run's summary, how many model versions its MLflow registry holds)."""
    with sqlite3.connect(out / "mlflow.db") as db:
        versions = db.execute("SELECT count(*) FROM model_versions").fetchone()[0]
    return json.loads((out / "cohort_summary.json").read_text()), versions


@pytest.mark.timeout(1200)
def test_a_killed_worker_node_gives_the_clean_result_and_one_model_version(cluster, spec, tmp_path):
    head, nodes, piddir, env = cluster
    _finish(_run(spec, tmp_path / "clean"))
    summary, versions = _record(tmp_path / "clean")
    train = summary["stages"]["train"]
    assert train["workers_used"] == 2 and train["launcher"] == "ray_train", train
    assert not train.get("restarts") and versions == 1, (train, versions)

    sessions = {node.sid: node for node in nodes}
    killed: list[RayNode] = []

    def kill_node(f) -> bool:  # the node whose session holds the paused Train worker, all of it at once
        node = sessions.get(_session_of(f.pid))
        if node is None:
            return False
        killed.append(node)
        return node.kill()

    # killed in epoch 3 or later: the checkpoint of epoch 1 (one every 2 epochs) is there to restart from
    killer = Killer(piddir, "train.rank", timeout=400, fresh_s=FRESH_S, kill=kill_node,
                    accept=lambda f: int(f.point.rsplit("epoch", 1)[1]) >= 3
                    and _session_of(f.pid) in sessions).start()
    proc = _run(spec, tmp_path / "fault")
    wait_for(lambda: killed, timeout=400, what="a worker node killed mid-training")
    nodes.append(RayNode(head, num_cpus=2, resources=TRAINER, env=env).start())  # the replacement node
    stdout, stderr = _finish(proc)
    [kill] = killer.kills()
    assert kill.dead and not killed[0].pids(), kill

    summary, versions = _record(tmp_path / "fault")
    train = summary["stages"]["train"]
    assert summary["status"] == "ok" and train["workers_used"] == 2, summary
    assert train["restarts"] >= 1 and train["restart_exact"] is True, train
    assert "training was restarted" in stderr + stdout
    assert versions == 1, versions
    assert_same_result(tmp_path / "clean", tmp_path / "fault")
    print(f"\nFAULT worker node: killed node (session {killed[0].sid}) at {kill.point} after {kill.seconds}s; "
          f"restarted from epoch(s) {train['restarted_from_epochs']}; regions and embeddings identical to the clean "
          "run; one model version")
