"""Fault injection for the tests: wait for a worker's pid file (``jobs._faults.fault_point``) and SIGKILL that pid.

The workers write ``<point>.<pid>.<n>.pid`` into ``$SENCA_FAULT_PIDDIR`` when they reach a fault point and then
sleep ``$SENCA_FAULT_SLOW_S`` seconds; a :class:`Killer` (a thread of the test process) waits for such a file,
checks that the pid is a live Ray worker process, kills it with ``SIGKILL`` and records what it killed, so a test
can assert that the kill really happened (:meth:`Killer.kills` raises when it did not).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

FAULT_ENV = {"piddir": "SENCA_FAULT_PIDDIR", "slow": "SENCA_FAULT_SLOW_S"}


@dataclass(frozen=True)
class PidFile:
    """One fault-point record: ``<point>.<pid>.<n>.pid``."""

    path: Path
    point: str
    pid: int
    n: int


@dataclass
class Kill:
    """A process killed by pid: the fault point it was at, its command line, and what the test noted then."""

    pid: int
    point: str
    cmdline: str
    seconds: float  # since the killer started
    file: PidFile | None = None
    observed: object = None
    dead: bool = False  # confirmed gone (or a zombie) after the signal


def pid_files(piddir: str | Path, prefix: str = "") -> list[PidFile]:
    """The pid files under ``piddir`` whose point starts with ``prefix``, oldest first."""
    out = []
    for p in Path(piddir).glob("*.pid"):
        if p.name.startswith("."):  # the temp file of an atomic write in progress
            continue
        point, pid, n = p.name[:-len(".pid")].rsplit(".", 2)
        if point.startswith(prefix):
            out.append(PidFile(p, point, int(pid), int(n)))
    return sorted(out, key=lambda f: f.n)


def cmdline(pid: int) -> str | None:
    """The process's command line (``None`` when there is no such process)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None


def is_gone(pid: int) -> bool:
    """No such process, or a zombie waiting to be reaped by its parent (the raylet)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return any(line.startswith("State:") and "Z" in line.split()[1] for line in status.splitlines())


def is_ray_worker(cmd: str | None) -> bool:
    return bool(cmd) and ("ray::" in cmd or "default_worker.py" in cmd)


def kill_pid(pid: int, *, wait_s: float = 10.0) -> bool:
    """``SIGKILL`` ``pid`` and wait until it is gone; True when it is."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if is_gone(pid):
            return True
        time.sleep(0.02)
    return is_gone(pid)


def wait_for(condition: Callable[[], object], *, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``condition()`` until it returns something truthy (returned); ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached within {timeout:.0f}s")
        time.sleep(interval)


@dataclass
class Killer:
    """A thread that kills ``count`` distinct processes, each when it reaches a fault point matching ``prefix``.

    Only pid files written after :meth:`start` count, and only while their process is still paused at that point:
    the file is its process's latest and younger than ``fresh_s`` (set it below the workers' ``SENCA_FAULT_SLOW_S``).
    ``accept(pidfile)`` (optional) must be true for a file to be acted on (e.g. "a checkpoint of epoch >= 2 is
    registered"); ``observe(pidfile)`` (optional) is called just before the kill and its value is kept in
    :attr:`Kill.observed`. Only live Ray worker processes are killed (``kill(pidfile)``, optional, kills instead of a
``SIGKILL`` of the pid: the worker's whole node, say).
    """

    piddir: str | Path
    prefix: str
    timeout: float = 120.0
    count: int = 1
    fresh_s: float = 1.0
    accept: Callable[[PidFile], bool] | None = None
    observe: Callable[[PidFile], object] | None = None
    kill: Callable[[PidFile], bool] | None = None  # instead of SIGKILL of the pid (e.g. the whole node); True: dead
    done: list[Kill] = field(default_factory=list)
    error: BaseException | None = None

    def start(self) -> "Killer":
        self._seen = {p.path for p in pid_files(self.piddir)}
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"killer[{self.prefix}]", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while len(self.done) < self.count and not self._stop.is_set():
                if time.monotonic() - self._t0 > self.timeout:
                    raise TimeoutError(f"no process reached fault point {self.prefix!r}* within {self.timeout:.0f}s "
                                       f"({len(self.done)}/{self.count} killed)")
                files = pid_files(self.piddir)
                latest = {f.pid: f for f in files}  # oldest first: the last one per pid wins
                for f in files:
                    if not f.point.startswith(self.prefix) or latest[f.pid] is not f:
                        continue
                    if f.path in self._seen or any(k.pid == f.pid for k in self.done):
                        continue
                    try:
                        if time.time() - f.path.stat().st_mtime > self.fresh_s:  # it may have left the point
                            continue
                    except FileNotFoundError:
                        continue
                    if self.accept is not None and not self.accept(f):
                        continue
                    self._seen.add(f.path)
                    cmd = cmdline(f.pid)
                    if not is_ray_worker(cmd):  # already gone (its slide finished), or the pid was reused
                        continue
                    observed = self.observe(f) if self.observe is not None else None
                    kill = Kill(pid=f.pid, point=f.point, cmdline=cmd or "", file=f, observed=observed,
                                seconds=round(time.monotonic() - self._t0, 2))
                    kill.dead = self.kill(f) if self.kill is not None else kill_pid(f.pid)
                    self.done.append(kill)
                    break
                else:
                    time.sleep(0.02)
        except BaseException as err:  # noqa: BLE001 - surfaced by kills()
            self.error = err

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def kills(self) -> list[Kill]:
        """Stop watching and return what was killed. Call it once the faulted run has returned (no new fault point
        can come then); raises ``AssertionError`` when fewer than ``count`` processes were killed (no silent pass)."""
        self.stop()
        if self.error is not None:
            raise AssertionError(f"fault injection failed: {self.error}") from self.error
        if len(self.done) < self.count:
            raise AssertionError(f"only {len(self.done)}/{self.count} process(es) killed at {self.prefix!r}*")
        return list(self.done)
