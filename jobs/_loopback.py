"""The DDP rendezvous store of Ray Train's workers on the loopback address when the node is 127.0.0.1.

Ray Train sets up ``torch.distributed`` with ``init_method="env://"``: rank 0 hosts the rendezvous store
(``c10d.TCPStore``) on ``MASTER_ADDR:MASTER_PORT``, and torch binds that server to every interface whatever the
address. In the embedded Ray the node (hence ``MASTER_ADDR``) is 127.0.0.1, so rank 0 binds the store's socket to
that address itself and hands it to ``TCPStore(master_listen_fd=...)``. Gloo's own connections use
``GLOO_SOCKET_IFNAME=lo`` (set in the embedded Ray's environment by ``senca_platform.ray_local``). Nothing changes
for a non-loopback ``MASTER_ADDR`` (a real cluster) or for the other ranks.

``jobs._ddp.LoopbackTorchConfig`` (every ``TorchTrainer`` of :mod:`jobs.train`) installs the patch on each worker just
before Ray Train sets up the process group, so only Ray Train's workers carry it: the embedded Ray needs no
job-wide ``worker_process_setup_hook``, whose runtime environment cost every new worker process 0.6-1.0 s
(docs/BENCHMARKS.md). Installing does not import torch: when ``torch.distributed.rendezvous`` is not loaded yet, a
finder on ``sys.meta_path`` patches it as it loads.
"""

from __future__ import annotations

import importlib.abc
import ipaddress
import socket
import sys

_MODULE = "torch.distributed.rendezvous"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _patch(rdzv) -> None:
    """Wrap ``rdzv._create_c10d_store`` (idempotent)."""
    original = getattr(rdzv, "_create_c10d_store", None)
    if original is None or getattr(original, "_senca_loopback", False):
        return

    def create(hostname, port, rank, world_size, timeout, use_libuv=True):
        if rank != 0 or not port or not _is_loopback(str(hostname)) or rdzv._torchelastic_use_agent_store():
            return original(hostname, port, rank, world_size, timeout, use_libuv)
        host = "127.0.0.1" if hostname == "localhost" else str(hostname)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, int(port)))
        except OSError:
            sock.close()
            return original(hostname, port, rank, world_size, timeout, use_libuv)
        return rdzv.TCPStore(host_name=host, port=int(port), world_size=world_size, is_master=True,
                             timeout=timeout, multi_tenant=True, use_libuv=use_libuv,
                             master_listen_fd=sock.detach())  # the store owns the socket from here

    create._senca_loopback = True  # type: ignore[attr-defined]
    rdzv._create_c10d_store = create


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; when ``torch.distributed.rendezvous`` is found by the others, patches it once loaded."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        loader.exec_module = exec_and_patch  # this spec's own loader instance
        return spec


def torch_store_on_loopback() -> None:
    """Bind the DDP rendezvous store of this worker to the loopback address (patched now, or on import)."""
    module = sys.modules.get(_MODULE)
    if module is not None and hasattr(module, "_create_c10d_store"):
        _patch(module)
    elif not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())

