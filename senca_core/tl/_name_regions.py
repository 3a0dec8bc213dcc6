"""``name_regions``: readable names, tissue labels and tumour flags for regions, from their expression profile.

Label-free: only expression is used (never ``obs["label"]``). One set of names per cohort: the input is the
region-level profile (region × gene mean log1p expression + spot counts) pooled over all slides, so a region has
the same name and colour on every slide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ..errors import ConfigError, SlideError
from ._markers import _log1p
from ._signatures import CONTEXT_ANCHORS, ENSEMBL_IDS, SIGNATURES, UNINFORMATIVE_PREFIXES

#: Columns of the table :func:`name_regions` returns (``tables/regions.csv`` of a run).
REGION_COLUMNS = ("region", "region_name", "tissue", "tissue_score", "is_tumour", "color", "n_spots", "fraction",
           "top_markers")
UNASSIGNED = "unassigned"
_SYMBOL = {i: sym for sym, i in ENSEMBL_IDS.items()}  # marker ids shown by symbol when known
_SD_FLOOR = 0.1  # log1p units: a gene whose region means differ by less is not allowed a large z


def region_colors(categories: Sequence[Any]) -> list[str]:
    """Hex colour per region id, by its position in ``categories`` (the palette of ``pl.region_map``), so a
    region keeps its colour on every slide and in every table."""
    from matplotlib.colors import to_hex

    from ..pl._region_map import _palette

    return [to_hex(c) for c in _palette(len(categories))]


def _sort_key(x: str):
    return (0, int(x), "") if str(x).lstrip("-").isdigit() else (1, 0, str(x))


def region_profile(adatas: AnnData | Sequence[AnnData], key: str = "region", *,
                   centre: bool = False) -> tuple[pd.DataFrame, pd.Series]:
    """(means, n_spots): region × gene mean of ``layers["log1p"]`` (computed when absent) pooled over the spots
    of all ``adatas`` (genes of the first slide; a gene absent from a slide counts as 0 there), and the spot
    count per region. Regions are the categories of ``obs[key]`` (all slides), NA spots left out.

    ``centre`` (off by default: on sections that are mostly tumour it hides the tumour): each slide's own mean
    of a gene is subtracted from its spots before pooling and the cohort mean added back, so a region is described
    by how it differs from the rest of ITS slide."""
    adatas = [adatas] if isinstance(adatas, AnnData) else list(adatas)
    if not adatas:
        raise ConfigError("adatas", "no slide given")
    genes = pd.Index([str(g) for g in adatas[0].var_names])
    regions: list[str] = []
    for a in adatas:
        if key not in a.obs:
            raise SlideError(f"no column {key!r} in obs", field=f"obs['{key}']")
        col = a.obs[key]
        cats = col.cat.categories if isinstance(col.dtype, pd.CategoricalDtype) else col.dropna().unique()
        regions += [str(c) for c in cats if str(c) not in regions]
    regions = sorted(regions, key=_sort_key)
    sums = np.zeros((len(regions), len(genes)))
    counts = np.zeros(len(regions))
    total, n_total = np.zeros(len(genes)), 0
    for a in adatas:
        lab = a.obs[key].astype("string")
        ok = lab.notna().to_numpy()
        code = pd.Categorical(lab[ok].astype(str), categories=regions).codes
        X = _log1p(a)[ok]
        idx = genes.get_indexer(pd.Index([str(g) for g in a.var_names]))
        keep = idx >= 0
        ind = sp.csr_matrix((np.ones(len(code)), (code, np.arange(len(code)))), shape=(len(regions), len(code)))
        part = np.asarray((ind @ X).todense() if sp.issparse(X) else ind @ X)
        n_r = np.bincount(code, minlength=len(regions)).astype(np.float64)
        col = np.asarray(X.sum(axis=0)).ravel()
        if centre and len(code):
            part = part - n_r[:, None] * (col / len(code))[None, :]
        sums[:, idx[keep]] += part[:, keep]
        total[idx[keep]] += col[keep]
        n_total += len(code)
        counts += n_r
    means = np.divide(sums, counts[:, None], out=np.zeros_like(sums), where=counts[:, None] > 0)
    if centre and n_total:
        means = means + (total / n_total)[None, :]
    return pd.DataFrame(means, index=pd.Index(regions, name=key), columns=genes), pd.Series(counts.astype(int),
                                                                                            index=regions)


def _present(genes: Sequence[str], columns) -> list[str]:
    """The upper-case columns of ``genes`` (by symbol, else by Ensembl id), each once, in order."""
    cols = set(columns)
    out = []
    for g in dict.fromkeys(str(x).upper() for x in genes):
        hit = g if g in cols else ENSEMBL_IDS.get(g) if ENSEMBL_IDS.get(g) in cols else None
        if hit is not None and hit not in out:
            out.append(hit)
    return out


def choose_context(means: pd.DataFrame, n_spots: pd.Series | None = None) -> str:
    """The signature context (``"breast"`` or ``"brain"``) whose anchor genes the cohort expresses more
    (spot-weighted mean log1p over regions; absent genes count as 0)."""
    upper = {str(g).upper(): g for g in means.columns}
    upper.update({sym: upper[i] for sym, i in ENSEMBL_IDS.items() if i in upper and sym not in upper})
    w = np.ones(len(means)) if n_spots is None else np.asarray(n_spots.reindex(means.index).fillna(0), float)
    w = w / w.sum() if w.sum() > 0 else np.full(len(means), 1.0 / max(len(means), 1))
    level = {}
    for ctx, genes in CONTEXT_ANCHORS.items():
        vals = [float(w @ means[upper[g]].to_numpy()) if g in upper else 0.0 for g in genes]
        level[ctx] = float(np.mean(vals))
    return max(level, key=lambda c: (level[c], c == "breast"))


def _zscores(means: pd.DataFrame) -> pd.DataFrame:
    """Each gene's region means standardised across regions (sd floored at ``_SD_FLOOR``)."""
    m = means.to_numpy(dtype=np.float64)
    sd = np.maximum(m.std(axis=0), _SD_FLOOR)
    return pd.DataFrame((m - m.mean(axis=0)) / sd, index=means.index,
                        columns=[str(c).upper() for c in means.columns])


