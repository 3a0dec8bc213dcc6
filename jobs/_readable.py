"""``unreadable_file``: whether a cached output file is whole enough to reuse (``StageCache.get``)."""

from __future__ import annotations

import json
from pathlib import Path


def unreadable_file(path: str | Path) -> str | None:
    """Why a cached output file cannot be read (None: it looks whole). Cheap: JSON is parsed, HDF5 (h5ad) opened
    (HDF5 checks its end-of-file address), zip-based files (npz, torch ``.pt``) read to their central directory,
    parquet checked for its footer magic, ``.npy`` for its length; anything else only has to be a file (a folder
    is fine as it is)."""
    import zipfile

    p = Path(path)
    if p.is_dir():
        return None
    suffix = p.suffix.lower()
    try:
        if suffix == ".json":
            json.loads(p.read_text())
        elif suffix in (".h5ad", ".h5"):
            import h5py

            with h5py.File(p, "r") as f:
                list(f.keys())
        elif suffix in (".npz", ".pt", ".zip"):
            with open(p, "rb") as fh:
                magic = fh.read(2)
            if not magic:
                return "empty file"
            if suffix != ".pt" or magic == b"PK":  # torch.save writes a zip (older pickles are not checked)
                with zipfile.ZipFile(p) as z:
                    z.namelist()
        elif suffix == ".npy":
            import numpy as np

            with open(p, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, dtype = read(fh)
                need = fh.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if not dtype.hasobject and p.stat().st_size < need:
                return f"cut off ({p.stat().st_size} of {need} bytes)"
        elif suffix == ".parquet":
            with open(p, "rb") as fh:
                head = fh.read(4)
                fh.seek(max(p.stat().st_size - 4, 0))
                if head != b"PAR1" or fh.read(4) != b"PAR1":
                    return "not a whole parquet file"
    except (OSError, ValueError, UnicodeDecodeError, zipfile.BadZipFile, KeyError, RuntimeError) as err:
        return type(err).__name__
    return None
