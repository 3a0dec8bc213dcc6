"""Real local services for the cluster / registry tests: a Ray head (``ray start --head``) and an MLflow server,
both on 127.0.0.1 with free ports, each in its own process session so that stopping it ends exactly the processes
it started (by their ids; never ``ray stop``, which would end every Ray on this shared machine)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free right now on 127.0.0.1."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def free_range(width: int, avoid: set[int]) -> int:
    """The first port of ``width`` consecutive free ports (for Ray's worker ports)."""
    for _ in range(200):
        base = random.randint(30000, 59000 - width)
        ok = True
        for p in range(base, base + width):
            if p in avoid:
                ok = False
                break
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port range")


def session_pids(sid: int) -> list[int]:
    """Processes whose session id is ``sid`` (from /proc)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 3 and int(fields[3]) == sid:
            pids.append(int(d.name))
    return pids


def stop_session(sid: int, grace_s: float = 5.0) -> list[int]:
    """SIGTERM every process of the session, wait, SIGKILL what is left; returns the pids still alive (none)."""
    for pid in session_pids(sid):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _alive(session_pids(sid)):
        time.sleep(0.3)
    for pid in session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(session_pids(sid)):
        time.sleep(0.3)
    return _alive(session_pids(sid))


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if state[state.rfind(")") + 2:].split()[0] != "Z":
            out.append(pid)
    return out


def wait_http(url: str, *, headers: dict | None = None, timeout: float = 90.0, proc: subprocess.Popen | None = None,
              log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None and proc.returncode != 0:
            raise RuntimeError(f"process exited with {proc.returncode}: {log.read_text()[-3000:] if log else ''}")
        try:
            req = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError) as err:
            last = err
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s ({last}); {log.read_text()[-3000:] if log else ''}")


def service_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI", "RAY_AUTH_TOKEN",
                        "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.update(extra)
    return env


class RayHead:
    """``ray start --head`` on 127.0.0.1 with token auth (``RAY_AUTH_MODE=token`` + ``RAY_AUTH_TOKEN`` in the head's
    environment; the client sends the same token). Every port is chosen free; temp dir private and short."""

    def __init__(self, token: str, num_cpus: int = 2, env: dict[str, str] | None = None):
        self.token = token
        self.num_cpus = num_cpus
        self.env = dict(env or {})  # extra environment of the head's processes (e.g. Ray system settings)
        self.temp = Path(tempfile.mkdtemp(prefix="srt", dir="/tmp"))  # short: Ray's socket paths are limited
        self.log = self.temp / "head.log"
        self.sid: int | None = None

    def start(self) -> "RayHead":
        names = ["port", "dashboard-port", "node-manager-port", "object-manager-port", "ray-client-server-port",
                 "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
                 "metrics-export-port"]
        ports = dict(zip(names, free_ports(len(names))))
        base = free_range(40, set(ports.values()))
        self.dashboard_port = ports["dashboard-port"]
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.gcs = f"127.0.0.1:{ports['port']}"
        cmd = [str(VENV_BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
               f"--num-cpus={self.num_cpus}", f"--temp-dir={self.temp / 'r'}", "--disable-usage-stats",
               f"--min-worker-port={base}", f"--max-worker-port={base + 39}", "--include-dashboard=true"]
        cmd += [f"--{k}={v}" for k, v in ports.items()]
        env = service_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, **self.env)
        with open(self.log, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                    cwd=str(self.temp))
        self.sid = proc.pid
        try:
            rc = proc.wait(timeout=120)
            if rc != 0:
                raise RuntimeError(f"ray start exited with {rc}: {self.log.read_text()[-3000:]}")
            wait_http(f"{self.address}/api/jobs/", headers={"Authorization": f"Bearer {self.token}"}, timeout=90,
                      log=self.log)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.sid is not None:
            left = stop_session(self.sid)
            self.sid = None
            assert not left, f"Ray processes still alive: {left}"
        shutil.rmtree(self.temp, ignore_errors=True)


class RayNode:
    """A worker node joined to a :class:`RayHead` (``ray start --address``) on 127.0.0.1, its ports free, in its
    own process session: :meth:`kill` ends the node as a machine failure would (``SIGKILL`` to its raylet, agents
    and workers at once); :meth:`stop` ends it politely. ``env`` goes to its processes (its workers inherit it)."""

    def __init__(self, head: RayHead, *, num_cpus: int = 1, resources: dict[str, float] | None = None,
                 env: dict[str, str] | None = None):
        self.head, self.num_cpus, self.resources, self.env = head, num_cpus, dict(resources or {}), dict(env or {})
        self.sid: int | None = None
        self.log = head.temp / f"node-{time.monotonic_ns()}.log"

    def start(self) -> "RayNode":
        import json

        names = ["node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
                 "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port"]
        ports = dict(zip(names, free_ports(len(names))))
        base = free_range(20, set(ports.values()))
        cmd = [str(VENV_BIN / "ray"), "start", f"--address={self.head.gcs}", "--node-ip-address=127.0.0.1",
               f"--num-cpus={self.num_cpus}", f"--resources={json.dumps(self.resources)}", "--disable-usage-stats",
               f"--min-worker-port={base}", f"--max-worker-port={base + 19}"]
        cmd += [f"--{k}={v}" for k, v in ports.items()]
        env = service_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.head.token, **self.env)
        with open(self.log, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                    cwd=str(self.head.temp))
        self.sid = proc.pid
        try:
            rc = proc.wait(timeout=120)
            if rc != 0:
                raise RuntimeError(f"ray start (worker node) exited with {rc}: {self.log.read_text()[-3000:]}")
        except BaseException:
            self.stop()
            raise
        return self

    def pids(self) -> list[int]:
        return _alive(session_pids(self.sid)) if self.sid is not None else []

    def kill(self) -> bool:
        """``SIGKILL`` every process of the node at once; True when none is left."""
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.pids():
            time.sleep(0.1)
        return not self.pids()

    def stop(self) -> None:
        if self.sid is not None:
            left = stop_session(self.sid)
            self.sid = None
            assert not left, f"Ray processes still alive: {left}"


class MlflowServer:
    """``mlflow server --host 127.0.0.1 --port P --backend-store-uri sqlite:///… --artifacts-destination DIR``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.artifacts = self.root / "artifacts"
        self.log = self.root / "mlflow-server.log"
        self.sid: int | None = None

    def start(self) -> "MlflowServer":
        (port,) = free_ports(1)
        self.uri = f"http://127.0.0.1:{port}"
        cmd = [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.artifacts), "--workers", "1"]
        with open(self.log, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=service_env(),
                                    start_new_session=True, cwd=str(self.root))
        self.sid = proc.pid
        self.proc = proc
        try:
            wait_http(f"{self.uri}/health", timeout=120, proc=proc, log=self.log)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.sid is not None:
            left = stop_session(self.sid)
            self.sid = None
            with_timeout = getattr(self, "proc", None)
            if with_timeout is not None:
                try:
                    with_timeout.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            assert not left, f"MLflow server processes still alive: {left}"


