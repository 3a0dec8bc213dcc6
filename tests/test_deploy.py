"""deploy/: manifests parse, carry the required fields, and agree with the package and with each other
(one image, the Ray version pinned in constraints.txt, entrypoints that are real console scripts and commands)."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import typer.main
import yaml

from conftest import REPO

DEPLOY = REPO / "deploy"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
SCRIPTS = PYPROJECT["project"]["scripts"]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)", line.strip())
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


PINS = _pins()


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _one(path: Path, kind: str) -> dict:
    found = [d for d in _docs(path) if d.get("kind") == kind]
    assert len(found) == 1, f"{path.name}: expected one {kind}"
    return found[0]


def _cluster_specs() -> list[tuple[str, dict]]:
    rc = _one(DEPLOY / "kuberay" / "raycluster.yaml", "RayCluster")
    rj = _one(DEPLOY / "kuberay" / "rayjob.yaml", "RayJob")
    return [("raycluster.yaml", rc["spec"]), ("rayjob.yaml", rj["spec"]["rayClusterSpec"])]


def _pod_templates(spec: dict) -> list[tuple[str, dict]]:
    out = [("head", spec["headGroupSpec"]["template"]["spec"])]
    out += [(g["groupName"], g["template"]["spec"]) for g in spec["workerGroupSpecs"]]
    return out


def _image() -> str:
    """THE image: the head image of the RayCluster (every other file must agree)."""
    spec = _one(DEPLOY / "kuberay" / "raycluster.yaml", "RayCluster")["spec"]
    return spec["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]


def _cli_command_paths() -> set[tuple[str, ...]]:
    """Every command path of the `senca-platform` app, e.g. ('jobs', 'logs'), ('job-run',)."""
    from senca_platform.cli import app

    root = typer.main.get_command(app)
    paths: set[tuple[str, ...]] = set()

    def walk(cmd, prefix):
        if isinstance(getattr(cmd, "commands", None), dict):  # a group (typer vendors its own click)
            for name, sub in cmd.commands.items():
                paths.add(prefix + (name,))
                walk(sub, prefix + (name,))

    walk(root, ())
    return paths


def _check_cli_line(line: str) -> None:
    """`senca-platform <cmd> [<sub>] ...`: the script exists in pyproject and the (sub)command in the app."""
    words = shlex.split(line)
    assert words[0] in SCRIPTS, f"{words[0]!r} is not a console script of the package ({sorted(SCRIPTS)})"
    paths = _cli_command_paths()
    assert (words[1],) in paths, f"unknown command in {line!r}"
    if len(words) > 2 and (words[1], words[2]) not in paths and any(p[0] == words[1] and len(p) == 2 for p in paths):
        raise AssertionError(f"unknown subcommand in {line!r}")


# ------------------------------------------------------------------------------------------------ parsing
def test_every_yaml_under_deploy_parses():
    files = sorted(list(DEPLOY.rglob("*.yaml")) + list(DEPLOY.rglob("*.yml")))
    assert {f.relative_to(DEPLOY).as_posix() for f in files} >= {
        "kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "kuberay/secrets.example.yaml", "launcher/cluster.yaml",
        "mlflow/docker-compose.yaml"}
    for f in files:
        assert _docs(f), f"{f} is empty"


def test_image_tag_is_the_package_version_and_agrees_everywhere():
    image = _image()
    name, tag = image.rsplit(":", 1)
    assert tag.startswith(VERSION + "-"), f"image tag {tag!r} should start with the package version {VERSION}"
    images = []
    for fname, spec in _cluster_specs():
        for group, pod in _pod_templates(spec):
            images += [(f"{fname}:{group}", c["image"]) for c in pod["containers"]]
    rj = _one(DEPLOY / "kuberay" / "rayjob.yaml", "RayJob")
    images += [("rayjob.yaml:submitter", c["image"]) for c in rj["spec"]["submitterPodTemplate"]["spec"]["containers"]]
    images.append(("launcher/cluster.yaml", yaml.safe_load((DEPLOY / "launcher" / "cluster.yaml").read_text())
                   ["docker"]["image"]))
    for where, img in images:
        assert img == image, f"{where}: {img} != {image}"
    text = (DEPLOY / "README.md").read_text() + (DEPLOY / "Dockerfile").read_text()
    assert f"-t {image} ." in text  # the build command names the same image
    assert all(m == image for m in re.findall(r"ghcr\.io/[\w./-]+:[\w.-]+", text)), "another image in the docs"
    docs = (REPO / "docs" / "CLUSTER.md").read_text()
    assert all(m == image for m in re.findall(r"ghcr\.io/[\w./-]+:[\w.-]+", docs))


# ------------------------------------------------------------------------------------------------ KubeRay
def test_kuberay_clusters_have_the_required_fields_and_a_gpu_group():
    for fname, spec in _cluster_specs():
        assert spec["rayVersion"] == PINS["ray"], f"{fname}: rayVersion {spec['rayVersion']} != ray pin"
        head = spec["headGroupSpec"]
        assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
        ports = {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
        assert {6379, 8265} <= ports, f"{fname}: head must expose GCS 6379 and the Job API 8265"
        gpu_groups = []
        for g in spec["workerGroupSpecs"]:
            assert g["groupName"] and "rayStartParams" in g
            assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
            for c in g["template"]["spec"]["containers"]:
                limits = c.get("resources", {}).get("limits", {})
                requests = c.get("resources", {}).get("requests", {})
                if "nvidia.com/gpu" in limits:
                    assert int(limits["nvidia.com/gpu"]) >= 1
                    assert requests.get("nvidia.com/gpu", limits["nvidia.com/gpu"]) == limits["nvidia.com/gpu"]
                    gpu_groups.append(g["groupName"])
        assert gpu_groups, f"{fname}: no worker group with nvidia.com/gpu"
        for group, pod in _pod_templates(spec):
            mounts = {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
            assert "/data" in mounts, f"{fname}:{group}: the shared volume is not mounted"


def test_token_auth_on_every_ray_container_from_a_secret():
    rj = _one(DEPLOY / "kuberay" / "rayjob.yaml", "RayJob")
    containers = [(f"{f}:{g}", c) for f, spec in _cluster_specs() for g, pod in _pod_templates(spec)
                  for c in pod["containers"]]
    containers += [("submitter", c) for c in rj["spec"]["submitterPodTemplate"]["spec"]["containers"]]
    secrets = _docs(DEPLOY / "kuberay" / "secrets.example.yaml")
    secret_names = {d["metadata"]["name"]: d for d in secrets if d["kind"] == "Secret"}
    for where, c in containers:
        env = {e["name"]: e for e in c.get("env", [])}
        assert env["RAY_AUTH_MODE"]["value"] == "token", where
        ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert "value" not in env["RAY_AUTH_TOKEN"], f"{where}: literal token"
        assert ref["name"] in secret_names and ref["key"] in secret_names[ref["name"]]["stringData"], where
    configmaps = {d["metadata"]["name"]: d for d in secrets if d["kind"] == "ConfigMap"}
    assert configmaps["senca-config"]["data"]["MLFLOW_TRACKING_URI"].startswith("http")
    pvcs = [d for d in secrets if d["kind"] == "PersistentVolumeClaim"]
    assert pvcs and "ReadWriteMany" in pvcs[0]["spec"]["accessModes"]


def test_rayjob_entrypoint_is_a_real_command_of_the_package():
    rj = _one(DEPLOY / "kuberay" / "rayjob.yaml", "RayJob")
    assert rj["apiVersion"] == "ray.io/v1"
    spec = rj["spec"]
    _check_cli_line(spec["entrypoint"])
    words = shlex.split(spec["entrypoint"])
    assert words[1] == "job-run" and words[2].startswith("/data/") and words[2].endswith(".yaml")
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]["RAY_USAGE_STATS_ENABLED"] == "0"
    # the console script is senca_platform.cli.main, which runs the Typer app
    module, attr = SCRIPTS["senca-platform"].split(":")
    import importlib

    cli = importlib.import_module(module)
    assert (module, attr) == ("senca_platform.cli", "main") and callable(cli.main)
    assert isinstance(cli.app, typer.Typer)


# ------------------------------------------------------------------------------------------------ launcher
def test_cluster_launcher_config():
    cfg = yaml.safe_load((DEPLOY / "launcher" / "cluster.yaml").read_text())
    for key in ("cluster_name", "provider", "auth", "available_node_types", "head_node_type",
                "head_start_ray_commands", "worker_start_ray_commands", "docker"):
        assert key in cfg, key
    assert cfg["head_node_type"] in cfg["available_node_types"]
    workers = {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}
    assert any(v.get("resources", {}).get("GPU", 0) >= 1 for v in workers.values()), "no GPU worker type"
    for v in workers.values():
        assert v["min_workers"] <= v["max_workers"] <= cfg["max_workers"]
    head_cmd = " ".join(cfg["head_start_ray_commands"])
    assert "ray start --head" in head_cmd and "--dashboard-host=0.0.0.0" in head_cmd
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_cmd
    assert any("ray start --address=$RAY_HEAD_IP:6379" in c for c in cfg["worker_start_ray_commands"])
    opts = " ".join(cfg["docker"]["run_options"])
    assert "RAY_AUTH_MODE=token" in opts and "RAY_AUTH_TOKEN_PATH=" in opts and "RAY_AUTH_TOKEN=" not in opts
    token_path = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+)", opts).group(1)
    assert token_path in cfg["file_mounts"], "the token file is not synced to the nodes"
    assert "-v /mnt/efs:/data" in opts


# ------------------------------------------------------------------------------------------------ Dockerfile
def test_dockerfile_cuda_base_constraints_and_the_package():
    text = (DEPLOY / "Dockerfile").read_text()
    base = re.search(r"ARG CUDA_IMAGE=(\S+)", text).group(1)
    assert base.startswith("nvidia/cuda:") and "runtime" in base
    assert re.search(r"^FROM \$\{CUDA_IMAGE\}", text, re.M)
    assert f'ARG TORCH_VERSION={PINS["torch"]}' in text
    assert "pip install -r constraints.txt" in text and "pip install -c constraints.txt ." in text
    assert f'org.opencontainers.image.version="{VERSION}"' in text
    py = re.search(r"ARG PYTHON=python(\d+\.\d+)", text).group(1)
    req = PYPROJECT["project"]["requires-python"]
    assert req.startswith(">=") and tuple(map(int, py.split("."))) >= tuple(map(int, req[2:].split(".")))
    for src in ("senca_core", "jobs", "platform", "pyproject.toml", "constraints.txt"):
        assert re.search(rf"^COPY .*\b{re.escape(src)}\b", text, re.M), f"{src} not copied"
        assert (REPO / src).exists()
    assert "wget" in text  # KubeRay's probes
    cmd = re.search(r'^CMD \[(.*)\]', text, re.M).group(1)
    assert shlex.split(cmd.replace(",", " "))[0] in SCRIPTS
    assert "senca-platform --help" in text  # the build fails when the console script does not start


# ------------------------------------------------------------------------------------------------ MLflow
def test_mlflow_compose_postgres_and_s3_artifacts():
    compose = yaml.safe_load((DEPLOY / "mlflow" / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "minio", "minio-init", "mlflow"} <= set(services)
    ml = services["mlflow"]
    cmd = " ".join(ml["command"]) if isinstance(ml["command"], list) else ml["command"]
    env = ml["environment"]
    assert env["BACKEND_URI"].startswith("postgresql") and "@postgres:5432/" in env["BACKEND_URI"]
    assert env["ARTIFACTS"].startswith("s3://")
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    for flag in ("--backend-store-uri", "--artifacts-destination", "--serve-artifacts", "--allowed-hosts"):
        assert flag in cmd
    assert ml["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert ml["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    # MLflow at the project's pin, in the compose build args, its image tag and the server Dockerfile
    assert ml["build"]["args"]["MLFLOW_VERSION"] == PINS["mlflow"] == ml["image"].rsplit(":", 1)[1]
    assert f"ARG MLFLOW_VERSION={PINS['mlflow']}" in (DEPLOY / "mlflow" / "Dockerfile").read_text()
    # no secret literal in the compose file; every ${VAR} it uses is in .env.example
    raw = (DEPLOY / "mlflow" / "docker-compose.yaml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_]+)(?::-[^}]*)?\}", raw))
    example = dict(line.split("=", 1) for line in (DEPLOY / "mlflow" / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    missing = {v for v in used if v not in example and not re.search(rf"\$\{{{v}:-", raw)}
    assert not missing, f".env.example lacks {missing}"
    for svc in services.values():
        for k, v in (svc.get("environment") or {}).items():
            if re.search("PASSWORD|SECRET", k):
                assert str(v).startswith("${"), f"literal secret {k}"


# ------------------------------------------------------------------------------------------------ docs
@pytest.mark.parametrize("doc", ["deploy/README.md", "docs/CLUSTER.md"])
def test_commands_in_the_docs_exist(doc):
    text = (REPO / doc).read_text()
    lines = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            m = re.search(r"(?:^|&&\s*|\s)(senca-platform\s[^|&>]*)", line)
            if m and not line.startswith("#"):
                lines.append(m.group(1).strip())
    assert lines, f"no senca-platform command in {doc}"
    for line in lines:
        _check_cli_line(line)
    for rel in re.findall(r"`(deploy/[\w./-]+)`", text):
        assert (REPO / rel).exists(), f"{doc} names {rel}, which does not exist"
