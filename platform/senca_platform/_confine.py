"""``paths.confine_to_spec_dir``: does an input path, or anything a reader could open through it, lead outside
the spec's folder?

A path is checked after resolving ``..`` and symlinks (``Path.resolve``). A folder (a Visium ``outs/``) is
walked: every file and sub-folder in it is resolved too, symlinked sub-folders followed (each real folder once),
so a folder inside the spec's folder whose files are symlinks to files elsewhere is an escape like any other.
"""

from __future__ import annotations

import os
from pathlib import Path

#: a folder with more entries than this is not walked further: the path is refused (it cannot be vetted)
MAX_WALK_ENTRIES = 100_000


def is_inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def escape_of(resolved: Path, real_base: Path) -> str | None:
    """``None`` when ``resolved`` (already resolved) and everything under it resolve inside ``real_base``; else
    what leads out, as text for the message (the path itself, or ``'<entry>' -> <target>``)."""
    if not is_inside(resolved, real_base):
        return str(resolved)
    if not resolved.is_dir():
        return None
    seen: set[Path] = set()
    todo = [resolved]
    n = 0
    while todo:
        folder = todo.pop()
        if folder in seen:
            continue
        seen.add(folder)
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue  # unreadable: nothing a reader could open through it either
        for entry in entries:
            n += 1
            if n > MAX_WALK_ENTRIES:
                return f"{resolved} (more than {MAX_WALK_ENTRIES} entries: not vetted)"
            try:
                target = Path(entry.path).resolve()
            except (OSError, RuntimeError):  # a symlink loop: refused, it cannot be vetted
                return f"{entry.path!r} (symlink loop)"
            if not is_inside(target, real_base):
                return f"{entry.path!r} -> {target}"
            if target.is_dir():
                todo.append(target)
    return None


__all__ = ["MAX_WALK_ENTRIES", "escape_of", "is_inside"]
