"""Issue 16, class 3: crashes and hangs on hostile but realistic input, each refused or handled at its root.

Native crashes run in a subprocess (a segfault there fails the test instead of killing pytest).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}


def _py(code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=ENV)


def _cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).parent / "senca-platform")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout, env=ENV)


def _one_error_line(res: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in res.stdout + res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, res.stderr
    return lines[0]


# ------------------------------------------------------------------------------ 1. seurat_v3 loess segfault
_SLIDE = """
import json, numpy as np, scipy.sparse as sp, anndata as ad, pandas as pd
import senca_core.pp as pp
rng = np.random.default_rng(0)
n, g = 200, 300
X = np.tile(rng.poisson(3, size=g), (n, 1)).astype(np.float32)
CASE
a = ad.AnnData(sp.csr_matrix(X), obs=pd.DataFrame(index=[f"{i}x{i}" for i in range(n)]),
               var=pd.DataFrame(index=[f"g{i}" for i in range(g)]))
a.obs["array_row"] = np.arange(n); a.obs["array_col"] = np.arange(n)
a.obsm["spatial"] = np.c_[np.arange(n), np.arange(n)].astype(float)
a.layers["counts"] = a.X.copy(); a.uns["senca"] = {"slide_id": "S1", "grid": "square"}
CALL
print(json.dumps({"hvg": a.uns["hvg"], "warnings": list(a.uns["senca"].get("warnings", [])),
                  "hv": [str(v) for v in a.var_names[a.var["highly_variable"].to_numpy()]]}))
