"""Regions cut slide by slide, then matched across the cohort (``tl.cluster(..., cut_by="slide")``).

A pooled cut of several patients' slides can find the patients instead of the tissue: on six HER2ST sections of
three patients every pooled region was one patient's, and all three sections of patient C were one region (C1
ARI 0; docs/BENCHMARKS.md, "Six HER2ST sections"). Aligning the slides before pooling (``align``) does not undo
it. Cut one slide at a time, the same embedding keeps each section's regions.

So each slide is cut on its own (the same ``tl.cluster`` settings, k chosen per slide when it is not given), and
the slides' regions are matched into one set of cohort region ids:

1. every slide region is summarised by its centroid in the embedding; the reference types start as the regions of
   the slide with the most regions (ties: the most spots);
2. each slide is placed against the types by one translation (its offset, as in
   :class:`~senca_core.tl._align.SlideAligner`: the spot-weighted mean of its regions' centroid minus their matched
   type, alternating with the matching until the matching stops changing) and its regions are matched one-to-one
   to the types by the Hungarian algorithm on squared distance; a pair stands only when the region is closer to
   its type than that type is to any other type, and a region left unmatched (more regions than types, or a
   tissue state no other slide has) opens a new type;
3. the types are re-estimated as the spot-weighted mean of their matched (translated) centroids; steps 2-3 repeat.

One-to-one matching keeps every slide's own regions apart (two regions of one slide never share an id); ids are
ordered by cohort size. A slide too small to be cut alone (:func:`big_enough`) takes the nearest type spot by
spot. A new slide (``labels``) is cut alone with the same settings and matched to the fixed types (a region left
unmatched takes its nearest type; no new id after the fit). A training slide gets exactly its regions back
(looked up by the fingerprint of its embedding).
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

#: rounds of (match every slide, re-estimate the types) and of (offset, match) per slide
ROUNDS = 5
#: a slide is cut alone when it has at least this many spots and 3 per region asked for; a smaller slide's spots
#: take their nearest cohort region instead (its own cut would be noise, or impossible: fewer spots than k)
MIN_SPOTS = 20


def big_enough(n_spots: int, k: int | None) -> bool:
    """Whether a slide of ``n_spots`` is cut alone (see :data:`MIN_SPOTS`)."""
    per_region = int(k) if isinstance(k, (int, np.integer)) and k > 0 else 0
    return n_spots >= max(MIN_SPOTS, 3 * per_region)


def _nearest_types(X: np.ndarray, types: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """Each spot's nearest type after moving the slide's mean onto the types' spot-weighted mean (a slide too
    small to be cut alone)."""
    Y = X - X.mean(0) + (mass[:, None] * types).sum(0) / mass.sum()
    return (((Y[:, None, :] - types[None]) ** 2).sum(-1)).argmin(1)


def fingerprint(X: np.ndarray) -> str:
    """A slide's embedding, as the key its training regions are kept under."""
    X = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
    return hashlib.sha1(X.tobytes() + str(X.shape).encode()).hexdigest()