def signature_scores(means: pd.DataFrame, context: str = "auto", *, min_genes: int = 2,
                     n_spots: pd.Series | None = None) -> pd.DataFrame:
    """Region × signature score: mean z (across regions) of the signature's genes present, minus the mean z of
    its contrast genes (tumour only). Genes are matched by symbol, else by Ensembl id (``ENSEMBL_IDS``).
    Signatures with fewer than ``min_genes`` genes present are left out. ``context``: ``"breast"``, ``"brain"``
    or ``"auto"`` (:func:`choose_context`)."""
    if context == "auto":
        context = choose_context(means, n_spots)
    if context not in SIGNATURES:
        raise ConfigError("context", f"unknown context {context!r}; one of {sorted(SIGNATURES)} or 'auto'")
    z = _zscores(means)
    out = {}
    for name, (_, pos, neg) in SIGNATURES[context].items():
        p = _present(pos, z.columns)
        if len(p) < min_genes:
            continue
        s = z[p].mean(axis=1)
        n = _present(neg, z.columns)
        if n:
            s = s - z[n].mean(axis=1)
        out[name] = s
    df = pd.DataFrame(out, index=means.index)
    df.attrs["context"] = context
    return df


def region_markers(means: pd.DataFrame, n_spots: pd.Series, n: int = 5) -> dict[str, list[str]]:
    """Per region the ``n`` genes whose mean log1p exceeds most that of the other regions' spots pooled
    (mitochondrial / ribosomal genes skipped); only genes higher in the region."""
    genes = np.array([str(g) for g in means.columns])
    ok = ~np.array([g.upper().startswith(UNINFORMATIVE_PREFIXES) for g in genes])
    m = means.to_numpy(dtype=np.float64)
    c = np.asarray(n_spots.reindex(means.index).fillna(0), dtype=np.float64)
    tot = (m * c[:, None]).sum(axis=0)
    out = {}
    for i, r in enumerate(means.index):
        rest = c.sum() - c[i]
        other = (tot - m[i] * c[i]) / rest if rest > 0 else np.zeros(m.shape[1])
        diff = np.where(ok, m[i] - other, -np.inf)
        order = np.argsort(-diff, kind="stable")[:n]
        out[str(r)] = [_SYMBOL.get(str(genes[j]).upper(), str(genes[j])) for j in order if diff[j] > 0]
    return out


def _table(means: pd.DataFrame, n_spots: pd.Series, context: str, min_score: float, tumour_min: float,
           n_name: int, n_top: int, min_genes: int) -> pd.DataFrame:
    regions = [str(r) for r in means.index]
    scores = signature_scores(means, context, min_genes=min_genes, n_spots=n_spots)
    labels = SIGNATURES[scores.attrs["context"]]
    markers = region_markers(means, n_spots, n=max(n_top, n_name))
    colors = region_colors(regions)
    counts = n_spots.reindex(means.index).fillna(0).astype(int).to_numpy()
    rows = []
    others = scores.drop(columns=["tumour"], errors="ignore")
    for i, r in enumerate(regions):
        key = means.index[i]
        if "tumour" in scores and float(scores.loc[key, "tumour"]) > tumour_min:
            tissue, score = labels["tumour"][0], float(scores.loc[key, "tumour"])  # tumour first: infiltrated too
        elif others.shape[1]:
            best = str(others.loc[key].idxmax())
            score = float(others.loc[key, best])
            tissue = labels[best][0] if score >= min_score else UNASSIGNED
        else:
            tissue, score = UNASSIGNED, float("nan")
        genes = markers.get(r, [])
        name = f"R{r} · {'/'.join(genes[:n_name])}" if genes else f"R{r}"
        rows.append({"region": r, "region_name": name, "tissue": tissue,
                     "tissue_score": round(score, 4) if np.isfinite(score) else np.nan,
                     "is_tumour": tissue == "tumour", "color": colors[i], "n_spots": int(counts[i]),
                     "fraction": float(counts[i] / counts.sum()) if counts.sum() else 0.0,
                     "top_markers": ", ".join(genes[:n_top])})
    df = pd.DataFrame(rows, columns=list(REGION_COLUMNS))
    df.attrs.update(context=scores.attrs["context"], min_score=float(min_score), tumour_min=float(tumour_min),
                    scores={str(k): {str(c): float(v) for c, v in row.items()} for k, row in scores.iterrows()})
    return df


