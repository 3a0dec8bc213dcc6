"""Small shared pieces of the Ray programs: atomic writes, content hashes, the stage cache, peak memory.

Fault injection (tests only, off by default): :func:`fault_point` does nothing unless the environment variable
``SENCA_FAULT_PIDDIR`` is set in the worker processes (the tests set it before starting their embedded Ray). When
set, the process writes its pid to ``$SENCA_FAULT_PIDDIR/<point>.<pid>.<n>.pid`` and sleeps
``SENCA_FAULT_SLOW_S`` seconds (default 0), so that a test can ``SIGKILL`` it at a known point
(``tests/test_faults_workers.py``). The points: ``prepare.<slide>`` (a slide's prepared h5ad written to its temp
file, not yet renamed; ``jobs.preprocess.read_and_prepare``) and ``train.rank<r>.epoch<e>`` (the epoch's optimiser
steps done, its metrics not yet gathered nor checkpointed; ``jobs.train.train_loop_per_worker``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable

from ._readable import unreadable_file


# ----------------------------------------------------------------------------------------- atomic writes
#: what every temp file of an atomic write carries between the target's stem and its suffix
#: (``.<stem>.senca-tmp-XXXXXXXX<suffix>``): a user's own hidden file can never look like one
TEMP_TAG = "senca-tmp-"


def file_mode(*, private: bool = False) -> int:
    """The permission bits of a new file: ``0o666`` less the process umask (what ``open()`` gives), or ``0o600``
    for a file that holds credentials. Read from ``/proc/self/status`` (Linux), so no thread ever sees a
    changed umask; elsewhere the umask is set and restored."""
    if private:
        return 0o600
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        pass
    mask = os.umask(0o022)  # pragma: no cover
    os.umask(mask)  # pragma: no cover
    return 0o666 & ~mask  # pragma: no cover


def _temp_for(path: Path) -> tuple[int, str]:
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.{TEMP_TAG}", suffix=path.suffix)


def atomic_write_bytes(path: str | Path, data: bytes, *, private: bool = False) -> Path:
    """Write ``data`` to a temp file next to ``path`` and rename it over ``path`` (readers never see half).

    The file gets :func:`file_mode` (the umask's mode; ``private=True``: 0600, for credentials)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_for(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), file_mode(private=private))
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | Path, text: str, *, private: bool = False) -> Path:
    return atomic_write_bytes(path, text.encode(), private=private)


def atomic_write_json(path: str | Path, obj: Any, *, private: bool = False) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n",
                             private=private)


def atomic_write_with(path: str | Path, writer: Callable[[Path], Any], *, private: bool = False) -> Path:
    """Call ``writer(tmp_path)`` (e.g. ``adata.write_h5ad``) then rename the temp file over ``path`` (mode as
    :func:`atomic_write_bytes`; the temp keeps the target's suffix, which some writers look at)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_for(path)
    os.close(fd)
    try:
        writer(Path(tmp))
        os.chmod(tmp, file_mode(private=private))  # after the writer: some writers replace the file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


#: the temp names of the atomic writes above: a dot, the target's stem, ``.senca-tmp-`` + tempfile's 8 random
#: characters, the target's suffix. Nothing else is ever taken for a temp file.
TEMP_NAME = re.compile(r"^\.(?P<base>.+)\." + re.escape(TEMP_TAG) + r"[a-z0-9_]{8}(?P<suffix>\.[A-Za-z0-9]+)?$")


def is_temp_of(name: str, target: Path | None = None) -> bool:
    """Is ``name`` a temp file of an atomic write (of ``target`` when given)?"""
    m = TEMP_NAME.match(name)
    if m is None or target is None:
        return m is not None
    return (m["base"], m["suffix"] or "") == (target.stem, target.suffix)


def unlink_all(paths: Iterable[Path]) -> list[Path]:
    """Delete ``paths`` (one already gone is skipped); returns those removed."""
    removed = []
    for path in paths:
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


#: the file that marks a folder as a run's output folder (written by ``senca_platform.outdir.claim_output_dir``
#: when a run first takes the folder): clean-up only ever happens in a folder that has it
OUTPUT_MARKER = ".senca-run.json"
MARKER_TOOL = "senca-platform"


def is_output_dir(out: str | Path) -> bool:
    """Does ``out`` hold our :data:`OUTPUT_MARKER` (a JSON object naming :data:`MARKER_TOOL`)?"""
    try:
        marker = json.loads((Path(out) / OUTPUT_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("tool") == MARKER_TOOL


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete the temp files that an earlier, killed attempt at writing ``path`` left next to it.

    A process killed between creating its temp file and the rename never runs its ``finally``; the retried task
    calls this first. Only for outputs with one writer at a time (one task per slide). Returns the files removed.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return unlink_all(p for p in path.parent.glob(".*") if is_temp_of(p.name, path))


# ----------------------------------------------------------------------------------------- fault injection
FAULT_PIDDIR_ENV = "SENCA_FAULT_PIDDIR"
FAULT_SLOW_ENV = "SENCA_FAULT_SLOW_S"


def fault_point(name: str) -> None:
    """Fault-injection hook for the fault tests; a no-op unless ``SENCA_FAULT_PIDDIR`` is set (see the module doc).

    When set: writes this process's pid to ``$SENCA_FAULT_PIDDIR/<name>.<pid>.<n>.pid`` (atomically; ``n`` orders
    the files), then sleeps ``SENCA_FAULT_SLOW_S`` seconds, the window in which the test kills the process.
    """
    piddir = os.environ.get(FAULT_PIDDIR_ENV)
    if not piddir:
        return
    import time

    pid = os.getpid()
    atomic_write_text(Path(piddir) / f"{name}.{pid}.{time.time_ns()}.pid", f"{pid}\n")
    slow = float(os.environ.get(FAULT_SLOW_ENV) or 0.0)
    if slow > 0:
        time.sleep(slow)


def _json_default(value: Any) -> Any:
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def clean_float(value: Any) -> float | None:
    """A JSON-safe float: None for missing / NaN / inf."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value == value and value not in (float("inf"), float("-inf")) else None


