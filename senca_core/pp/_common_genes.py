"""``common_genes`` / ``panel_outliers``: the gene panel shared by several slides, and the slides that would
collapse it."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

import pandas as pd
from anndata import AnnData

from ..errors import SlideError
from ._utils import slide_name

#: a slide must cover at least max(MIN_PANEL_GENES, MIN_PANEL_FRACTION × the reference panel) genes of the panel
#: the other slides share (capped at a quarter of the reference, for tiny panels), else it would collapse every slide's panel
MIN_PANEL_GENES = 50
MIN_PANEL_FRACTION = 0.1
MAX_PANEL_SHARE = 0.25


def _named(adatas) -> tuple[list[str], list[AnnData]]:
    if isinstance(adatas, Mapping):
        return [str(k) for k in adatas], list(adatas.values())
    items = list(adatas)
    return [slide_name(a, f"#{i}") for i, a in enumerate(items)], items


def panel_outliers(adatas: Sequence[AnnData] | Mapping[str, AnnData]) -> dict[str, str]:
    """The slides whose genes cover too little of the panel the other slides share: ``{slide: reason}``.

    Rule: for each slide, the reference panel is the genes present in at least half of the OTHER slides (so two
    bad slides cannot shield each other); the slide is an outlier when it has fewer than
    ``min(max(50, 10 % of the reference), 25 % of the reference)`` of those genes. Keeping it would shrink the
    shared panel of every slide to (at most) its few genes. Empty with fewer than two slides.
    """
    names, items = _named(adatas)
    if len(items) < 2:
        return {}
    sets = [set(map(str, a.var_names)) for a in items]
    seen = Counter(g for s in sets for g in s)
    out = {}
    for name, genes in zip(names, sets):
        n_others = len(items) - 1
        need_in = math.ceil(n_others / 2)
        ref = {g for g, c in seen.items() if c - (g in genes) >= need_in}
        if not ref:
            continue
        have = len(ref & genes)
        need = min(max(MIN_PANEL_GENES, MIN_PANEL_FRACTION * len(ref)), MAX_PANEL_SHARE * len(ref))
        if have < need:
            out[name] = (f"its {len(genes)} gene(s) cover only {have} of the {len(ref)} genes the other slides "
                         f"share (a slide must cover at least {math.ceil(need)}: max(50, 10 %)); keeping it would "
                         f"shrink every slide's gene panel to at most {have} gene(s), so it is left out of the "
                         "panel (wrong or filtered counts file?)")
    return out


def common_genes(adatas: Sequence[AnnData] | Mapping[str, AnnData]) -> pd.Index:
    """Genes present in every slide (intersection of ``var_names``), in the first slide's order.

    Accepts a list of AnnData or a ``{slide_id: AnnData}`` mapping. Raises :class:`SlideError`
    naming all slides (``slide_id`` from ``uns["senca"]`` or the position) when the intersection
    is empty, or when the list is empty, and naming the slide (field ``var_names``) when one slide covers too
    little of the panel the others share (:func:`panel_outliers`): it would collapse every slide's panel.
    """
    names, items = _named(adatas)
    if not items:
        raise SlideError("no slides given", field="var_names")
    outliers = panel_outliers(dict(zip(names, items)))
    if outliers and len(outliers) < len(items):  # all of them: the slides share (almost) nothing, said below
        name, why = next(iter(outliers.items()))
        more = f" (also: {', '.join(list(outliers)[1:])})" if len(outliers) > 1 else ""
        raise SlideError(f"{why}; remove it from the cohort{more}", slide=name, field="var_names")
    common = pd.Index(items[0].var_names)
    for a in items[1:]:
        common = common[common.isin(a.var_names)]
    common = common.unique()
    if len(common) == 0:
        sizes = ", ".join(f"{n} ({a.n_vars} genes)" for n, a in zip(names, items))
        raise SlideError(f"the slides share no gene: {sizes}", slide=",".join(names),
                         field="var_names")
    if outliers:  # every slide covers too little of what the others share
        sizes = ", ".join(f"{n} ({a.n_vars} genes)" for n, a in zip(names, items))
        raise SlideError(f"the slides share only {len(common)} gene(s), too few of any slide's genes: {sizes}",
                         slide=",".join(names), field="var_names")
    return common
