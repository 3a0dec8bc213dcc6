"""Consensus regions: the one partition a family of GMM cuts of the same embedding agrees on (the default cut).

Which single cut of an embedding finds the annotated regions differs from section to section and from one
clustering seed to the next, so the regions are the partition a small family of cuts agrees on
(``member_settings``): the full-covariance GMM on 1x and ⅔x ``n_pcs`` components (15 and 10 by default), each
re-estimated for 10 rounds under the spatial prior (HMRF-EM), both with the same spatial prior and refinement.
Chosen by leave one section out over fourteen single cuts and families (docs/BENCHMARKS.md, "The consensus of two
HMRF-EM cuts"): on the default's readouts, two clustering seeds each, HER2ST A1 0.460 -> 0.467, B1 0.419 ->
0.420, C1 0.279 -> 0.466, DLPFC 151673 0.499 -> 0.545 against the family it replaced (the same GMM plain and
with HMRF-EM on ⅔x, 1x and 2x, six cuts). The plain cuts lost to their HMRF-EM twins on all 12 section and
size pairs (A1 on 30 components by 0.003), and the 2x member was the worst cut on three sections. HMRF-EM
costs a synthetic slide with ground truth 0.816 -> 0.772 (it rounds regions a plain mixture already gets right);
real sections decide. Tied covariance (mclust's EEE) was a member once and was dropped by measurement: on the
pooled HER2ST cohort it put every spot of the smallest slide into one region (C1 0.28 ± 0.26 with it, 0.40 ± 0.12
without).

Each spot gets a tuple of member region ids. Tuples held by enough spots are merged by average linkage on the
Hamming distance between tuples, weighted by how many spots hold each (exactly UPGMA over the spots themselves,
since identical tuples are at distance 0), down to k groups; a rare tuple joins the group whose members' ids it
matches best. The consensus is refined spatially like any cut. Cost: two GMM fits plus their HMRF-EM rounds, and
a linkage over at most ``max_items`` distinct tuples; after the first member (which chooses k) the others run
side by side on the CPUs the process may use.

:class:`ConsensusRegionModel` keeps the members and the tuple table, so a new slide gets the same region ids and
the training slides get exactly their regions back.

An ensemble's readout (``SencaConfig.n_models`` networks side by side, ``readout_blocks``): each network's block gets
its own consensus of the family, and the regions are the consensus of those (the same linkage over the tuples of
the networks' region ids). Against one consensus over all the networks' cuts at once (docs/BENCHMARKS.md, "An
ensemble of three networks", measured with the six-cut family): on three separately trained networks that one
outvoted C1's rarer regions (0.245 against 0.299); trained side by side the two are close (C1 0.232 / 0.246, A1 sd
0.025 / 0.013).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from ..errors import ConfigError
from ._labels import refine_labels, write_regions
from .._threads import thread_map

#: HMRF-EM rounds of the members that re-estimate the mixture under the prior
EM_ROUNDS = 10


def member_settings(n_pcs: int | None) -> list[dict]:
    """The family of cuts (``tl.cluster`` keywords): HMRF-EM cuts on ``n_pcs`` and ⅔ ``n_pcs`` components (one
    cut without a PCA, ``n_pcs`` None). The first is the cut at ``n_pcs`` (it chooses k when k is not given)."""
    smaller = None if n_pcs is None else max(2, round(n_pcs * 2 / 3))
    dims = [n_pcs] if smaller in (None, n_pcs) else [n_pcs, smaller]
    return [{"covariance": "full", "n_pcs": d, "prior_em_rounds": EM_ROUNDS} for d in dims]


def readout_blocks(adatas: Sequence[AnnData], use_rep: str, blocks: int | None) -> int:
    """How many equal blocks ``obsm[use_rep]`` has (an ensemble's readout: one per network, ``model._ensemble``):
    ``blocks`` when given, else the slides' ``uns["senca"]["readout_blocks"][use_rep]`` (written with the readout;
    1 when absent: any other representation is one block)."""
    if blocks is None:
        found = {int(dict(a.uns.get("senca", {}).get("readout_blocks", {})).get(use_rep, 1)) for a in adatas}
        if len(found) > 1:
            raise ConfigError("readout_blocks", f"the slides' readouts come from different models ({sorted(found)} "
                                                "networks): cluster slides read out by one model")
        blocks = found.pop()
    width = np.asarray(adatas[0].obsm[use_rep]).shape[1] if use_rep in adatas[0].obsm else 0
    if not isinstance(blocks, (int, np.integer)) or blocks < 1 or (width and width % blocks):
        raise ConfigError("blocks", f"the readout's {width} columns do not split into {blocks!r} equal blocks")
    return int(blocks)


def block_settings(blocks: int, width: int) -> list[dict]:
    """One setting per block of a ``width``-column readout (``_columns``: the block's column range)."""
    step = width // blocks
    return [{"_columns": (b * step, (b + 1) * step)} for b in range(blocks)]


def average_linkage(dist: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """Average-linkage (UPGMA) groups 0..k-1 of ``m`` items, item ``i`` standing for ``weights[i]`` identical
    points: two groups merge at the mean distance over all their points' pairs (Lance-Williams update)."""
    m = len(weights)
    D = np.array(dist, dtype=np.float64)
    np.fill_diagonal(D, np.inf)
    size = np.asarray(weights, dtype=np.float64).copy()
    group = np.arange(m)
    for _ in range(max(m - k, 0)):
        i, j = np.unravel_index(np.argmin(D), D.shape)
        i, j = min(i, j), max(i, j)
        merged = (size[i] * D[i] + size[j] * D[j]) / (size[i] + size[j])
        D[i, :] = merged
        D[:, i] = merged
        D[i, i] = np.inf
        D[j, :] = np.inf
        D[:, j] = np.inf
        size[i] += size[j]
        group[group == j] = i
    return np.unique(group, return_inverse=True)[1]


class ConsensusRegionModel:
    """The consensus of several :class:`~senca_core.tl.RegionModel` cuts; same interface (``k``, ``labels``,
    ``predict``). ``members`` are the fitted cuts, ``tuples``/``tuple_groups`` the training spots' member-id
    tuples and their consensus group, ``profiles[m]`` (groups, ids of member m) how often each group's spots
    carry each id of member m, ``remap`` the consensus group -> size-ordered region id."""

    method = "gmm"

    def __init__(self, members: Sequence, tuples: np.ndarray, tuple_groups: np.ndarray, profiles: list,
                 remap: dict, k: int, k_requested: int, refine: bool, use_rep: str) -> None:
        self.members, self.tuples, self.tuple_groups, self.profiles = list(members), tuples, tuple_groups, profiles
        self.remap, self.k, self.k_requested = remap, int(k), int(k_requested)
        self.refine, self.use_rep = bool(refine), use_rep
        self._table = None

    @property
    def spatial_prior(self) -> float:
        return float(self.members[0].spatial_prior)

    @property
    def k_auto(self) -> dict | None:
        """How the first member read k when it was not given (``RegionModel.k_auto``), else None."""
        return self.members[0].k_auto

    @property
    def aligner(self):
        """The first member's slide aligner (every member aligns the slides on its own cut)."""
        return self.members[0].aligner

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_table"] = None
        return state

    def groups(self, L: np.ndarray) -> np.ndarray:
        """Consensus group of each row of member ids ``L`` (n, members): a training tuple's own group, any other
        tuple the group whose spots' member ids it matches best."""
        if self._table is None:
            self._table = {tuple(t): int(g) for t, g in zip(self.tuples.tolist(), self.tuple_groups.tolist())}
        out = np.array([self._table.get(tuple(row), -1) for row in L.tolist()], dtype=int)
        unseen = out < 0
        if unseen.any():
            out[unseen] = _best_group(L[unseen], self.profiles)
        return out

    def labels(self, X: np.ndarray, neighbors: np.ndarray | None = None) -> np.ndarray:
        """Region ids (ints) of one slide's readout ``X``, refined over ``neighbors`` like at fit time."""
        L = np.stack([m.labels(X, neighbors) for m in self.members], axis=1)
        raw = self.groups(L)
        if self.refine and neighbors is not None:
            raw = refine_labels(raw, np.asarray(neighbors))
        known = np.asarray(sorted(self.remap), dtype=int)
        lost = ~np.isin(raw, known)  # a group the training refinement emptied: the best group still in use
        if lost.any():
            scores = _group_scores(L[lost], self.profiles)[:, known]
            raw[lost] = known[scores.argmax(1)]
        return np.array([self.remap[int(g)] for g in raw], dtype=int)

    def predict(self, adata: AnnData) -> np.ndarray:
        """Region ids (ints) of one slide, refined like at fit time."""
        X = np.asarray(adata.obsm[self.use_rep], dtype=np.float64)
        return self.labels(X, adata.obsm.get("spatial_neighbors"))


def _group_scores(L: np.ndarray, profiles: list) -> np.ndarray:
    """(n, groups): summed over members, the share of each group's spots carrying the row's member id."""
    scores = np.zeros((L.shape[0], profiles[0].shape[0]))
    for m, P in enumerate(profiles):
        ids = L[:, m]
        ok = (ids >= 0) & (ids < P.shape[1])
        scores[ok] += P[:, ids[ok]].T
    return scores


def _best_group(L: np.ndarray, profiles: list) -> np.ndarray:
    return _group_scores(L, profiles).argmax(1)


def _member_views(adatas: Sequence[AnnData]) -> list[AnnData]:
    """Stand-ins for the slides that a member fitted in its own thread reads from and writes its regions into:
    the same ``obsm`` arrays and ``uns`` (not copied), an ``obs`` of its own."""
    return [AnnData(obs=pd.DataFrame(index=a.obs_names.copy()), obsm=dict(a.obsm), uns=a.uns) for a in adatas]


def _fit_groups(settings: list) -> list[list[int]]:
    """Member indices grouped so that members sharing one mixture fit (a cut and its HMRF-EM twin: the same
    settings but ``prior_em_rounds``) run one after the other, the twin reusing the fit; groups are independent."""
    groups: dict = {}
    for i, setting in enumerate(settings):
        key = tuple(sorted((name, repr(value)) for name, value in setting.items() if name != "prior_em_rounds"))
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def consensus_cut(adatas: Sequence[AnnData], fit_member: Callable[[dict, int | None, list], object],
                  settings: list, k: int | None, *, refine: bool, key_added: str, use_rep: str,
                  max_items: int = 1000) -> ConsensusRegionModel:
    """Fit every member (``fit_member(setting, k, slides)`` returns a fitted cut and writes ``obs[key_added]`` of
    ``slides``), then the consensus; writes the consensus regions to ``obs[key_added]`` of every slide and returns
    its model. The first member runs first (it chooses k when it was not given); the others are independent of
    each other and are fitted side by side (``_threads.thread_map``), each on its own stand-ins of the slides, so
    the members and the regions are those of fitting them one after the other."""
    def labels(slides) -> np.ndarray:
        return np.concatenate([a.obs[key_added].astype(int).to_numpy() for a in slides])

    first = fit_member(settings[0], k, list(adatas))
    k = int(first.k_requested)
    members, columns = [first] + [None] * (len(settings) - 1), [labels(adatas)] + [None] * (len(settings) - 1)

    def fit_group(indices: list[int]) -> list[tuple[int, object, np.ndarray]]:
        views = _member_views(adatas)
        return [(i, fit_member(settings[i], k, views), labels(views)) for i in indices]

    rest = [[i for i in group if i > 0] for group in _fit_groups(settings)]
    for done in thread_map(fit_group, [group for group in rest if group]):
        for i, member, column in done:
            members[i], columns[i] = member, column
    L = np.stack(columns, axis=1)
    tuples, inverse, counts = np.unique(L, axis=0, return_inverse=True, return_counts=True)
    inverse = np.asarray(inverse).reshape(-1)
    order = np.argsort(-counts, kind="stable")[:max_items]
    frequent = order[counts[order] >= max(2, int(np.ceil(1e-3 * L.shape[0])))]
    items = frequent if len(frequent) >= k else order[:k]
    T = tuples[items]
    item_groups = average_linkage((T[:, None, :] != T[None, :, :]).mean(-1), counts[items], min(k, len(items)))
    n_groups = int(item_groups.max()) + 1
    profiles = []
    for m in range(L.shape[1]):
        P = np.zeros((n_groups, int(L[:, m].max()) + 1))
        np.add.at(P, (item_groups, T[:, m]), counts[items])
        profiles.append(P / np.maximum(P.sum(1, keepdims=True), 1.0))
    tuple_groups = np.full(len(tuples), -1)
    tuple_groups[items] = item_groups
    rest = tuple_groups < 0
    if rest.any():
        tuple_groups[rest] = _best_group(tuples[rest], profiles)
    remap, categories = write_regions(adatas, tuple_groups[inverse], refine=refine, key_added=key_added)
    return ConsensusRegionModel(members, tuples, tuple_groups, profiles, remap, len(categories), k, refine, use_rep)