"""


def _hvg_case(case: str, call: str = "pp.hvg(a, n_top_genes=100)") -> dict:
    res = _py(_SLIDE.replace("CASE", case).replace("CALL", call))
    assert res.returncode == 0, f"exit {res.returncode} (-11 = segfault in loess): {res.stderr[-2000:]}"
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["pass", "X[0, 0] += 1", "X *= 10"])
def test_identical_spots_do_not_crash_hvg_and_say_why(case):
    # all spots the same (or all but one count): the loess of seurat_v3 used to segfault the process
    out = _hvg_case(case)
    assert out["hvg"]["flavor"] == "dispersion" and "distinct spot" in out["hvg"]["fallback"]
    assert any(w.startswith("hvg: only") and "distinct spot" in w for w in out["warnings"]), out["warnings"]


def test_identical_spots_survive_the_whole_preprocess_chain():
    out = _hvg_case("pass", call="pp.preprocess(a)")  # in a notebook this used to kill Python
    assert out["hvg"]["flavor"] == "dispersion" and out["warnings"]


def test_constant_genes_never_reach_loess_nor_the_selection():
    # 60 genes vary, 240 are the same count in every spot (float round-off gave them a tiny "variance")
    out = _hvg_case("X[:, :60] = rng.poisson(3, size=(n, 60))")
    assert out["hvg"]["flavor"] == "seurat_v3" and not out["warnings"]
    assert set(out["hv"]) <= {f"g{i}" for i in range(60)} and len(out["hv"]) >= 50


# ------------------------------------------------------------------------ 2. requests the cluster never has
def test_resource_problems_name_the_field_and_what_the_cluster_has():
    from jobs.train import resource_problems

    cluster = {"CPU": 2.0, "memory": 1e9}
    p = resource_problems(workers=64, use_gpu=False, resources_per_worker={"CPU": 1}, cluster=cluster)
    assert len(p) == 1 and p[0].startswith("training.num_workers: 64 worker(s)") and "has 2 CPU" in p[0]
    p = resource_problems(workers=1, use_gpu=True, resources_per_worker={"CPU": 1}, cluster=cluster)
    assert len(p) == 1 and p[0].startswith("training.use_gpu") and "no GPU" in p[0]
    p = resource_problems(workers=1, use_gpu=False, resources_per_worker={"CPU": 8}, cluster=cluster)
    assert len(p) == 1 and p[0].startswith("training.resources_per_worker") and "8 CPU" in p[0]
    p = resource_problems(workers=1, use_gpu=False, resources_per_worker={"CPU": 2, "TPU": 1}, cluster=cluster)
    assert len(p) == 1 and "TPU" in p[0]
    assert resource_problems(workers=2, use_gpu=False, resources_per_worker={"CPU": 1}, cluster=cluster) == []
    # one worker must fit on one node: 2 nodes of 2 CPUs cannot hold a 3-CPU worker
    p = resource_problems(workers=1, use_gpu=False, resources_per_worker={"CPU": 3}, cluster={"CPU": 4.0},
                          largest_node={"CPU": 2.0})
    assert len(p) == 1 and "largest Ray node has 2" in p[0]


def test_training_that_cannot_be_placed_fails_at_once_on_an_embedded_ray():
    # before: Ray waited forever for 64 CPUs / a GPU on a 2-CPU machine while `validate` said valid
    res = _py("""
        import ray
        from jobs.stage_model import check_resources
        from jobs._stage import PipelineError
        from senca_platform.ray_local import unreachable
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
        print("gcs", unreachable(ray.get_runtime_context().gcs_address))  # a real GCS passes the probe
        class T:
            def __init__(self): self.lines = []
            def progress(self, line): self.lines.append(line)
        base = {"num_workers": 64, "use_gpu": False, "resources_per_worker": {"CPU": 1.0}}
        for name, t, workers in [("cpus", base, 64), ("gpu", dict(base, num_workers=1, use_gpu=True), 1),
                                 ("ok", dict(base, num_workers=2), 2)]:
            try:
                check_resources({"training": t, "num_cpus": 2}, "train", workers, t["resources_per_worker"], T())
                print(name, "OK")
            except PipelineError as err:
                print(name, "FAIL", err)
        # a cluster that may autoscale: a warning, no failure
        tr = T()
        check_resources({"training": base, "num_cpus": 2, "ray_embedded": False}, "train", 64, {"CPU": 1.0}, tr)
        print("remote", tr.lines)
        from jobs.stage_model import check_slide_cpus  # a per-slide Ray Data task larger than any node
        for name, cpus, embedded in [("slide", 8.0, True), ("slideok", 2.0, True), ("slideremote", 8.0, False)]:
            tr = T()
            try:
                check_slide_cpus({"preprocess": {"cpus_per_slide": cpus}, "ray_embedded": embedded}, "preprocess", tr)
                print(name, "OK", tr.lines)
            except PipelineError as err:
                print(name, "FAIL", err)
        ray.shutdown()
    """, timeout=150)
    assert res.returncode == 0, res.stderr[-2000:]
    out = {ln.split(" ", 1)[0]: ln for ln in res.stdout.splitlines()}
    assert "FAIL stage 'train': training.num_workers: 64 worker(s)" in out["cpus"] and "has 2 CPU" in out["cpus"]
    assert "FAIL stage 'train': training.use_gpu" in out["gpu"] and "no GPU" in out["gpu"]
    assert out["ok"] == "ok OK"
    assert "warning: training.num_workers" in out["remote"]
    assert out["gcs"] == "gcs None"
    assert out["slide"].startswith("slide FAIL stage 'preprocess': preprocess.cpus_per_slide: one slide task asks 8 "
                                   "CPU, the largest Ray node has 2"), out["slide"]
    assert out["slideok"] == "slideok OK []" and "OK" in out["slideremote"] and "warning: preprocess" in out["slideremote"]


# --------------------------------------------------------------------------------- 3. unreachable Ray address
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_addresses_are_recognised():
    from senca_platform.ray_local import _host_port, unreachable

    assert _host_port("auto") is None and _host_port("") is None
    assert _host_port("10.0.0.1:6379") == ("10.0.0.1", 6379)
    assert _host_port("ray://head:10001") == ("head", 10001)
    port = _free_port()
    why = unreachable(f"127.0.0.1:{port}", timeout_s=2)
    assert why and f"127.0.0.1:{port} (ray.address)" in why
    with socket.socket() as srv:  # a port that accepts but never answers (ray.init used to wait minutes on it)
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        why = unreachable(f"127.0.0.1:{srv.getsockname()[1]}", timeout_s=1)
        assert why and "does not answer as a Ray GCS" in why
    import http.server
    import threading

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    web.RequestHandlerClass.log_message = lambda *a, **k: None
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:  # e.g. the dashboard's port given as ray.address
        why = unreachable(f"127.0.0.1:{web.server_address[1]}", timeout_s=2)
        assert why and "is not a Ray GCS address" in why and "not gRPC" in why
    finally:
        web.shutdown()


def test_run_with_an_unreachable_ray_address_is_one_line_exit_3(tmp_path):
    # before: ray.init retried for minutes (then a traceback, exit 1)
    from senca_core.datasets import synthetic_cohort

    rows = synthetic_cohort(tmp_path / "data", n_patients=1, n_spots=60, n_genes=100, with_image=False)
    port = _free_port()
    spec = tmp_path / "cohort.yaml"
    spec.write_text(f"name: unreachable\noutput_dir: out\nray:\n  address: 127.0.0.1:{port}\npatients:\n"
                    f"  - id: P1\n    slides:\n      - {{id: S1, reader: h5ad, path: {rows[0]['h5ad']}}}\n")
    res = _cli("run", str(spec), timeout=90)
    assert res.returncode == 3, res.stderr[-2000:]
    line = _one_error_line(res)
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in line and "ray.address" in line


def test_submit_to_a_closed_port_exits_3(tmp_path):
    from senca_platform.submit import ClusterError, ClusterUnreachable, job_client

    with pytest.raises(ClusterUnreachable) as err:
        job_client(f"http://127.0.0.1:{_free_port()}")
    assert isinstance(err.value, ClusterError) and "cannot reach the Ray Job API" in str(err.value)
    res = _cli("jobs", "list", "--address", f"http://127.0.0.1:{_free_port()}", timeout=90)
    assert res.returncode == 3 and "cannot reach" in _one_error_line(res)


# ----------------------------------------------------------------------------------- 4. unbounded spec reads
def _spec_error(path) -> str:
    from senca_platform.spec import SpecError, load_spec

    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert len(err.value.issues) == 1
    return str(err.value)


def test_spec_that_is_not_a_regular_file_is_refused_before_reading(tmp_path):
    # in subprocesses: before the fix, /dev/zero grew memory without bound and a FIFO blocked in open()
    fifo = tmp_path / "spec.fifo"
    os.mkfifo(fifo)
    for args, kind in ((("run", "/dev/zero"), "a character device"), (("validate", str(fifo)), "a FIFO")):
        res = _cli(*args, timeout=60)
        assert res.returncode == 2, res.stderr[-2000:]
        assert f"the spec is {kind}, not a regular file" in res.stderr and "Traceback" not in res.stderr


def test_oversized_spec_is_refused_by_its_size(tmp_path):
    big = tmp_path / "big.yaml"
    with open(big, "wb") as fh:  # sparse: 6 MB that are never read
        fh.truncate(6 * 1024 * 1024)
    msg = _spec_error(big)
    assert "6,291,456 bytes, more than the limit of 5,242,880" in msg


def test_too_many_patients_or_slides_are_counted_before_anything_is_built(tmp_path):
    from senca_platform.spec import limits as spec_limits

    patients = "".join(f"  - id: P{i}\n    slides:\n      - {{id: S{i}, reader: h5ad, path: d/{i}.h5ad}}\n"
                       for i in range(10_001))
    big = tmp_path / "many.yaml"
    big.write_text("name: many\noutput_dir: out\npatients:\n" + patients)
    assert big.stat().st_size < spec_limits.MAX_SPEC_BYTES
    msg = _spec_error(big)
    assert "more than 10,000 patients" in msg and f"{big}:30004:" in msg
    slides = "".join(f"      - {{id: S{i}, reader: h5ad, path: d/{i}.h5ad}}\n" for i in range(30))
    few = "name: x\npatients:\n  - id: P1\n    slides:\n" + slides
    spec_limits.check_cohort_size(few, "x", max_slides=30)  # at the limit: fine
    from senca_platform.spec import SpecError

    with pytest.raises(SpecError, match="more than 29 slides"):
        spec_limits.check_cohort_size(few, "x", max_slides=29)
    spec_limits.check_cohort_size("patients: [unclosed", "x")  # YAML errors are the parser's to report


# ------------------------------------------------------------------------------------ 5. image pixel bombs
def _png_bomb(path: Path, width: int, height: int) -> None:
    """A 1-bit PNG of width x height px, all zeros: tiny on disk, width*height px once decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def test_a_plain_image_above_the_hard_cap_is_refused_from_its_header(tmp_path):
    # below the cap a large JPEG/PNG is read downsampled within a memory bound (tests/test_large_images.py)
    from senca_core import hist
    from senca_core.errors import SlideError

    bomb = tmp_path / "bomb.png"
    _png_bomb(bomb, 40_000, 30_000)  # 1.2 Gpx from ~150 KB
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(SlideError) as err:
        hist.open_slide(bomb, slide_id="S1")
    assert err.value.field == "image_path" and err.value.file == str(bomb) and err.value.slide == "S1"
    assert "40000x30000" in err.value.problem and "1,000,000,000 px" in err.value.problem


