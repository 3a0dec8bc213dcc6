"""``read``: the one reader dispatch (scanpy's ``sc.read`` is the model): a reader named, or told from the path."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable

from anndata import AnnData

from ..errors import ConfigError, SlideError
from ._h5ad import read_h5ad
from ._her2st import read_her2st
from ._legacy_st import read_legacy_st
from ._utils import display
from ._visium import read_visium

#: reader name (as in a cohort spec's ``reader:``) → (function, the keyword ``path`` is passed as)
READERS: dict[str, tuple[Callable[..., AnnData], str]] = {
    "legacy_st": (read_legacy_st, "counts"),
    "visium": (read_visium, "path"),
    "h5ad": (read_h5ad, "path"),
    "her2st": (read_her2st, "root"),
}


def infer_reader(path: str | Path) -> str:
    """The reader a path calls for, where the path alone tells it: a ``.h5ad`` file → ``"h5ad"``; a ``.tsv`` /
    ``.tsv.gz`` file → ``"legacy_st"`` (its counts; the spot file comes as ``spots=``); a Space Ranger folder
    (``spatial/`` and ``filtered_feature_bc_matrix.h5`` or ``filtered_feature_bc_matrix/``) → ``"visium"``; a HER2ST
    root (``counts/`` and ``spots/``) → ``"her2st"``. Anything else: :class:`ConfigError` on ``reader`` (or a
    :class:`SlideError` on ``path`` when it does not exist)."""
    p = Path(path)
    name = p.name.lower()
    if name.endswith(".h5ad"):
        return "h5ad"
    if name.endswith((".tsv", ".tsv.gz")):
        return "legacy_st"
    if not p.exists():
        raise SlideError("file or folder not found (the reader cannot be told from it)", file=display(p),
                         field="path")
    if p.is_dir():
        visium = (p / "spatial").is_dir() and ((p / "filtered_feature_bc_matrix.h5").is_file()
                                               or (p / "filtered_feature_bc_matrix").is_dir())
        her2st = (p / "counts").is_dir() and (p / "spots").is_dir()
        if visium != her2st:
            return "visium" if visium else "her2st"
    raise ConfigError("reader", f"cannot tell the reader from {display(p)!r}: name one of {sorted(READERS)}")


def read(path: str | Path, *, reader: str | None = None, **kwargs: Any) -> AnnData:
    """Read one slide with the reader named (``"legacy_st"``, ``"visium"``, ``"h5ad"``, ``"her2st"``) or told from
    ``path`` (:func:`infer_reader`). ``path`` is the reader's first argument (legacy ST: the counts file; HER2ST:
    the data set's root, with ``section=``); ``kwargs`` are the reader's keywords, those that are ``None`` left out
    (not given). Returns the reader's AnnData (counts not validated beyond the reader's own checks).

    An unknown reader name, a keyword the reader does not take or a missing required one: :class:`ConfigError`
    naming the field; the reader's own problems: :class:`SlideError`."""
    name = infer_reader(path) if reader is None else str(reader)
    if name not in READERS:
        raise ConfigError("reader", f"unknown reader {name!r}: one of {sorted(READERS)}")
    fn, first = READERS[name]
    params = inspect.signature(fn).parameters
    given = {k: v for k, v in kwargs.items() if v is not None}
    unknown = sorted(set(given) - set(params) | ({first} & set(given)))
    if unknown:
        raise ConfigError(unknown[0], f"not a keyword of the {name!r} reader ({fn.__name__})")
    missing = [k for k, p in params.items() if k != first and p.default is p.empty and k not in given]
    if missing:
        raise ConfigError(missing[0], f"the {name!r} reader needs it ({fn.__name__}({first}, {missing[0]}=...))")
    return fn(path, **given)
