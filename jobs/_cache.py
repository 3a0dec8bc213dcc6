"""The stage cache: content hashes of a stage's inputs (:func:`stable_hash`, :func:`file_fingerprint`) and the
manifests of finished stages (:class:`StageCache`), reused when the key matches and the outputs still read."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterable

from ._files import atomic_write_json
from ._jsonsafe import json_default
from ._readable import unreadable_file
from ._say import say


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys), hex, 24 characters."""
    text = json.dumps(obj, sort_keys=True, default=json_default, separators=(",", ":"))
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
        self.echo = echo or say
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