# ----------------------------------------------------------------------------------------- hashing
def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys), hex, 24 characters."""
    text = json.dumps(obj, sort_keys=True, default=_json_default, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def file_fingerprint(path: str | Path | None, *, full_bytes_below: int = 1 << 20) -> Any:
    """What identifies an input file: its bytes' hash when small (< 1 MiB), else size + mtime_ns.

    Missing files fingerprint as ``None`` (the stage then fails for that slide; a later fix changes the key).
    """
    if path is None:
        return None
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return {"path": str(path), "missing": True}
    if path.is_dir():
        return {"path": str(path), "dir": sorted(
            (str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*") if p.is_file())}
    if st.st_size < full_bytes_below:
        return {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


# ----------------------------------------------------------------------------------------- stage cache
class StageCache:
    """Manifests of finished stages under ``OUT/cache/<stage>.json``: ``{"key": ..., "outputs": {...}}``.

    A stage is reused when its key (hash of its inputs' fingerprints + its config) matches the manifest and
    every output file listed there still exists and can be read (a cut-off JSON / h5ad / npz / zip / parquet is
    a miss: the manifest is dropped, one line ``cache entry <stage> unreadable (...): recomputed`` is printed on
    stderr, and the stage runs again). ``fresh=True`` ignores every manifest.
    """

    def __init__(self, root: str | Path, *, fresh: bool = False, echo: Callable[[str], None] | None = None):
        self.root = Path(root)
        self.fresh = fresh
        self.echo = echo or (lambda line: print(f"[senca-platform] {line}", file=sys.stderr, flush=True))
        self.reported: set[str] = set()

    def _path(self, stage: str) -> Path:
        return self.root / f"{stage}.json"

    def _unreadable(self, stage: str, why: str) -> None:
        """A broken entry: said once, dropped (so the next run does not trip on it either); the caller recomputes."""
        if stage not in self.reported:
            self.reported.add(stage)
            self.echo(f"cache entry {stage} unreadable ({why}): recomputed")
        try:
            self._path(stage).unlink(missing_ok=True)
        except OSError:
            pass

    def get(self, stage: str, key: str) -> dict | None:
        if self.fresh:
            return None
        path = self._path(stage)
        try:
            manifest = json.loads(path.read_text())
            if not isinstance(manifest, dict) or not isinstance(manifest.get("outputs", {}), dict):
                raise ValueError("not a manifest")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, UnicodeDecodeError) as err:
            self._unreadable(stage, f"{path.name}: {type(err).__name__}")
            return None
        if manifest.get("key") != key:
            return None
        for value in _walk_paths(manifest.get("outputs", {})):
            if not Path(value).exists():
                return None
            why = unreadable_file(value)  # jobs/_readable.py
            if why is not None:
                self._unreadable(stage, f"{Path(value).name}: {why}")
                return None
        return manifest.get("outputs", {})

    def put(self, stage: str, key: str, outputs: dict) -> None:
        atomic_write_json(self._path(stage), {"key": key, "outputs": outputs})


def _walk_paths(obj: Any) -> Iterable[str]:
    """Values of keys ending in ``path``/``paths``/``_file`` in a manifest (the files that must still exist)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(value, str) and (key.endswith("path") or key.endswith("_file")):
                yield value
            elif isinstance(value, list) and key.endswith("paths"):
                yield from (v for v in value if isinstance(v, str))
            else:
                yield from _walk_paths(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from _walk_paths(item)


# ----------------------------------------------------------------------------------------- errors / memory
def error_text(err: BaseException, slide: str | None = None) -> str:
    """One line naming the slide: ``SlideError`` messages already do; other exceptions get the slide prefixed."""
    try:
        from senca_core.errors import SlideError
    except ImportError:  # pragma: no cover
        SlideError = ()  # type: ignore[assignment]
    if isinstance(err, SlideError):
        text = str(err.with_slide(slide) if slide else err)
    else:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        text = f"{type(err).__name__}: {detail}" if detail else type(err).__name__
        if slide:
            text = f"slide {slide!r}: {text}"
    return text


def short_traceback(err: BaseException, limit: int = 6) -> str:
    return "".join(traceback.format_exception(type(err), err, err.__traceback__, limit=limit))[-4000:]


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (MiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class PeakSampler:
    """Peak resident memory of THIS task (not the worker's lifetime): RSS sampled every ``interval`` s in a thread.

    Worker processes are reused across tasks, so ``ru_maxrss`` is the worker's peak over every task it ran; the
    sampled peak is what one slide needs (plus whatever earlier tasks left behind: a leak would show as growth).
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak = 0.0
        self._stop = None
        self._thread = None

    def __enter__(self) -> "PeakSampler":
        import threading

        self._stop = threading.Event()
        self.peak = current_rss_mb()

        def loop():
            while not self._stop.wait(self.interval):
                self.peak = max(self.peak, current_rss_mb())

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_mb())


def release_memory() -> None:
    """After a slide's task: collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``),
    so that a reused worker's resident memory does not creep up with every slide it has processed."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    except OSError:  # pragma: no cover
        return float("nan")
