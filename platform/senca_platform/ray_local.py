"""The embedded local Ray of a run (loopback only) or a connection to a cluster: the one home of ``ray.init``.

``ray_session`` starts (or connects to) Ray and shuts down only what it started; ``start_local_ray`` is the embedded
single-machine cluster every server of which listens on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

from ._environ import env_settings

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
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:  # the Ray processes started now (dashboard, raylet -> workers) agree
        with env_settings({_RAY_CLUSTER_ENV: "0"}, override=True):
            yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag


#: Ray starts its worker processes at nice 15, below everything else on the machine: on a 2-core machine one other
#: busy process (a benchmark at nice 10) made a one-section run's train stage 197 s instead of 7.5 s. An embedded
#: Ray's workers do the run's work, so they start at the niceness of the command itself (an explicit
#: ``RAY_worker_niceness`` in the environment is kept; a cluster's workers follow the cluster's own setting).
WORKER_NICENESS = "RAY_worker_niceness"

#: Ray stops idle worker processes beyond the CPUs still free after 1 s idle. While a one-worker training task held
#: both CPUs of a 2-core machine, the other warm worker (its imports paid once, ``jobs.warmup``) was stopped, and the
#: next stage started a cold one: on 8 slides of 300 spots the infer stage's embedding map took 3.0-3.4 s instead of
#: 0.65 s and its summaries 5.5 s instead of 4.5 s (8 x 2,000 spots: the infer stage 29.7 -> 19.9 s). An embedded Ray
#: keeps up to its CPUs plus :data:`IDLE_WORKER_SLACK` worker processes (an explicit ``RAY_num_workers_soft_limit``
#: in the environment is kept). A bound on the processes kept, not a number started: Ray still starts a worker only
#: when a task needs one, and the embedded Ray ends with the run. The cost: an idle warm worker keeps its imported
#: stack resident (a few hundred MB) while a training task runs beside it.
WORKERS_SOFT_LIMIT = "RAY_num_workers_soft_limit"
IDLE_WORKER_SLACK = 8

#: Ray's variable for the state API's address (the dashboard's URL), read where a process asks the state API and
#: has no address of its own: Ray Train's controller and its placement-group cleaner, which otherwise look the
#: cluster up on the machine and fail ("Found multiple active Ray instances") beside another Ray. In an embedded
#: Ray's environment, so that Ray Train's controller starts from the driver itself
#: (``jobs.train.where_train_finds_its_cluster``).
API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"

#: Ray Train's preemption watcher, an actor per worker group polling whether Ray drains a node (spot instances, an
#: autoscaler scaling down): off in an embedded Ray, one node that nothing drains (a Python process of 1.7 CPU-s at
#: every Train start on 2 cores, docs/BENCHMARKS.md); a cluster's runs keep it (an explicit setting is kept)
PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def start_local_ray(num_cpus: int | None = None, *, log_to_driver: bool = True, logging_level: str = "WARNING",
                    dashboard: bool = True) -> str:
    """Start an embedded local Ray bound to 127.0.0.1 and return its GCS address. ``dashboard``: with Ray's
    dashboard (Ray Train V2's worker groups need it); without, Ray starts 0.8-1.9 s sooner (2.5 s against 3.3-4.4
    on a quiet 2-core machine), for runs whose training is one Ray task (``spec.census.needs_dashboard``).

    Every server of the embedded node (GCS, raylet, workers, dashboard on a free port of 127.0.0.1, dashboard
    agent, metrics) listens on 127.0.0.1 only (:func:`_loopback_node`), and so does the DDP rendezvous
    store of Ray Train's workers and their Gloo connections (``jobs._loopback``, installed by the trainers' torch
    config, and ``GLOO_SOCKET_IFNAME=lo``); Ray's token authentication (on by default in Ray 2.60) applies too.

    The settings of the workers are set in this process's environment while Ray starts: the raylet inherits them
    and passes them on to every worker it starts. No job-wide ``runtime_env``: with one, every new worker process
    waited 0.6-1.0 s for Ray's runtime-environment agent (measured on the first task, docs/BENCHMARKS.md). With a
    dashboard, every worker has its address (:data:`API_SERVER_ENV`; ``session["api_server"]``), so that Ray Train's
    controller, started from the driver, queries this Ray's state API; Ray Train's preemption watcher is off
    (:data:`PREEMPTION_WATCHER`). The worker-group start timeout is raised (``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S``,
    600 s) for busy small machines, and Ray Train's controller polls every :data:`TRAIN_POLL_S` s
    (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``).
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    with _loopback_node():
        port, dashboard_port = _free_port(), _free_port() if dashboard else None
        env = {"RAY_USAGE_STATS_ENABLED": "0", _RAY_CLUSTER_ENV: "0",
               "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", TRAIN_POLL_S),
               "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S",
                                                                        "600")}
        if sys.platform.startswith("linux"):  # torch.distributed's Gloo connections between the DDP workers
            env["GLOO_SOCKET_IFNAME"] = os.environ.get("GLOO_SOCKET_IFNAME", "lo")
        api_server = f"http://127.0.0.1:{dashboard_port}" if dashboard_port else None
        if api_server:  # every worker finds this Ray's state API (Ray Train's controller) without a look-up
            env[API_SERVER_ENV] = api_server
        outer_address = os.environ.pop("RAY_ADDRESS", None)  # the spec has no address: embedded, whatever the shell says
        try:  # the raylet reads these at start and its workers inherit them (WORKER_NICENESS: unless the user set it)
            with env_settings({"RAY_GCS_SERVER_PORT": str(port), **env}, override=True), \
                    env_settings({WORKER_NICENESS: "0", WORKERS_SOFT_LIMIT: str(_soft_limit(num_cpus)),
                                  PREEMPTION_WATCHER: "0"}, override=False):
                # "local": a new Ray even where a `ray start` cluster runs on this machine (without it, ray.init
                # joins that cluster, found through /tmp/ray's current-cluster file, and the run is not embedded)
                context = ray.init(address="local", include_dashboard=bool(dashboard), dashboard_host="127.0.0.1",
                                   dashboard_port=dashboard_port, num_cpus=num_cpus, log_to_driver=log_to_driver,
                                   logging_level=logging_level)
        finally:
            if outer_address is not None:
                os.environ["RAY_ADDRESS"] = outer_address
    global _DASHBOARD
    _DASHBOARD = getattr(context, "dashboard_url", None) or None
    gcs = ray.get_runtime_context().gcs_address
    if api_server and _DASHBOARD and api_server.endswith(":" + _DASHBOARD.rsplit(":", 1)[-1]):
        _API_SERVERS[gcs] = api_server
    return gcs


