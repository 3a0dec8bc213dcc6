"""Restarts of a cut: the same cut from several clustering seeds, and the one the others agree with most.

A mixture's fit depends on its clustering seed (its k-means++ starts): on the default's readouts the seed alone
moves one section's ARI by 0.03 (HER2ST A1, B1) to 0.08 (C1), and DLPFC 151673's cut at seed s is its worst of
five seeds on three of six networks. ``tl.cluster(restarts=r)`` (default 3) fits the cut (the consensus of two
HMRF-EM cuts, or one cut) with the seeds ``seed, seed + 100, ...`` and keeps the **medoid partition**: the one
whose mean adjusted Rand index to the other restarts is highest (the first on a tie), a label-free choice of the
most typical cut. With ``k=None`` the first restart reads k and the others cut at that k; the model returned is
the chosen restart's own (so ``predict`` re-assigns exactly its regions) and keeps the first restart's k auto
report. Chosen by leave one section out against one seed and five restarts (docs/BENCHMARKS.md, "Restarts of the
cut"); costs r cuts, fitted side by side on the CPUs the process may use after the first.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from anndata import AnnData

from .._threads import thread_map
from ..metrics._partition_scores import adjusted_rand_index
from ._consensus import _member_views

#: the restarts' clustering seeds: seed, seed + 100, seed + 200, ... (as measured)
SEED_STEP = 100


def restart_seeds(seed: int, restarts: int) -> list[int]:
    return [int(seed) + SEED_STEP * i for i in range(int(restarts))]


def medoid_index(partitions: Sequence[np.ndarray]) -> tuple[int, list[float]]:
    """The partition with the highest mean adjusted Rand index to the others (the first on a tie), and each
    partition's mean (``metrics``' ARI: scikit-learn's to the last bit, without importing ``sklearn.metrics``)."""
    n = len(partitions)
    if n == 1:
        return 0, [1.0]
    pair = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            pair[i, j] = pair[j, i] = adjusted_rand_index(partitions[i], partitions[j])
    means = [float((pair[i].sum() - 1.0) / (n - 1)) for i in range(n)]
    return int(np.argmax(np.round(means, 12))), means


def medoid_cut(adatas: Sequence[AnnData], fit: Callable[[int, int | None, list], object], seed: int,
               k: int | None, restarts: int, *, key_added: str):
    """``fit(seed, k, slides)`` fits one restart and writes ``obs[key_added]`` of ``slides``. The first restart runs
    on the slides (it reads k when ``k`` is None); the others at that k, side by side, each on its own stand-ins of
    the slides. The medoid restart's regions are written to the slides and its model is returned, with
    ``restarts_report`` = ``{seeds, chosen, agreement}`` (each restart's mean ARI to the others)."""
    seeds = restart_seeds(seed, restarts)

    def column(slides) -> list:
        return [a.obs[key_added].copy() for a in slides]

    first = fit(seeds[0], k, list(adatas))
    k_cut = int(first.k_requested)
    candidates = [(first, column(adatas))]

    def restart(s: int):
        views = _member_views(adatas)
        return fit(s, k_cut, views), column(views)

    candidates += thread_map(restart, seeds[1:])
    chosen, agreement = medoid_index([np.concatenate([c.astype(str).to_numpy() for c in cols])
                                      for _, cols in candidates])
    model, cols = candidates[chosen]
    if chosen:
        for a, col in zip(adatas, cols):
            a.obs[key_added] = col.values  # the restart's categorical regions, in the slide's spot order
        if k is None:  # k was read by the first restart: its report stays the model's
            _carry_k_auto(first, model)
    model.restarts_report = {"seeds": seeds, "chosen": chosen, "agreement": [round(x, 4) for x in agreement]}
    return model


def _carry_k_auto(source, target) -> None:
    report = source.k_auto
    holder = target.members[0] if hasattr(target, "members") else target
    holder.k_auto = report
