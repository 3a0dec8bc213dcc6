"""``common_genes``: the gene panel shared by several slides."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from anndata import AnnData

from ..errors import SlideError
from ._utils import slide_name


def common_genes(adatas: Sequence[AnnData] | Mapping[str, AnnData]) -> pd.Index:
    """Genes present in every slide (intersection of ``var_names``), in the first slide's order.

    Accepts a list of AnnData or a ``{slide_id: AnnData}`` mapping. Raises :class:`SlideError`
    naming all slides (``slide_id`` from ``uns["senca"]`` or the position) when the intersection
    is empty, or when the list is empty.
    """
    if isinstance(adatas, Mapping):
        names = [str(k) for k in adatas]
        items = list(adatas.values())
    else:
        items = list(adatas)
        names = [slide_name(a, f"#{i}") for i, a in enumerate(items)]
    if not items:
        raise SlideError("no slides given", field="var_names")
    common = pd.Index(items[0].var_names)
    for a in items[1:]:
        common = common[common.isin(a.var_names)]
    common = common.unique()
    if len(common) == 0:
        sizes = ", ".join(f"{n} ({a.n_vars} genes)" for n, a in zip(names, items))
        raise SlideError(f"the slides share no gene: {sizes}", slide=",".join(names),
                         field="var_names")
    return common
