"""k auto: the number of regions read from the embedding alone (no labels), for ``tl.cluster(k=None)``.

Two stopping rules on one BIC curve (k = 2 .. ``k_max``), and k is where the first of them stops:

- **the knee**: the k farthest below the chord from the first to the last BIC. On thousands of spots BIC keeps
  falling with k (real tissue has sub-structure at every scale), so its minimum is nearly always ``k_max``; the
  knee is where extra regions stop paying for themselves. It depends on where the range ends (a range that ends
  near the true k leaves no flat tail), and on the labelled sections it reads more regions than the annotations
  hold (HER2ST A1, B1, C1: 4-10 against 5, 4, 3);
- **the minimum of a penalised BIC**: BIC with c times its penalty per parameter. BIC counts every spot as an
  independent observation; neighbouring spots share signal (spots overlap cells, tissue states are patches, not
  points), so it over-counts the evidence for one more region. c is that over-count, measured on the slide
  (:func:`design_effect`): the spatial autocorrelation left within the knee's regions, read as the variance
  inflation of a mean of correlated observations. No constant is tuned: on the labelled sections c comes out at
  1.3-2.0 on HER2ST and 2.2-2.3 on DLPFC 151673, where a constant c chosen by leave one section out says 1.5-1.9
  (docs/BENCHMARKS.md, "k auto: the knee or a penalised BIC"). Synthetic slides draw their spots independently
  within a region: c is about 1 and the knee decides (plain BIC over-reads them: 10-15 for six regions).

Spots without neighbours (no ``obsm["spatial_neighbors"]``) give c = 1.
"""

from __future__ import annotations

import numpy as np

from .._threads import thread_map

#: the largest Moran's I :func:`design_effect` reads (c at most 3; real sections measure 1.3-2.3): a within-region
#: field smooth enough to give c = 13 would otherwise refuse three well-separated regions (tests/test_k_auto.py)
MAX_MORAN = 0.5
#: the mixture families the curve may come from: (covariance type, ``reg_covar``). The full family regularised as
#: the cuts' own mixtures are (1e-4): unregularised, a full covariance fitted to a few dozen spots in 15 dimensions
#: is near-singular and its BIC flatters it
FAMILIES = (("diag", 1e-6), ("full", 1e-4))