def _centroids(X: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(region ids present, their centroids, their spot counts)."""
    ids, counts = np.unique(labels, return_counts=True)
    return ids, np.stack([X[labels == r].mean(0) for r in ids]), counts.astype(np.float64)


def _place(C: np.ndarray, w: np.ndarray, types: np.ndarray, *, grow: bool) -> tuple[np.ndarray, np.ndarray]:
    """(type of each region, the slide's offset). The offset settles first: alternately the Hungarian matching at
    the current offset and the offset from that matching. Then a matched pair stands only when the region is
    closer to its type than that type is to any other type; a region left out gets -1 (``grow``: a new type) or
    its nearest type."""
    from scipy.optimize import linear_sum_assignment  # here: scipy.optimize (0.09 s) stays out of every worker

    offset = (w[:, None] * C).sum(0) / w.sum() - types.mean(0)
    previous = None
    for _ in range(ROUNDS):
        Y = C - offset
        rows, cols = linear_sum_assignment(((Y[:, None, :] - types[None]) ** 2).sum(-1))
        offset = offset + (w[rows, None] * (Y[rows] - types[cols])).sum(0) / w[rows].sum()
        if previous is not None and np.array_equal(cols, previous):
            break
        previous = cols
    cost = (((C - offset)[:, None, :] - types[None]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    gap = ((types[:, None, :] - types[None]) ** 2).sum(-1)
    np.fill_diagonal(gap, np.inf)
    keep = cost[rows, cols] <= gap.min(1)[cols]
    match = np.full(len(C), -1)
    match[rows[keep]] = cols[keep]
    if not grow:
        left = match < 0
        match[left] = cost[left].argmin(1)
    return match, offset


def match_regions(centroids: Sequence[np.ndarray],
                  weights: Sequence[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """The cohort type of each slide's regions (one array per slide, in the order of its centroids) and the
    types' centroids (see the module docstring)."""
    ref = max(range(len(centroids)), key=lambda s: (len(centroids[s]), weights[s].sum()))
    types = centroids[ref] - (weights[ref][:, None] * centroids[ref]).sum(0) / weights[ref].sum()
    matches: list[np.ndarray] = []
    for _ in range(ROUNDS):
        matches, placed = [], []
        for C, w in zip(centroids, weights):
            match, offset = _place(C, w, types, grow=True)
            for i in np.flatnonzero(match < 0):  # more regions than types: each extra region a type of its own
                types = np.vstack([types, C[i] - offset])
                match[i] = len(types) - 1
            matches.append(match)
            placed.append((C - offset, w, match))
        sums, mass = np.zeros_like(types), np.zeros(len(types))
        for Y, w, match in placed:
            np.add.at(sums, match, w[:, None] * Y)
            np.add.at(mass, match, w)
        new_types = np.where(mass[:, None] > 0, sums / np.maximum(mass, 1e-12)[:, None], types)
        if np.allclose(new_types, types):
            break
        types = new_types
    return matches, types


class PerSlideRegionModel:
    """Regions cut slide by slide and matched across the cohort; the interface of
    :class:`~senca_core.tl.RegionModel` (``k``, ``k_requested``, ``labels``, ``predict``, ``refine``,
    ``method``). ``settings``: the ``tl.cluster`` keywords each slide is cut with (a new slide too); ``types``
    the cohort regions' centroids, row ``i`` region ``i``; ``mass`` their training spots; ``known`` the training
    slides' fingerprints -> their region ids; ``k_auto`` (k read from the data) how each slide read its k:
    ``{"k": cohort regions, "slides": {slide id: that slide's report (``RegionModel.k_auto``)}}``, else None;
    ``restarts_report`` each slide's restarts (``{"slides": {slide id: tl._restarts' report}}``), else None;
    ``known_ids`` the fingerprints of the training slides cut alone -> their slide ids (the keys of the reports)."""

    def __init__(self, settings: dict[str, Any], types: np.ndarray, mass: np.ndarray, known: dict,
                 use_rep: str, k_auto: dict | None = None, restarts_report: dict | None = None,
                 known_ids: dict | None = None) -> None:
        self.settings, self.types, self.known, self.k_auto = dict(settings), types, known, k_auto
        self.restarts_report, self.known_ids = restarts_report, dict(known_ids or {})
        self.mass = np.asarray(mass, dtype=np.float64)
        self.k = self.k_requested = len(types)
        self.method, self.refine, self.use_rep = settings["method"], bool(settings["refine"]), use_rep

    def cut_slide(self, X: np.ndarray, neighbors: np.ndarray | None) -> tuple[np.ndarray, dict | None]:
        """(local region ids, its restarts report or None) of one slide cut alone with the fit's settings."""
        import scipy.sparse as sp

        from ._cluster import cluster

        slim = AnnData(X=sp.csr_matrix((X.shape[0], 0), dtype=np.float32))
        slim.obsm[self.use_rep] = X
        if neighbors is not None:
            slim.obsm["spatial_neighbors"] = np.asarray(neighbors)
        settings = {"restarts": 1, **self.settings}  # a model saved before restarts: its one-seed cut
        model = cluster(slim, use_rep=self.use_rep, key_added="region", return_model=True, **settings)
        return slim.obs["region"].astype(int).to_numpy(), getattr(model, "restarts_report", None)

    def labels(self, X: np.ndarray, neighbors: np.ndarray | None = None) -> np.ndarray:
        """Cohort region ids of one slide's readout ``X``: a training slide's own regions, another slide cut alone
        and matched to the cohort's regions (a small one: spot by spot)."""
        return self.labels_report(X, neighbors)[0]

    def labels_report(self, X: np.ndarray,
                      neighbors: np.ndarray | None = None) -> tuple[np.ndarray, dict | None]:
        """(:meth:`labels`, the restarts report of the slide's own cut: ``{seeds, chosen, agreement}``, as at fit
        time). The report is the fit's for a training slide (None when the fit kept none) and None for a slide too
        small to be cut alone."""
        X = np.asarray(X, dtype=np.float64)
        key = fingerprint(X)
        if key in self.known:
            return self.known[key].copy(), self._known_report(key)
        if not big_enough(X.shape[0], self.settings.get("k")):
            return _nearest_types(X, self.types, self.mass), None
        local, report = self.cut_slide(X, neighbors)
        local = np.asarray(local, dtype=int)
        ids, C, w = _centroids(X, local)
        match, _ = _place(C, w, self.types, grow=False)
        return match[np.searchsorted(ids, local)], report

    def _known_report(self, key: str) -> dict | None:
        """A training slide's restarts report, found by its fingerprint's slide id (None: not kept)."""
        slides = (getattr(self, "restarts_report", None) or {}).get("slides") or {}
        sid = (getattr(self, "known_ids", None) or {}).get(key)
        return slides.get(sid) if sid is not None else None

    def predict(self, adata: AnnData) -> np.ndarray:
        """Cohort region ids of one slide."""
        return self.labels(np.asarray(adata.obsm[self.use_rep], dtype=np.float64), adata.obsm.get("spatial_neighbors"))


def per_slide_cut(adatas: Sequence[AnnData], cut: Callable[[AnnData], object], settings: dict[str, Any], *,
                  key_added: str, use_rep: str) -> PerSlideRegionModel:
    """Cut each slide with ``cut(adata)`` (regions in ``obs[key_added]``, returns its region model; ``settings``
    the ``tl.cluster`` keywords it used), match the regions across slides, write the cohort ids to
    ``obs[key_added]`` and return the model (``k`` and ``k_requested``: the cohort's regions; ``k_auto`` and
    ``restarts_report``: each slide's reports). A slide too small to be cut alone (:func:`big_enough`; at least
    one slide must be big enough) takes the nearest cohort region spot by spot."""
    big = [a for a in adatas if big_enough(a.n_obs, settings.get("k"))]
    centroids, weights, locals_, reports, restarts, sids = [], [], [], {}, {}, {}
    for i, a in enumerate(big):
        model = cut(a)
        sid = sids[id(a)] = str(a.uns.get("senca", {}).get("slide_id", i))
        if getattr(model, "k_auto", None):
            reports[sid] = model.k_auto
        if getattr(model, "restarts_report", None):
            restarts[sid] = model.restarts_report
        local = a.obs[key_added].astype(int).to_numpy()
        ids, C, w = _centroids(np.asarray(a.obsm[use_rep], dtype=np.float64), local)
        locals_.append((local, ids))
        centroids.append(C)
        weights.append(w)
    matches, types = match_regions(centroids, weights)
    labels = {id(a): match[np.searchsorted(ids, local)] for a, (local, ids), match in zip(big, locals_, matches)}
    mass = np.zeros(len(types))
    for lab in labels.values():
        np.add.at(mass, lab, 1.0)
    used = np.flatnonzero(mass > 0)  # a type the last round left without a region is no region
    for a in adatas:
        if id(a) not in labels:
            X = np.asarray(a.obsm[use_rep], dtype=np.float64)
            labels[id(a)] = used[_nearest_types(X, types[used], mass[used])]
            np.add.at(mass, labels[id(a)], 1.0)
    order = np.lexsort((np.arange(len(types)), -mass))
    order = order[mass[order] > 0]  # region i is type order[i]: ids by cohort size
    region_of = np.full(len(types), -1)
    region_of[order] = np.arange(len(order))
    categories = [str(i) for i in range(len(order))]
    known, known_ids = {}, {}
    for a in adatas:
        cohort = region_of[labels[id(a)]]
        a.obs[key_added] = pd.Categorical(cohort.astype(str), categories=categories)
        key = fingerprint(np.asarray(a.obsm[use_rep], dtype=np.float64))
        known[key] = cohort
        if id(a) in sids:  # a slide cut alone: its reports are under this id
            known_ids[key] = sids[id(a)]
    k_auto = {"k": len(order), "slides": reports} if reports else None
    return PerSlideRegionModel(settings, types[order], mass[order], known, use_rep, k_auto,
                               {"slides": restarts} if restarts else None, known_ids)