def embedded_api_server() -> str | None:
    """The state API address that every worker of the connected Ray has in :data:`API_SERVER_ENV`: where this
    process started that Ray (:func:`start_local_ray`, with its dashboard); None otherwise."""
    import ray

    return _API_SERVERS.get(ray.get_runtime_context().gcs_address) if ray.is_initialized() else None


def _soft_limit(num_cpus: int | None) -> int:
    """The embedded Ray's soft limit on worker processes: its CPUs plus :data:`IDLE_WORKER_SLACK`. Unset, the CPUs
    Ray itself will detect (its own count, cgroup quotas included), so the limit is never below Ray's default."""
    if not num_cpus:
        try:
            from ray._private.utils import get_num_cpus

            num_cpus = get_num_cpus()
        except (ImportError, AttributeError):  # another Ray: the machine's count
            num_cpus = os.cpu_count() or 1
    return int(num_cpus) + IDLE_WORKER_SLACK


class ClusterError(RuntimeError):
    """A problem talking to the Ray cluster or preparing a submission; one line for the user."""


class ClusterUnreachable(ClusterError):
    """The cluster's address does not answer: nothing was sent or started (``senca-platform`` exits 3)."""


#: seconds to wait for a TCP connection to the cluster's address before ``ray.init`` (which retries for minutes)
CONNECT_TIMEOUT_S = 5.0


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``HOST:PORT`` / ``ray://HOST:PORT`` / ``http://HOST:PORT`` (None: ``auto``, no port)."""
    from urllib.parse import urlsplit

    text = address.strip()
    if text in ("auto", "local") or not text:
        return None
    parts = urlsplit(text if "://" in text else f"tcp://{text}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        return None
    return parts.hostname, int(port)


def unreachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why ``address`` (``spec.ray.address``) cannot be reached, in one line; None when a TCP connection opens
    (or the address has no host:port to try, e.g. ``auto``)."""
    import socket

    target = _host_port(address)
    if target is None:
        return None
    try:
        with socket.create_connection(target, timeout=timeout_s) as sock:
            return None if os.environ.get("RAY_USE_TLS", "0") not in ("0", "") else _not_grpc(sock, address)
    except OSError as err:
        why = err.strerror or type(err).__name__
        if isinstance(err, socket.timeout):
            why = f"no answer within {timeout_s:g}s"
        return (f"cannot reach the Ray cluster at {address} (ray.address): {why}; is the cluster up, and is this "
                "its GCS address (HOST:6379)? Leave ray.address out to run on an embedded local Ray")


#: the HTTP/2 client preface and an empty SETTINGS frame: every gRPC server (the GCS, Ray Client) answers with
#: its own SETTINGS frame (type 4); a silent port or an HTTP/1 server (the dashboard) does not
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _not_grpc(sock, address: str) -> str | None:
    """Why the open port at ``address`` is not a gRPC server (None: it is); ``ray.init`` would wait minutes."""
    import socket

    try:
        sock.sendall(_H2_PREFACE)
        head = b""
        while len(head) < 9:
            chunk = sock.recv(9 - len(head))
            if not chunk:
                break
            head += chunk
    except socket.timeout:
        return (f"the Ray cluster at {address} (ray.address) does not answer as a Ray GCS (no gRPC reply within "
                f"{sock.gettimeout():g}s); give the head's GCS address (HOST:6379)")
    except OSError as err:
        head = b""
        if not isinstance(err, ConnectionResetError):
            return f"cannot reach the Ray cluster at {address} (ray.address): {err.strerror or err}"
    if len(head) == 9 and head[3] == 0x04:
        return None
    shown = head[:12].decode("ascii", "replace").strip() or "nothing"
    return (f"{address} (ray.address) is not a Ray GCS address: the server there answered {shown!r}, not gRPC "
            "(the dashboard's HTTP port?); give the head's GCS address (HOST:6379)")


def connect(address: str, *, quiet: bool) -> None:
    """``ray.init(address=...)``, refused at once with one line (``RunNotStarted``, exit 3) when unreachable."""
    import ray

    from .runner import RunNotStarted  # here: runner imports this module

    problem = unreachable(address)
    if problem is None:
        try:
            ray.init(address=address, log_to_driver=not quiet, logging_level="WARNING")
            return
        except (ConnectionError, TimeoutError, OSError, ValueError) as err:  # no / wrong cluster there
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            problem = f"cannot connect to the Ray cluster at {address} (ray.address): {first[:300]}"
            if not os.environ.get("RAY_AUTH_TOKEN") and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
                problem += ("; a cluster with token authentication (Ray's default) needs RAY_AUTH_MODE=token and "
                            "its token in RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH)")
    raise RunNotStarted(problem)


#: the dashboard address of the embedded Ray started by this process (None: none started, or no dashboard)
_DASHBOARD: str | None = None
#: GCS address -> the state API address every worker of that embedded Ray has in :data:`API_SERVER_ENV`
_API_SERVERS: dict[str, str] = {}


def shutdown() -> None:
    """``ray.shutdown()``, a second sooner for an embedded Ray. Ray stops the node's processes one after the other,
    each with SIGTERM and up to a second's grace, the GCS before the autoscaler's monitor; the monitor's SIGTERM
    handler reports its end to that GCS, cannot, and is SIGKILLed when its second is up: 1.0 of a shutdown's
    1.36 s (measured, docs/BENCHMARKS.md). Nothing of a run talks to an embedded node's monitor, so it is
    SIGKILLed first here: the same end, without the wait. Connected to a cluster, this process started no
    monitor: plain ``ray.shutdown()``."""
    import ray

    try:
        from ray._private import ray_constants
        from ray._private import worker as ray_worker

        node = ray_worker._global_node
        infos = node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, []) if node and node.is_head() else []
        for info in infos:
            if info.process.poll() is None:
                info.process.kill()
                info.process.wait(timeout=5)
    except Exception:  # noqa: BLE001 - another Ray's internals: then Ray's own shutdown, as it is
        pass
    ray.shutdown()


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, *, quiet: bool = False,
                defer_shutdown: bool = False, dashboard: bool = True) -> Iterator[dict]:
    """Connect to ``address`` or start an embedded local Ray (``dashboard``: with its dashboard on 127.0.0.1);
    reuse one already up.

    Only a session started here is shut down here. Yields ``{"address", "embedded", "num_cpus", "dashboard"}``.
    ``defer_shutdown``: when the block ends without an error, Ray's shutdown (:func:`shutdown`, 0.4 s here: SIGTERM
    to each of its processes, then a wait) runs in a thread, ``session["shutdown"]``, which the caller joins when it
    has done its own closing work (model registration, report); after an error it shuts down at once. Before a deferred
    shutdown, garbage still holding Ray handles is collected while Ray is up (see there).
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    started = False
    if not ray.is_initialized():
        import signal
        import threading

        own = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        if address:
            connect(address, quiet=quiet)
        else:
            start_local_ray(num_cpus, log_to_driver=not quiet, dashboard=dashboard)
        started = True
        # ray.init installs a native SIGTERM handler (abort with a stack dump, exit 134): the application's own
        # Python handlers come back, so SIGTERM / SIGINT stop a run cleanly (the CLI: one line, exit 130)
        if threading.current_thread() is threading.main_thread():
            for sig, handler in own.items():
                if callable(handler):
                    signal.signal(sig, handler)
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        dashboard = _DASHBOARD if started and not address else None
        if dashboard and "://" not in dashboard:
            dashboard = f"http://{dashboard}"
        session = {"address": address, "embedded": started and not address, "num_cpus": cpus,
                   "dashboard": dashboard, "api_server": None if address else embedded_api_server(),
                   "shutdown": None}
        yield session
    except BaseException:
        if started:
            shutdown()
        raise
    if started and defer_shutdown:
        import gc
        import threading

        # Ray handles that only reference cycles still hold (Tune's and Ray Data's objects of the finished stages)
        # are freed now, while Ray is up. Left to the collector, one ran in this thread during the shutdown: an
        # ObjectRef's destructor reached the core worker being shut down, and Ray ends the process at once (exit 1,
        # nothing said, no summary: a CI demo run with tuning, 2026-12-06).
        gc.collect()
        session["shutdown"] = threading.Thread(target=shutdown, name="senca-ray-shutdown")
        session["shutdown"].start()
    elif started:
        shutdown()