def tiny_cohort(root: Path, *, name: str, n_patients: int = 2, n_spots: int = 120, seed: int = 3, epochs: int = 2,
                tracking_uri: str | None = None, output_dir: str = "results") -> Path:
    """A small synthetic cohort (ground-truth labels, images) in ``root`` with its ``cohort.yaml`` (paths
    relative to it): tuning off, one Train worker, k fixed, small panel and PCA."""
    from senca_platform.demo import write_demo

    path = write_demo(root, n_patients=n_patients, n_spots=n_spots, seed=seed, epochs=epochs, tuning=False,
                      num_workers=1, name=name, output_dir=output_dir)
    spec = yaml.safe_load(path.read_text())
    spec["training"]["resources_per_worker"] = {"CPU": 1}
    spec["preprocess"].update(n_top_genes=100, n_pca=10)
    spec["clustering"]["k"] = 3
    spec["ray"] = {"num_cpus": 2}
    if tracking_uri:
        spec["tracking"]["uri"] = tracking_uri
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300, cwd: Path | None = None
        ) -> subprocess.CompletedProcess:
    """The installed ``senca-platform`` console script, as a user runs it."""
    exe = shutil.which("senca-platform", path=str(VENV_BIN)) or str(VENV_BIN / "senca-platform")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout,
                          env=env if env is not None else service_env(), cwd=str(cwd) if cwd else None)


def fault_cohort(root: Path, *, name: str) -> Path:
    """The cohort every driver fault test interrupts (kill, SIGINT, SIGTERM), and the one whose clean run they are
    compared with: 2 patients × 300 spots, 6 epochs, one training worker, a checkpoint after every epoch."""
    path = tiny_cohort(root, name=name, n_patients=2, n_spots=300, seed=5, epochs=6)
    data = yaml.safe_load(path.read_text())
    data["training"].update(checkpoint_every_epochs=1, checkpoint_interval_s=0)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_result(out: Path) -> dict:
    """What a run computed, slide by slide: regions (``obs["region"]``), region readout and fused embedding."""
    import anndata as ad
    import numpy as np

    slides = {}
    for f in sorted((Path(out) / "slides").glob("*.h5ad")):
        a = ad.read_h5ad(f)
        slides[f.stem] = {"region": np.asarray(a.obs["region"]).astype(str),
                          "X_senca": np.asarray(a.obsm["X_senca"]),
                          "X_senca_latent": np.asarray(a.obsm["X_senca_latent"])}
    return slides


def assert_same_result(clean: Path, other: Path) -> None:
    """``other`` (a faulted, resumed or recovered run) computed exactly what ``clean`` computed: the same slides,
    regions and embeddings, bit for bit."""
    import numpy as np

    a, b = run_result(clean), run_result(other)
    assert a and a.keys() == b.keys(), (sorted(a), sorted(b))
    for slide in a:
        for key in a[slide]:
            assert np.array_equal(a[slide][key], b[slide][key]), f"{slide}: {key} differs from the clean run"
