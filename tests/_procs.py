"""Processes for the driver / tracking / security tests: the CLI started in its own session (so that every process
it starts, embedded Ray included, can be found and killed by pid), its listening sockets, and the cleanup that
leaves no Ray process behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from _faults import wait_for
from _services import VENV_BIN, _alive, service_env, session_pids, stop_session


def ray_tmpdir() -> Path:
    """A private, short ``RAY_TMPDIR`` (Ray's socket paths are length-limited): the session files of the Ray this
    test starts land there and are removed with it, not in the shared /tmp/ray."""
    return Path(tempfile.mkdtemp(prefix="srt", dir="/tmp"))


class Cli:
    """``senca-platform ARGS`` as a user runs it, in a new session (``start_new_session``): its process group and
    session id are its pid; Ray's processes stay in that session (the workers get their own process groups)."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str] | None = None, name: str = "cli"):
        self.dir = Path(cwd)
        self.stdout_path = self.dir / f"{name}.stdout"
        self.stderr_path = self.dir / f"{name}.stderr"
        exe = shutil.which("senca-platform", path=str(VENV_BIN)) or str(VENV_BIN / "senca-platform")
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen([exe, *args], stdout=out, stderr=err, cwd=str(cwd),
                                         env=env if env is not None else service_env(), start_new_session=True)
        self.sid = self.proc.pid

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            raise

    def kill_group(self) -> None:
        """``SIGKILL`` the CLI's whole process group (the driver, the GCS, raylet, dashboard ...)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def leftovers(self, grace_s: float = 20.0) -> list[int]:
        """Processes of the session still alive after ``grace_s`` (Ray workers exit when their raylet dies)."""
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _alive(session_pids(self.sid)):
            time.sleep(0.3)
        return _alive(session_pids(self.sid))

    def kill_all(self) -> list[int]:
        """End every process of the session (by pid: TERM, then KILL); returns those still alive (none)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        left = stop_session(self.sid)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        return left


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _socket_inodes(pids: list[int]) -> dict[str, list[int]]:
    """Each socket inode to every pid holding it (a child forked without closing its parent's descriptors, as
    Ray's workers are from the raylet, holds the parent's listening socket too)."""
    inodes: dict[str, list[int]] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.setdefault(link[8:-1], []).append(pid)
    return inodes


def _ip(hex_ip: str) -> str:
    import ipaddress

    raw = bytes.fromhex(hex_ip)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    addr = ipaddress.IPv6Address(words)
    return str(addr.ipv4_mapped) if addr.ipv4_mapped else str(addr)


def listening(pids: list[int]) -> list[tuple[str, int, int, str]]:
    """TCP sockets in LISTEN state held by ``pids``: ``(ip, port, pid, command line)``, one row per holder;
    IPv4-mapped IPv6 addresses are given as IPv4."""
    inodes = _socket_inodes(pids)
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10 or parts[3] != "0A" or parts[9] not in inodes:
                continue
            ip, port = parts[1].split(":")
            out.extend((_ip(ip), int(port, 16), pid, cmdline(pid)[:300]) for pid in inodes[parts[9]])
    return out


def is_loopback(ip: str) -> bool:
    import ipaddress

    return ipaddress.ip_address(ip).is_loopback


class SocketWatch:
    """Samples the listening sockets of a session's processes every ``interval`` s while it runs (a thread):
    ``seen`` maps each (ip, port, pid) holding a listening socket to its command line; ``processes`` every pid of
    the session seen to its command line (so that a check can tell "never ran" from "ran but was not caught
    listening")."""

    def __init__(self, sid: int, interval: float = 0.5):
        self.sid = sid
        self.interval = interval
        self.seen: dict[tuple[str, int, int], str] = {}
        self.processes: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "SocketWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = session_pids(self.sid)
            for pid in pids:  # re-read every time: a process seen just after its fork still shows its parent's
                cmd = cmdline(pid)[:300]  # command line until it execs (the dashboard, caught that way, was "not seen")
                if cmd:
                    self.processes[pid] = cmd
            for ip, port, pid, cmd in listening(pids):
                self.seen.setdefault((ip, port, pid), cmd)
            self._stop.wait(self.interval)


def wait_until(condition, *, timeout: float, interval: float = 0.2, what: str = "condition"):
    """``_faults.wait_for`` with this module's slower default poll."""
    return wait_for(condition, timeout=timeout, interval=interval, what=what)