# ---------------------------------------------------------------------------------- 6. truncated cache entries
def test_truncated_cache_outputs_are_a_miss_said_once(tmp_path):
    import anndata as ad

    from jobs._cache import StageCache

    said: list[str] = []
    cache = StageCache(tmp_path / "cache", echo=said.append)
    h5 = tmp_path / "S1.h5ad"
    ad.AnnData(np.ones((3, 2), np.float32)).write_h5ad(h5)
    npz = tmp_path / "genes.npz"
    np.savez(npz, genes=np.array(["a", "b"]))
    npy = tmp_path / "genes.npy"
    np.save(npy, np.array(["a", "b"] * 50))
    hist = tmp_path / "history.json"
    hist.write_text(json.dumps([{"loss": 1.0}]))
    outputs = {"prepared_path": str(h5), "genes_file": str(npz), "panel_file": str(npy), "history_file": str(hist)}
    for stage in ("prepare/S1", "train"):
        cache.put(stage, "k", outputs)
    assert cache.get("prepare/S1", "k") == outputs  # whole: a hit
    for f in (h5, npz, npy, hist):
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])  # a write cut off by a crash / full disk
        assert cache.get("prepare/S1", "k") is None
        f.write_bytes(data)
        cache.put("prepare/S1", "k", outputs)
    assert said == ["cache entry prepare/S1 unreadable (S1.h5ad: OSError): recomputed"]  # once per entry
    assert cache.get("prepare/S1", "k") == outputs
    # a cut-off manifest: a miss (said), dropped, not a crash
    manifest = tmp_path / "cache" / "train.json"
    manifest.write_text(manifest.read_text()[:10])
    assert cache.get("train", "k") is None and not manifest.exists()
    assert said[-1].startswith("cache entry train unreadable (train.json: JSONDecodeError)")


