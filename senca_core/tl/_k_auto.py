"""k auto: the number of regions read from the embedding alone (no labels), for ``tl.cluster(k=None)``.

Two stopping rules on one BIC curve (k = 2 .. ``k_max``), and k is where the first of them stops:

- **the knee**: the k farthest below the chord from the first to the last BIC. On thousands of spots BIC keeps
  falling with k (real tissue has sub-structure at every scale), so its minimum is nearly always ``k_max``; the
  knee is where extra regions stop paying for themselves. It depends on where the range ends (a range that ends
  near the true k leaves no flat tail), and on the labelled sections it reads more regions than the annotations
  hold (HER2ST A1, B1, C1: 4-10 against 5, 4, 3);
- **the minimum of a penalised BIC**: BIC with ``K_PENALTY`` times its penalty per parameter. BIC counts every spot
  as an independent observation; neighbouring spots share signal (spots overlap cells, and tissue states are
  patches, not points), so the evidence for one more region is over-counted. ``K_PENALTY`` is chosen by leave one
  section out over the labelled sections (docs/BENCHMARKS.md, "k auto: the knee or a penalised BIC"). Alone it
  over-reads slides whose regions are not Gaussian in the readout (a synthetic slide with six regions: 10-15),
  where the knee finds them (6-7): hence the first of the two.
"""

from __future__ import annotations

import numpy as np

from .._threads import thread_map

#: the penalised BIC's weight on each mixture parameter, in units of BIC's own (ln n per parameter)
K_PENALTY = 1.9
#: the mixture families the curve may come from: (covariance type, ``reg_covar``). The full family regularised as
#: the cuts' own mixtures are (1e-4): unregularised, a full covariance fitted to a few dozen spots in 15 dimensions
#: is near-singular and its BIC flatters it
FAMILIES = (("diag", 1e-6), ("full", 1e-4))


def n_parameters(covariance: str, k: int, dim: int) -> int:
    """Free parameters of a k-component Gaussian mixture in ``dim`` dimensions (as scikit-learn's BIC counts)."""
    per_component = {"diag": dim, "full": dim * (dim + 1) // 2, "spherical": 1, "tied": 0}[covariance]
    shared = dim * (dim + 1) // 2 if covariance == "tied" else 0
    return k * (dim + per_component) + shared + k - 1


def bic_curve(X: np.ndarray, seed: int, ks: np.ndarray) -> tuple[str, np.ndarray]:
    """The BIC over ``ks`` of the mixture family the spots support, and that family.

    Diagonal and full covariances are both fitted, and the family whose best BIC is lower gives the curve (no
    labels): a small legacy ST section (a few hundred spots: a full covariance has 120 parameters per region at 15
    dimensions) gets the diagonal curve, a Visium section of thousands of spots the full one (docs/BENCHMARKS.md,
    "k auto on the supported mixture family").
    """
    from sklearn.mixture import GaussianMixture

    fits = [(cov, reg, int(k)) for cov, reg in FAMILIES for k in ks]  # independent: fitted side by side
    bics = thread_map(lambda f: GaussianMixture(f[2], covariance_type=f[0], reg_covar=f[1], random_state=seed)
                      .fit(X).bic(X), fits)
    curves = {cov: np.array(bics[i * len(ks):(i + 1) * len(ks)]) for i, (cov, _) in enumerate(FAMILIES)}
    family = min(curves, key=lambda cov: curves[cov].min())
    return family, curves[family]


def knee(ks: np.ndarray, bic: np.ndarray) -> int:
    """The k farthest below the chord from the first to the last point of the curve (both axes scaled to 0..1)."""
    x = (ks - ks[0]) / (ks[-1] - ks[0])
    y = (bic - bic.min()) / (np.ptp(bic) or 1.0)
    chord = y[0] + (y[-1] - y[0]) * x
    return int(ks[np.argmax(chord - y)])


def penalised_minimum(ks: np.ndarray, bic: np.ndarray, family: str, n: int, dim: int,
                      penalty: float = K_PENALTY) -> int:
    """The k minimising BIC + (``penalty`` - 1) x parameters x ln n: BIC with ``penalty`` times its penalty."""
    extra = np.array([n_parameters(family, int(k), dim) for k in ks]) * np.log(n) * (penalty - 1.0)
    return int(ks[np.argmin(bic + extra)])


def choose_k(X: np.ndarray, seed: int, k_max: int, max_spots: int = 3000, penalty: float = K_PENALTY) -> int:
    """k over 2..``k_max`` from spots ``X`` (at most ``max_spots`` of them, drawn with ``seed``): the smaller of the
    BIC curve's knee and its penalised minimum (module docstring)."""
    rng = np.random.default_rng(seed)
    if X.shape[0] > max_spots:
        X = X[rng.choice(X.shape[0], max_spots, replace=False)]
    ks = np.arange(2, k_max + 1)
    if len(ks) < 3:
        return int(ks[0])
    family, bic = bic_curve(X, seed, ks)
    return min(knee(ks, bic), penalised_minimum(ks, bic, family, X.shape[0], X.shape[1], penalty))
