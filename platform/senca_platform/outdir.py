"""Which folder a run may write into, and the marker that proves a folder is a run's output folder.

A run only ever removes what it can prove it wrote: the temp files of its own atomic writes
(``jobs._files.TEMP_NAME``: ``.<stem>.senca-tmp-XXXXXXXX<suffix>``), and only in a folder that holds its marker
``.senca-run.json`` (``jobs._files.OUTPUT_MARKER``), written when a run first claims the folder.
:func:`claim_output_dir` decides:

- a new or empty folder: created / claimed (the marker is written);
- a folder with the marker: a run's output folder (``--resume``, a rerun): used as it is;
- a folder an earlier version of the platform wrote (``tracking/run.json`` naming this very folder as its
  ``output_dir``): claimed;
- any other non-empty folder: refused with one line, unless ``force=True`` (``run --force-out``): then it is
  claimed, its entries at that moment are listed in the marker, and nothing in it is deleted (files named like
  the run's outputs are overwritten);
- an empty ``--out ""``, a path that is a file, a folder that cannot be created or written: refused.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from jobs._files import MARKER_TOOL, OUTPUT_MARKER, atomic_write_json, is_output_dir

#: how many of a forced folder's own entries the marker lists
_LISTED = 200


class OutputDirError(RuntimeError):
    """The output folder cannot be used (one line for the user; the runner reports it as "nothing ran")."""


def check_out_arg(value: str | os.PathLike | None) -> None:
    """``--out ""`` (or blanks) is refused: it would silently mean the current directory."""
    if value is not None and not str(os.fspath(value)).strip():
        raise OutputDirError("--out is empty: name the output folder (e.g. --out results); '.' for the current "
                             "folder must be written out")


def _written_by_us_before(out: Path) -> bool:
    """An output folder of a run from before the marker existed: its journal names this folder."""
    try:
        run = json.loads((out / "tracking" / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(run, dict) and "format" in run and run.get("output_dir") == str(out)


def claim_output_dir(out: str | Path, *, cohort: str = "", force: bool = False) -> Path:
    """Make ``out`` (absolute) the run's output folder, or raise :class:`OutputDirError` (module doc). Returns it.

    Writes ``out/.senca-run.json`` (``{"tool", "format", "cohort", "claimed", "forced"[, "entries_before"]}``)
    when the folder is not marked yet; an existing marker is left as it is."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"output folder {out} exists and is not a folder: choose another --out")
    if is_output_dir(out):
        return out
    try:
        out.mkdir(parents=True, exist_ok=True)
        entries = sorted(os.listdir(out))
    except OSError as err:
        raise OutputDirError(f"cannot create or read the output folder {out}: {err.strerror or err}") from None
    legacy = bool(entries) and _written_by_us_before(out)
    if entries and not legacy and not force:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise OutputDirError(
            f"output folder {out} is not empty ({len(entries)} entries: {shown}) and no senca-platform run wrote "
            f"it (no {OUTPUT_MARKER}): choose a new or empty --out, or pass --force-out to write into it (nothing "
            "in it is deleted; files named like the run's outputs are overwritten)")
    marker = {"tool": MARKER_TOOL, "format": 1, "cohort": cohort, "claimed": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "forced": bool(entries and not legacy), "earlier_run": legacy}
    if entries and not legacy:
        marker["entries_before"] = entries[:_LISTED]
        marker["n_entries_before"] = len(entries)
    try:
        atomic_write_json(out / OUTPUT_MARKER, marker)
    except OSError as err:
        raise OutputDirError(f"cannot write into the output folder {out}: {err.strerror or err}") from None
    return out


__all__ = ["OutputDirError", "check_out_arg", "claim_output_dir"]