def test_validate_warns_when_the_spec_asks_more_than_this_machine(tmp_path):
    from senca_platform.spec import load_spec
    from senca_platform.spec import resource_warnings

    slides = "".join(f"  - id: P{i}\n    slides:\n      - {{id: S{i}, reader: h5ad, path: d/{i}.h5ad}}\n"
                     for i in range(8))
    spec = tmp_path / "cohort.yaml"
    spec.write_text("name: big\noutput_dir: out\nray: {num_cpus: 2}\ntraining: {num_workers: 64}\npatients:\n"
                    + slides)
    (warning,) = resource_warnings(load_spec(spec))
    assert warning.startswith("training.num_workers: 8 worker(s) x 1 CPU = 8 CPU, ray.num_cpus 2")
    res = _cli("validate", str(spec), timeout=60)
    assert res.returncode == 0 and f"warning: {spec}: training.num_workers: 8 worker(s)" in res.stderr
    spec.write_text(spec.read_text().replace("training: {num_workers: 64}",
                                             "training: {num_workers: 1}\npreprocess: {cpus_per_slide: 16}"))
    (warning,) = resource_warnings(load_spec(spec))  # each slide's task would wait for a 16-CPU node for ever
    assert warning.startswith("preprocess.cpus_per_slide: each slide's task asks 16 CPU, ray.num_cpus 2"), warning
    spec.write_text(spec.read_text().replace("ray: {num_cpus: 2}", "ray: {address: 'head:6379'}"))
    assert resource_warnings(load_spec(spec)) == []  # a cluster may have more: not this machine's business


# ---------------------------------------------------------------------------------- 7. predict --out
def test_predict_out_is_claimed_as_run_claims_it_and_nothing_of_the_users_is_deleted(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from typer.testing import CliRunner

    import senca_platform.predict as predict
    from jobs._files import OUTPUT_MARKER
    from senca_platform.cli import app

    legacy = ROOT / "tests" / "bad_inputs" / "legacy"
    slides = tmp_path / "slides.yaml"
    slides.write_text(f"patients:\n  - id: P1\n    slides:\n      - id: S1\n        reader: legacy_st\n"
                      f"        counts: {legacy / 'S1.tsv.gz'}\n        spots: {legacy / 'S1_selection.tsv'}\n")
    monkeypatch.setattr(predict, "client", lambda uri: None)  # a registered model version, never downloaded
    monkeypatch.setattr(predict, "get_version", lambda mc, uri, ref: SimpleNamespace(name="m", version="1"))
    out = tmp_path / "mine"
    out.mkdir()
    (out / ".env.backup01").write_text("mine")
    (out / "notes.md").write_text("mine too")

    def cli(*args):
        res = CliRunner().invoke(app, ["predict", str(slides), "--model", "models:/m/1", "--tracking-uri",
                                       f"sqlite:///{tmp_path / 'no.db'}", *args])
        assert "Traceback" not in res.output and isinstance(res.exception, (SystemExit, type(None))), res.output
        return res.exit_code, [ln for ln in res.output.splitlines() if ln.startswith("error:")]

    assert cli("--out", "") == (3, ["error: --out is empty: name the output folder (e.g. --out results); '.' for "
                                    "the current folder must be written out"])
    code, lines = cli("--out", str(out))
    assert code == 3 and len(lines) == 1 and "is not empty" in lines[0] and "--force-out" in lines[0], lines
    assert sorted(p.name for p in out.iterdir()) == [".env.backup01", "notes.md"]  # nothing added or removed
    code, lines = cli("--out", str(out), "--force-out")  # past the folder: fails at the (absent) model download
    assert code == 1 and "cannot load m version 1" in lines[0], lines
    assert json.loads((out / OUTPUT_MARKER).read_text())["forced"] is True
    assert (out / ".env.backup01").read_text() == "mine" and (out / "notes.md").read_text() == "mine too"
