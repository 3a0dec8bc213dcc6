"""The embedded local Ray of a run (loopback only) or a connection to a cluster: the one home of ``ray.init``.

``ray_session`` starts (or connects to) Ray and shuts down only what it started; ``start_local_ray`` is the embedded
single-machine cluster every server of which listens on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

#: how often Ray Train's controller polls its workers (Ray's default, 2 s, is also the latency of every
#: ``ray.train.report``: a barrier the workers wait in until the controller has polled)
TRAIN_POLL_S = "0.2"


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: Ray's switch for "this machine may join a multi-node cluster"; off, every Ray server of the node binds the
#: loopback interface (127.0.0.1) instead of all interfaces (ray/_private/services.py get_node_ip_address)
_RAY_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """While starting an embedded Ray: its node IP is 127.0.0.1, so that the GCS, raylet, object manager, workers,
    dashboard, dashboard agent and metrics endpoints listen on 127.0.0.1 only (nothing can join an embedded
    single-machine cluster anyway). The process-wide setting is restored afterwards, so that a later
    ``ray.init(address=...)`` to a real cluster in the same process advertises a reachable IP."""
    import ray._private.ray_constants as ray_constants

    saved_flag = getattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    saved_env = os.environ.get(_RAY_CLUSTER_ENV)
    ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ[_RAY_CLUSTER_ENV] = "0"  # the Ray processes started now (dashboard, raylet -> workers) agree
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(_RAY_CLUSTER_ENV, None)
        else:
            os.environ[_RAY_CLUSTER_ENV] = saved_env


def start_local_ray(num_cpus: int | None = None, *, log_to_driver: bool = True, logging_level: str = "WARNING") -> str:
    """Start an embedded local Ray bound to 127.0.0.1 (dashboard included: Ray Train V2 needs it) and return its
    GCS address.

    Every server of the embedded node (GCS, raylet, workers, dashboard on 127.0.0.1:8265 or the next free port,
    dashboard agent, metrics) listens on 127.0.0.1 only (:func:`_loopback_node`), and so does the DDP rendezvous
    store of Ray Train's workers and their Gloo connections (``senca_platform._loopback``, the workers' setup
    hook, and ``GLOO_SOCKET_IFNAME=lo``); Ray's token authentication (on by default in Ray 2.60) applies too.

    The GCS port is chosen here so that the cluster's own workers get ``RAY_ADDRESS`` pointing at it (job
    ``runtime_env``): Ray Train V2 helpers (the placement-group cleaner) look the cluster up by address and fail
    with "Found multiple active Ray instances" when another Ray runs on the same machine. The worker-group start
    timeout is raised (``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S``, 600 s) for busy small machines, and Ray Train's
    controller polls every :data:`TRAIN_POLL_S` s (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``).
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    with _loopback_node():
        port = _free_port()
        ip = ray.util.get_node_ip_address()
        env = {"RAY_ADDRESS": f"{ip}:{port}", "RAY_USAGE_STATS_ENABLED": "0", _RAY_CLUSTER_ENV: "0",
               "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", TRAIN_POLL_S),
               "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S",
                                                                        "600")}
        if sys.platform.startswith("linux"):  # torch.distributed's Gloo connections between the DDP workers
            env["GLOO_SOCKET_IFNAME"] = os.environ.get("GLOO_SOCKET_IFNAME", "lo")
        saved = os.environ.get("RAY_GCS_SERVER_PORT")
        os.environ["RAY_GCS_SERVER_PORT"] = str(port)
        outer_address = os.environ.pop("RAY_ADDRESS", None)  # the spec has no address: embedded, whatever the shell says
        try:
            context = ray.init(include_dashboard=True, dashboard_host="127.0.0.1", num_cpus=num_cpus,
                     log_to_driver=log_to_driver, logging_level=logging_level,
                     runtime_env={"env_vars": env,
                                  "worker_process_setup_hook": "senca_platform._loopback.torch_store_on_loopback"})
        finally:
            if saved is None:
                os.environ.pop("RAY_GCS_SERVER_PORT", None)
            else:
                os.environ["RAY_GCS_SERVER_PORT"] = saved
            if outer_address is not None:
                os.environ["RAY_ADDRESS"] = outer_address
    global _DASHBOARD
    _DASHBOARD = getattr(context, "dashboard_url", None) or None
    return ray.get_runtime_context().gcs_address


#: the dashboard address of the embedded Ray started by this process (None: none started, or no dashboard)
_DASHBOARD: str | None = None


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, *, quiet: bool = False) -> Iterator[dict]:
    """Connect to ``address`` or start an embedded local Ray (dashboard on 127.0.0.1); reuse one already up.

    Only a session started here is shut down here. Yields ``{"address", "embedded", "num_cpus"}``.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=not quiet, logging_level="WARNING")
        else:
            start_local_ray(num_cpus, log_to_driver=not quiet)
        started = True
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        dashboard = _DASHBOARD if started and not address else None
        if dashboard and "://" not in dashboard:
            dashboard = f"http://{dashboard}"
        yield {"address": address, "embedded": started and not address, "num_cpus": cpus, "dashboard": dashboard}
    finally:
        if started:
            ray.shutdown()