def name_regions(
    data: AnnData | Sequence[AnnData] | pd.DataFrame,
    key: str = "region",
    *,
    n_spots: pd.Series | Mapping[str, int] | None = None,
    context: str = "auto",
    min_score: float = 0.5,
    tumour_min: float = 0.0,
    n_name_markers: int = 2,
    n_top_markers: int = 5,
    min_genes: int = 2,
) -> pd.DataFrame:
    """Name each region of ``obs[key]`` (one set for the whole cohort), without labels.

    ``data`` is either the region profile (DataFrame region × gene of mean log1p expression, e.g. from
    :func:`region_profile`, with ``n_spots`` per region) or one AnnData / a list of them (the profile is then
    pooled over all of them, and each gets ``obs["region_name"]`` (categorical) and ``uns["region_names"]``
    (the table as ``{column: list}``)).

    Per region: ``region_name`` = ``"R<id> · G1/G2"`` with G1, G2 its two top cohort-level marker genes (mean
    log1p in the region minus that of the other regions' spots; mitochondrial / ribosomal genes skipped);
    ``tissue`` = ``"tumour"`` when the tumour signature's score is above ``tumour_min`` (default 0: the tumour
    programme — epithelial + HER2 amplicon + proliferation — exceeds the normal-tissue programmes of stroma,
    immune, fat and the myoepithelial layer of normal ducts, relative to the cohort's regions, as in
    ``tl.tumour_like_regions``; a tumour region stays tumour however infiltrated, and size plays no part), else
    the best-scoring other signature of the context (``tl._signatures``: breast — immune, stroma, adipose,
    normal gland; brain — L1, L2/3, L4, L5, L6, white matter; ``context="auto"`` picks the context whose anchor
    genes the cohort expresses more) when its score (mean z across regions of its genes) is at least
    ``min_score``, else ``"unassigned"`` (never forced); ``tissue_score`` the score behind the label (the best
    one when unassigned); ``is_tumour`` = tissue is ``"tumour"``; ``color`` the region's colour on every map
    (:func:`region_colors`);
    ``n_spots``, ``fraction`` of the cohort's spots; ``top_markers`` = 5 top markers as ``"A, B, C"``.

    Returns a DataFrame with columns ``REGION_COLUMNS`` (one row per region, ordered by id); ``df.attrs`` holds
    ``context``, ``min_score`` and every signature score per region (``scores``).
    """
    if isinstance(data, pd.DataFrame):
        if n_spots is None:
            raise ConfigError("n_spots", "the spot count per region is needed with a profile table")
        means = data.copy()
        means.index = [str(r) for r in means.index]
        counts = pd.Series({str(k): int(v) for k, v in dict(n_spots).items()}).reindex(means.index).fillna(0)
        return _table(means, counts, context, min_score, tumour_min, n_name_markers, n_top_markers, min_genes)
    adatas = [data] if isinstance(data, AnnData) else list(data)
    means, counts = region_profile(adatas, key)
    df = _table(means, counts, context, min_score, tumour_min, n_name_markers, n_top_markers, min_genes)
    annotate_region_names(adatas, df, key)
    return df


def annotate_region_names(adatas: AnnData | Sequence[AnnData], names: pd.DataFrame, key: str = "region") -> None:
    """Write ``obs["region_name"]`` (categorical, in region order) and ``uns["region_names"]`` (``{column:
    list}``) from a :func:`name_regions` table onto each slide."""
    adatas = [adatas] if isinstance(adatas, AnnData) else list(adatas)
    mapping = dict(zip(names["region"].astype(str), names["region_name"].astype(str)))
    table = region_names_dict(names)
    for a in adatas:
        lab = a.obs[key].astype("string")
        a.obs["region_name"] = pd.Categorical(lab.map(mapping).astype(object).where(lab.notna(), None),
                                              categories=list(dict.fromkeys(mapping.values())))
        a.uns["region_names"] = table


def region_names_dict(names: pd.DataFrame) -> dict[str, list]:
    """The table as ``{column: list}`` of plain Python values (what ``uns`` and JSON can hold)."""
    out: dict[str, list] = {}
    for c in REGION_COLUMNS:
        vals = names[c].tolist()
        if c == "is_tumour":
            vals = [bool(v) for v in vals]
        elif c in ("n_spots",):
            vals = [int(v) for v in vals]
        elif c in ("tissue_score", "fraction"):
            vals = [float(v) if v is not None and np.isfinite(v) else float("nan") for v in vals]
        else:
            vals = [str(v) for v in vals]
        out[c] = vals
    return out