def n_parameters(covariance: str, k: int, dim: int) -> int:
    """Free parameters of a k-component Gaussian mixture in ``dim`` dimensions (as scikit-learn's BIC counts)."""
    per_component = {"diag": dim, "full": dim * (dim + 1) // 2, "spherical": 1, "tied": 0}[covariance]
    shared = dim * (dim + 1) // 2 if covariance == "tied" else 0
    return k * (dim + per_component) + shared + k - 1


def bic_curve(X: np.ndarray, seed: int, ks: np.ndarray) -> tuple[str, np.ndarray, list]:
    """The BIC over ``ks`` of the mixture family the spots support, that family, and its fitted mixtures.

    Diagonal and full covariances are both fitted, and the family whose best BIC is lower gives the curve (no
    labels): a small legacy ST section (a few hundred spots: a full covariance has 120 parameters per region at 15
    dimensions) gets the diagonal curve, a Visium section of thousands of spots the full one (docs/BENCHMARKS.md,
    "k auto on the supported mixture family").
    """
    from sklearn.mixture import GaussianMixture

    fits = [(cov, reg, int(k)) for cov, reg in FAMILIES for k in ks]  # independent: fitted side by side
    models = thread_map(lambda f: GaussianMixture(f[2], covariance_type=f[0], reg_covar=f[1], random_state=seed)
                        .fit(X), fits)
    bics = [m.bic(X) for m in models]
    curves = {cov: np.array(bics[i * len(ks):(i + 1) * len(ks)]) for i, (cov, _) in enumerate(FAMILIES)}
    family = min(curves, key=lambda cov: curves[cov].min())
    start = [cov for cov, _ in FAMILIES].index(family) * len(ks)
    return family, curves[family], models[start:start + len(ks)]


def knee(ks: np.ndarray, bic: np.ndarray) -> int:
    """The k farthest below the chord from the first to the last point of the curve (both axes scaled to 0..1)."""
    x = (ks - ks[0]) / (ks[-1] - ks[0])
    y = (bic - bic.min()) / (np.ptp(bic) or 1.0)
    chord = y[0] + (y[-1] - y[0]) * x
    return int(ks[np.argmax(chord - y)])


def penalised_minimum(ks: np.ndarray, bic: np.ndarray, family: str, n: int, dim: int, penalty: float) -> int:
    """The k minimising BIC + (``penalty`` - 1) x parameters x ln n: BIC with ``penalty`` times its penalty."""
    extra = np.array([n_parameters(family, int(k), dim) for k in ks]) * np.log(n) * (penalty - 1.0)
    return int(ks[np.argmin(bic + extra)])


def neighbour_edges(neighbors: list[np.ndarray | None], sizes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Pooled (spot, neighbour) index pairs from each slide's ``obsm["spatial_neighbors"]`` (column 0 the spot
    itself; None: a slide without neighbours), offset by the ``sizes`` (spots) of the slides before it."""
    rows, cols, start = [np.zeros(0, int)], [np.zeros(0, int)], 0
    for nb, size in zip(neighbors, sizes):
        if nb is not None:
            nb = np.asarray(nb)
            r = np.repeat(np.arange(nb.shape[0]), nb.shape[1] - 1)
            c = nb[:, 1:].ravel()
            keep = (c >= 0) & (c != r)
            rows.append(r[keep] + start)
            cols.append(c[keep] + start)
        start += size
    return np.concatenate(rows), np.concatenate(cols)


def design_effect(X: np.ndarray, centres: np.ndarray, edges: tuple[np.ndarray, np.ndarray]) -> float:
    """How many times BIC over-counts the spots: (1 + I) / (1 - I), I the mean over dimensions of Moran's I of the
    residuals ``X - centres`` (each spot minus its region's mean) across neighbouring spots (``edges``).

    (1 + I) / (1 - I) is the variance inflation of a mean of observations whose neighbours correlate at I (a first-
    order autoregressive series): a first-order reading of the slide's spatial autocorrelation, at least 1.
    """
    rows, cols = edges
    if len(rows) == 0:
        return 1.0
    R = X - centres
    R = R - R.mean(0)
    var = (R ** 2).mean(0)
    keep = var > 1e-12 * max(var.max(), 1e-300)
    if not keep.any():
        return 1.0
    R = R[:, keep] / np.sqrt(var[keep])
    moran = float(np.mean((R[rows] * R[cols]).mean(0)))
    moran = min(max(moran, 0.0), MAX_MORAN)
    return (1.0 + moran) / (1.0 - moran)


def curve_sample(X: np.ndarray, seed: int, max_spots: int = 3000) -> np.ndarray:
    """The spots the BIC curve is fitted on: all of them, or ``max_spots`` drawn with ``seed``."""
    if X.shape[0] <= max_spots:
        return X
    return X[np.random.default_rng(seed).choice(X.shape[0], max_spots, replace=False)]


def choose_k(X: np.ndarray, seed: int, k_max: int, max_spots: int = 3000,
             edges: tuple[np.ndarray, np.ndarray] | None = None, report: dict | None = None) -> int:
    """k over 2..``k_max`` from spots ``X`` (the curve fitted on at most ``max_spots`` of them, drawn with ``seed``):
    the smaller of the BIC curve's knee and its minimum with :func:`design_effect` times the penalty (module
    docstring). ``edges``: (spot, neighbour) pairs over the rows of ``X`` (:func:`neighbour_edges`); None: c = 1.
    ``report`` (a dict) receives ``k``, ``knee``, ``penalised`` (the penalised minimum), ``design_effect``,
    ``family`` (the mixtures' covariance) and ``k_max``."""
    sample = curve_sample(X, seed, max_spots)
    ks = np.arange(2, k_max + 1)
    if len(ks) < 3:  # too few spots for a curve
        if report is not None:
            report.update(k=int(ks[0]), knee=None, penalised=None, design_effect=None, family=None, k_max=int(k_max))
        return int(ks[0])
    family, bic, models = bic_curve(sample, seed, ks)
    k_knee = knee(ks, bic)
    c = 1.0
    if edges is not None and len(edges[0]):
        mixture = models[list(ks).index(k_knee)]
        c = design_effect(X, mixture.means_[mixture.predict(X)], edges)
    k_penalised = penalised_minimum(ks, bic, family, sample.shape[0], sample.shape[1], c)
    if report is not None:
        report.update(k=min(k_knee, k_penalised), knee=k_knee, penalised=k_penalised, design_effect=float(c),
                      family=family, k_max=int(k_max))
    return min(k_knee, k_penalised)
