"""The files the Ray programs write: atomic writes (a temp file next to the target, renamed over it; readers never
see half a file), the temp files' names (:data:`TEMP_NAME`, :func:`is_temp_of`) and their clean-up
(:func:`remove_stale_temps`, :func:`unlink_all`), and the run's output-folder marker (:data:`OUTPUT_MARKER`,
:func:`is_output_dir`)."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

from ._jsonsafe import json_default


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
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n",
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
