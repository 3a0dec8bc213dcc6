"""Slide alignment before pooled clustering: remove each slide's offset (``"centre"`` or ``"matched"``).

Slides of different patients (and batches) sit at different offsets in any expression-derived space: pooled
clustering then finds "patient A's tissue" rather than "tumour" or "stroma", and over-splits the tissue of each
slide among patient-specific regions. A plain per-slide centring fixes the offset only when every slide has the
same composition (a slide that is 90 % tumour is centred on its tumour). :class:`SlideAligner` estimates each
slide's offset *within matched regions*: a reference Gaussian mixture on the pooled, aligned spots gives soft
region memberships; a slide's offset is the membership-weighted mean of (its region centroid - the cohort's region
centroid); the slide is shifted by it, and this repeats. Composition differences do not move the estimate (each
region is compared with itself), offsets shared by a region in every slide are kept.

Two methods: ``"centre"`` (subtract the slide's mean) and ``"matched"`` (the region-matched offset above).
Measured (docs/BENCHMARKS.md, pooled k=6, 5 trainings): HER2ST A1/B1/C1 ARI none 0.276/0.322/0.233, centre
0.536/0.324/0.228, matched 0.509/0.325/0.243; synthetic cohort (4 patients, 2 seeds) none 0.712, centre 0.765,
matched 0.691; the cohort pipeline's HER2ST run (24 epochs) none 0.589/0.313/0.023, centre 0.261/0.359/0.152,
matched 0.272/0.348/0.194 (pooled baseline 0.237/0.293/0.157). Real sections decide: ``"matched"`` (more stable
on the small section C1, and not pulled by composition) is the default of :func:`~senca_core.tl.cluster`.

One translation per slide (never per spot): distances within a slide, and so its regions' shapes, are unchanged.
A fitted aligner aligns a new slide the same way (``transform``) against the fixed reference, and gives the
training slides exactly the vectors that were clustered.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


class SlideAligner:
    """Per-slide translation onto a cohort reference (see the module docstring).

    ``fit_transform(blocks)`` takes one (n_s, d) array per slide and returns them aligned; ``transform(X)`` aligns
    one more slide. ``n_iter`` outer rounds (reference refits), ``inner`` offset updates per slide and round.
    """

    METHODS = ("centre", "matched")

    def __init__(self, k: int, *, method: str = "centre", n_pcs: int | None = 15, n_iter: int = 3, inner: int = 10,
                 seed: int = 0, tol: float = 1e-4) -> None:
        if method not in self.METHODS:
            raise ValueError(f"unknown alignment {method!r}; use one of {self.METHODS}")
        self.k, self.method, self.n_pcs, self.n_iter, self.inner = int(k), method, n_pcs, n_iter, inner
        self.seed, self.tol = seed, tol

    # ------------------------------------------------------------------ reference
    def _fit_reference(self, P: np.ndarray) -> None:
        from sklearn.decomposition import PCA  # here: importing ``tl`` (a Ray worker does) loads no sklearn
        from sklearn.mixture import GaussianMixture

        n_pcs = None if self.n_pcs is None else min(self.n_pcs, P.shape[1], P.shape[0] - 1)
        self.reducer_ = PCA(n_components=n_pcs, random_state=self.seed).fit(P) if n_pcs else None
        Pr = self._reduce(P)
        self.gmm_ = GaussianMixture(n_components=min(self.k, P.shape[0]), covariance_type="full", reg_covar=1e-3,
                                    random_state=self.seed).fit(Pr)
        R = self.gmm_.predict_proba(Pr)
        self.means_ = (R.T @ P) / np.maximum(R.sum(0), 1e-12)[:, None]

    def _reduce(self, X: np.ndarray) -> np.ndarray:
        return X if self.reducer_ is None else self.reducer_.transform(X)

    # ------------------------------------------------------------------ one slide
    def _align_one(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(aligned X, total offset removed): centre, then shift by the region-matched offset until stable."""
        offset = X.mean(0)
        Y = X - offset
        if self.method == "centre":
            return Y, offset
        scale = float(np.sqrt((Y ** 2).sum(1).mean())) or 1.0
        for _ in range(self.inner):
            R = self.gmm_.predict_proba(self._reduce(Y))
            mass = R.sum(0)
            centroids = (R.T @ Y) / np.maximum(mass, 1e-12)[:, None]
            step = ((mass / mass.sum())[:, None] * (centroids - self.means_)).sum(0)
            Y = Y - step
            offset = offset + step
            if np.linalg.norm(step) < self.tol * scale:
                break
        return Y, offset

    # ------------------------------------------------------------------ public
    def fit_transform(self, blocks: Sequence[np.ndarray]) -> list[np.ndarray]:
        blocks = [np.asarray(b, dtype=np.float64) for b in blocks]
        aligned = [b - b.mean(0) for b in blocks]
        for _ in range(max(1, self.n_iter) if self.method == "matched" else 0):
            self._fit_reference(np.vstack(aligned))
            aligned = [self._align_one(b)[0] for b in blocks]
        self.offsets_ = [(b - a)[0] if len(b) else np.zeros(b.shape[1]) for b, a in zip(blocks, aligned)]
        return aligned

    def transform(self, X: np.ndarray) -> np.ndarray:
        return self._align_one(np.asarray(X, dtype=np.float64))[0]
