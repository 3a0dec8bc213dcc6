"""Regions: cluster embeddings (pooled over slides, so region ids agree across a cohort), refine spatially."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from ..errors import ConfigError, SlideError
from ._align import SlideAligner
from ._consensus import ConsensusRegionModel, block_settings, consensus_cut, member_settings, readout_blocks
from ._k_auto import choose_k, neighbour_edges
from ._per_slide import PerSlideRegionModel, big_enough, per_slide_cut
from ._restarts import medoid_cut
from ._labels import refine_labels, spatial_prior_labels, write_regions
from .._threads import small_matrices

METHODS = ("gmm", "leiden", "kmeans")
CUT_BY = ("auto", "cohort", "slide")


def resolve_cut_by(cut_by: str, k: int | None) -> str:
    """``cut_by="auto"`` (the default): ``"slide"`` when k is read from the data (``k=None``: each slide reads its
    own k, and its regions are matched across the cohort), ``"cohort"`` when the caller fixes k (k regions of the
    pooled spots). Measured on the labelled HER2ST cohorts (docs/BENCHMARKS.md, "Each slide cut alone at k auto"):
    at k auto the slides cut alone score 0.501 against the pooled cut's 0.288 (A1 + B1 + C1) and 0.448 against
    0.312 (six sections), each slide keeping two to five regions; at a fixed k = 6 the pooled cut leads (0.479
    against 0.252: every slide cut into six)."""
    if cut_by not in CUT_BY:
        raise ConfigError("cut_by", f"unknown {cut_by!r}; use one of {CUT_BY}")
    if cut_by != "auto":
        return cut_by
    return "slide" if k is None else "cohort"


def _slide(adata: AnnData) -> str:
    return str(adata.uns.get("senca", {}).get("slide_id", "?"))


def _pooled(adatas: Sequence[AnnData], use_rep: str) -> np.ndarray:
    blocks = []
    for a in adatas:
        if use_rep not in a.obsm:
            raise SlideError(f"no embedding {use_rep!r}: run senca_core.tl.senca first", slide=_slide(a),
                             field=f"obsm['{use_rep}']")
        X = np.asarray(a.obsm[use_rep], dtype=np.float64)
        if not np.isfinite(X).all():
            raise SlideError("embedding has NaN/inf values", slide=_slide(a), field=f"obsm['{use_rep}']")
        blocks.append(X)
    return np.vstack(blocks)


def _edges(adatas: Sequence[AnnData]) -> tuple[np.ndarray, np.ndarray]:
    """The pooled spots' neighbour pairs (k auto's reading of their spatial autocorrelation)."""
    return neighbour_edges([a.obsm.get("spatial_neighbors") for a in adatas], [a.n_obs for a in adatas])


def _reducer(X: np.ndarray, n_pcs: int | None, seed: int):
    """Centre and project onto the leading components (GMM covariances stay estimable on small sections)."""
    if n_pcs is None or n_pcs >= X.shape[1]:
        return _Centre().fit(X)
    from sklearn.decomposition import PCA  # here: a Ray worker scoring its slide imports this module, never sklearn

    return PCA(n_components=n_pcs, random_state=seed).fit(X)


def _leiden(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Leiden on the kNN graph of the embedding, resolution searched (bisection) to reach k clusters."""
    import scanpy as sc

    tmp = AnnData(np.zeros((X.shape[0], 1), dtype=np.float32))
    tmp.obsm["X_rep"] = X.astype(np.float32)
    sc.pp.neighbors(tmp, use_rep="X_rep", n_neighbors=min(15, X.shape[0] - 1), random_state=seed)
    lo, hi, labels = 0.01, 3.0, None
    for _ in range(30):
        res = (lo + hi) / 2
        sc.tl.leiden(tmp, resolution=res, random_state=seed, flavor="igraph", n_iterations=2, directed=False)
        labels = tmp.obs["leiden"].astype(int).to_numpy()
        found = len(np.unique(labels))
        if found == k:
            break
        lo, hi = (res, hi) if found < k else (lo, res)
    return labels


def _prior_labels(adatas, log_post: np.ndarray, beta: float) -> np.ndarray:
    """:func:`spatial_prior_labels` slide by slide over pooled log posteriors (a slide without neighbours:
    the arg-max)."""
    out, start = [], 0
    for a in adatas:
        lp = log_post[start:start + a.n_obs]
        start += a.n_obs
        nb = a.obsm.get("spatial_neighbors")
        out.append(spatial_prior_labels(lp, np.asarray(nb), beta) if nb is not None else lp.argmax(1))
    return np.concatenate(out)


def _log_posterior(estimator, Xr: np.ndarray) -> np.ndarray:
    """log p(component | spot) of a fitted GaussianMixture (floored: a vanishing posterior is never chosen)."""
    return np.log(np.maximum(estimator.predict_proba(Xr), 1e-300))


def _refit_full_gmm(estimator, Xr: np.ndarray, labels: np.ndarray, reg_covar: float = 1e-4):
    """A copy of a full-covariance GaussianMixture whose weights, means and covariances are re-estimated from
    ``labels`` (responsibilities 0.9 on the label, 0.1 spread over all components): the M-step of HMRF-EM."""
    import copy

    from scipy.linalg import cholesky, solve_triangular

    k, d = estimator.n_components, Xr.shape[1]
    resp = np.full((len(labels), k), 0.1 / k)
    resp[np.arange(len(labels)), labels] += 0.9
    nk = resp.sum(0) + 10 * np.finfo(float).eps
    means = resp.T @ Xr / nk[:, None]
    covs = np.empty((k, d, d))
    prec_chol = np.empty((k, d, d))
    for j in range(k):
        diff = Xr - means[j]
        covs[j] = (resp[:, j] * diff.T) @ diff / nk[j] + reg_covar * np.eye(d)
        prec_chol[j] = solve_triangular(cholesky(covs[j], lower=True), np.eye(d), lower=True).T
    g = copy.deepcopy(estimator)
    g.weights_, g.means_, g.covariances_ = nk / nk.sum(), means, covs
    g.precisions_cholesky_ = prec_chol
    g.precisions_ = np.einsum("kij,klj->kil", prec_chol, prec_chol)
    return g


def _fit(adatas, X: np.ndarray, k: int | None, method: str, n_pcs: int | None, seed: int, k_max: int,
         align: str | None, covariance: str, report: dict | None = None) -> tuple:
    """k (chosen by k auto when None), the slide aligner (several slides), the reducer, the reduced spots and the
    fitted estimator (GMM / k-means; Leiden: None)."""
    n = X.shape[0]
    aligner = None
    if align is not None and len(adatas) > 1:
        if align not in SlideAligner.METHODS:
            raise ConfigError("align", f"unknown slide alignment {align!r}; use one of {SlideAligner.METHODS} or None")
        sizes = np.cumsum([a.n_obs for a in adatas])[:-1]
        if k is None:  # choose k on the centred spots, then align at that k
            k = choose_k(_reducer(X, n_pcs, seed).transform(np.vstack([b - b.mean(0) for b in np.split(X, sizes)])),
                         seed, min(k_max, max(2, n // 10)), edges=_edges(adatas), report=report)
        aligner = SlideAligner(k, method=align, n_pcs=n_pcs, seed=seed)
        X = np.vstack(aligner.fit_transform(np.split(X, sizes)))
    reducer = _reducer(X, n_pcs, seed)
    Xr = reducer.transform(X)
    if k is None:
        k = choose_k(Xr, seed, min(k_max, max(2, n // 10)), edges=_edges(adatas), report=report)
    estimator = None
    if method == "gmm":
        from sklearn.mixture import GaussianMixture

        estimator = GaussianMixture(n_components=k, covariance_type=covariance, reg_covar=1e-4, n_init=3,
                                    random_state=seed).fit(Xr)
    elif method == "kmeans":
        from sklearn.cluster import KMeans

        estimator = KMeans(k, n_init=10, random_state=seed).fit(Xr)
    return k, aligner, reducer, Xr, estimator


class RegionModel:
    """A fitted region clustering: the projection and the estimator, so new slides get the same region ids.

    ``predict`` applies the same reduction and estimator (GMM / k-means predict; Leiden: nearest region centroid)
    and maps to the size-ordered ids ``cluster`` wrote. Picklable (sklearn objects + arrays). ``k_auto``: how k was
    read when it was not given (``tl._k_auto.choose_k``'s report: knee, penalised minimum, design effect), else None.
    """

    k_auto: dict | None = None

    def __init__(self, reducer, estimator, method: str, k: int, remap: dict, centroids: np.ndarray,
                 use_rep: str, refine: bool, aligner: SlideAligner | None = None, spatial_prior: float = 0.0,
                 columns: tuple[int, int] | None = None) -> None:
        self.reducer, self.estimator, self.method, self.k = reducer, estimator, method, int(k)
        self.remap, self.centroids, self.use_rep, self.refine = remap, centroids, use_rep, refine
        self.aligner, self.spatial_prior, self.columns = aligner, float(spatial_prior), columns

    def _scores(self, Xr: np.ndarray) -> np.ndarray:
        """(n, n_raw) preference of each spot for each raw component (higher = more likely)."""
        if self.method == "leiden":
            return -((Xr[:, None, :] - self.centroids[None]) ** 2).sum(-1)
        return self.estimator.predict_proba(Xr) if self.method == "gmm" else -self.estimator.transform(Xr)

    def labels(self, X: np.ndarray, neighbors: np.ndarray | None = None) -> np.ndarray:
        """Region ids (ints) of one slide's readout ``X`` (n, d), refined over ``neighbors`` like at fit time.

        A spot whose raw component held no training spot (or vanished in the training refinement) takes the most
        likely component that has a region id.
        """
        X = np.asarray(X, dtype=np.float64)
        columns = getattr(self, "columns", None)  # an ensemble's member cut: its network's block (older: none)
        if columns is not None:
            X = X[:, columns[0]:columns[1]]
        if getattr(self, "aligner", None) is not None:
            X = self.aligner.transform(X)
        Xr = self.reducer.transform(X)
        raw_ids = np.asarray(self.raw_ids_)
        prior = float(getattr(self, "spatial_prior", 0.0))  # older pickles: none
        if self.method == "leiden":
            raw = raw_ids[self._scores(Xr).argmax(1)]
        elif self.method == "gmm" and prior > 0 and neighbors is not None:
            raw = raw_ids[spatial_prior_labels(_log_posterior(self.estimator, Xr)[:, raw_ids],
                                               np.asarray(neighbors), prior)]
        else:
            raw = self.estimator.predict(Xr)
            if not np.isin(raw, raw_ids).all():
                raw = raw_ids[self._scores(Xr)[:, raw_ids].argmax(1)]
        if self.refine and neighbors is not None:
            raw = refine_labels(raw, np.asarray(neighbors))
        mapped = np.array([self.remap.get(int(x), -1) for x in raw])
        if (mapped < 0).any():
            known = np.asarray(sorted(self.remap), dtype=int)
            cols = known if self.method != "leiden" else np.searchsorted(raw_ids, known)
            best = known[self._scores(Xr[mapped < 0])[:, cols].argmax(1)]
            mapped[mapped < 0] = [self.remap[int(b)] for b in best]
        return mapped

    def predict(self, adata: AnnData) -> np.ndarray:
        """Region ids (ints) of one slide, spatially refined like at fit time."""
        return self.labels(_pooled([adata], self.use_rep), adata.obsm.get("spatial_neighbors"))


class _Centre:
    """Reducer used when no PCA is applied: just centring (keeps RegionModel.predict uniform)."""

    def fit(self, X):
        self.mean_ = X.mean(0)
        return self

    def transform(self, X):
        return X - self.mean_


def assign_regions(adatas: AnnData | Sequence[AnnData], region_model: RegionModel, *,
                   key_added: str = "region") -> None:
    """Write ``obs[key_added]`` on slides with a fitted :class:`RegionModel` (no refitting)."""
    adatas = [adatas] if isinstance(adatas, AnnData) else list(adatas)
    categories = [str(i) for i in range(region_model.k)]
    for a in adatas:
        a.obs[key_added] = pd.Categorical(region_model.predict(a).astype(str), categories=categories)


@small_matrices  # one BLAS thread: the mixtures' (spots, 15) matrices (DLPFC's first cut 3.5 -> 0.5 s, 2 cores)
def cluster(adatas: AnnData | Sequence[AnnData], k: int | None = None, *, method: str = "gmm",
            use_rep: str = "X_senca", refine: bool = True, n_pcs: int | None = 15, seed: int = 0,
            key_added: str = "region", k_max: int = 12, align: str | None = "matched",
            covariance: str = "full", spatial_prior: float = 16.0, prior_em_rounds: int = 0,
            consensus: bool | None = None, cut_by: str = "auto", restarts: int = 3, return_model: bool = False,
            blocks: int | None = None, _fits: dict | None = None, _columns: tuple[int, int] | None = None,
            ) -> int | RegionModel | ConsensusRegionModel | PerSlideRegionModel:
    """Cluster ``obsm[use_rep]`` into ``k`` regions; writes ``obs[key_added]`` (categorical) on every slide.

    A list of slides is clustered on the pooled embeddings, so region ``"3"`` means the same in every slide.
    ``k=None`` chooses k from the embedding and the spots' neighbours (:mod:`senca_core.tl._k_auto`). ``refine``
    smooths labels over ``obsm['spatial_neighbors']``. ``align`` (several slides only): remove each slide's offset
    before pooling (:class:`~senca_core.tl._align.SlideAligner`, ``"matched"`` (default) or ``"centre"``; None =
    pool as is), so regions are tissue states, not patients. Returns k, or with ``return_model`` the fitted
    :class:`RegionModel` (``.k``) that assigns the same ids to new slides.
    ``covariance``: the GMM's covariance type (``"full"``, ``"tied"`` (mclust's EEE), ``"diag"``, ``"spherical"``;
    compared in ``bench/bench_clustering.py``). ``spatial_prior`` (GMM only; ``0`` = off): the weight β of a Potts
    prior over ``obsm['spatial_neighbors']`` (:func:`spatial_prior_labels`): a spot's region is the GMM component
    maximising its log posterior + β per neighbour in it, before ``refine``; the default (16) is the one picked
    by leave-one-section-out over the labelled sections (``bench/bench_clustering.py``). ``prior_em_rounds``
    (GMM with full covariance and a prior only, else ignored; default 0 = off): HMRF-EM, that many rounds of
    re-estimating the GMM from the prior's labels and labelling again, so the regions' shapes follow the
    spatially coherent labels; a round that would leave fewer regions in use than before (the mixture
    collapsing) is not taken. Alone it lifts the labelled sections (bench) but reshapes regions a plain mixture
    already gets right (a synthetic slide with ground truth: 0.90 -> 0.76).
    ``consensus`` (GMM only; the default ``None`` = on unless ``covariance`` or ``prior_em_rounds`` choose one cut):
    the regions are the partition a family of cuts agrees on (:mod:`senca_core.tl._consensus`: the full-covariance
    mixture on 1x and ⅔x ``n_pcs`` components, each re-estimated under the spatial prior (HMRF-EM, 10 rounds);
    chosen over one cut and other families by leave-one-section-out, docs/BENCHMARKS.md). ``consensus=True``
    with another ``covariance`` or ``prior_em_rounds`` is refused; ``consensus=False`` is one cut. The model
    returned is then a :class:`~senca_core.tl.ConsensusRegionModel`. ``cut_by`` (several slides): ``"auto"``
    (default: :func:`resolve_cut_by`) is ``"slide"`` with ``k=None`` and ``"cohort"`` with a given k; ``"cohort"``
    cuts the pooled spots once; ``"slide"`` cuts each slide alone with the same settings (k per slide when not
    given) and matches the slides' regions into cohort ids (:mod:`senca_core.tl._per_slide`; the model returned is a
    :class:`~senca_core.tl.PerSlideRegionModel`, the value returned without it the cohort's number of regions; a
    slide too small to be cut alone takes the nearest cohort region spot by spot, and a cohort of only such slides
    is cut pooled).
    ``restarts`` (GMM; default 3; 1 = one seed): the cut fitted from that many clustering seeds (``seed``, ``seed``
    + 100, ...) and the restart the others agree with most kept (:mod:`senca_core.tl._restarts`, the medoid
    partition; with ``k=None`` the first restart reads k); not for an ensemble's readout (``blocks`` > 1), whose
    consensus over networks already pools several cuts.
    ``blocks``: how many networks' readouts ``obsm[use_rep]`` holds side by side (an ensemble, ``SencaConfig.n_models``;
    None: the slides' ``uns["senca"]["readout_blocks"]``, 1 when absent): the consensus is then that of each block's
    own consensus (:mod:`senca_core.tl._consensus`); one cut takes the blocks together.
    ``_fits`` (internal, the consensus): fits shared between calls on the same slides and seed, keyed by
    ``(n_pcs, covariance, k, method, _columns)``; ``_columns`` (internal): the member's block of the readout.
    """
    adatas = [adatas] if isinstance(adatas, AnnData) else list(adatas)
    if method not in METHODS:
        raise ConfigError("method", f"unknown clustering method {method!r}; use one of {METHODS}")
    if not adatas:
        raise ConfigError("adatas", "no slides to cluster")
    if not np.isfinite(spatial_prior) or spatial_prior < 0:
        raise ConfigError("spatial_prior", f"must be a finite number >= 0, got {spatial_prior!r}")
    if not isinstance(prior_em_rounds, (int, np.integer)) or prior_em_rounds < 0:
        raise ConfigError("prior_em_rounds", f"must be an integer >= 0, got {prior_em_rounds!r}")
    if covariance not in ("full", "tied", "diag", "spherical"):
        raise ConfigError("covariance", f"unknown GMM covariance {covariance!r}; use full, tied, diag or spherical")
    if not isinstance(restarts, (int, np.integer)) or isinstance(restarts, bool) or restarts < 1:
        raise ConfigError("restarts", f"must be an integer >= 1, got {restarts!r}")
    cut_by = resolve_cut_by(cut_by, k)
    if consensus is None:  # the default: the consensus, unless the caller chose one cut's settings
        consensus = covariance == "full" and not prior_em_rounds
    blocks = readout_blocks(adatas, use_rep, blocks) if _columns is None else 1
    # the cut's settings: each slide's cut alone, each restart's (and what a per-slide model cuts new slides with)
    settings = {"k": k, "method": method, "refine": refine, "n_pcs": n_pcs, "seed": seed, "k_max": k_max,
                "covariance": covariance, "spatial_prior": spatial_prior, "prior_em_rounds": prior_em_rounds,
                "consensus": consensus, "blocks": blocks, "restarts": restarts}
    if cut_by == "slide" and len(adatas) > 1 and any(big_enough(a.n_obs, k) for a in adatas):
        model = per_slide_cut(adatas, lambda a: cluster(a, use_rep=use_rep, key_added=key_added, return_model=True,
                                                        **settings),
                              settings, key_added=key_added, use_rep=use_rep)
        return model if return_model else int(model.k)
    if restarts > 1 and method == "gmm" and blocks == 1 and _columns is None and _fits is None:
        def fit_restart(seed_r: int, k_r: int | None, slides: list):
            return cluster(slides, use_rep=use_rep, key_added=key_added, align=align, cut_by="cohort",
                           return_model=True, **{**settings, "k": k_r, "seed": seed_r, "restarts": 1})

        model = medoid_cut(adatas, fit_restart, seed, k, int(restarts), key_added=key_added)
        return model if return_model else int(model.k_requested)
    if consensus and method == "gmm":
        if covariance != "full" or prior_em_rounds:
            raise ConfigError("consensus", "the consensus is a family of full-covariance HMRF-EM cuts; "
                                           "covariance and prior_em_rounds choose one cut: consensus=False")

        fits: dict = {}  # members sharing n_pcs and covariance (with and without HMRF-EM) share one mixture fit
        shared = {"method": "gmm", "use_rep": use_rep, "refine": refine, "seed": seed, "key_added": key_added,
                  "k_max": k_max, "align": align, "spatial_prior": spatial_prior, "return_model": True,
                  "cut_by": "cohort"}  # the members and blocks of this pooled cut are pooled cuts

        def fit_member(setting: dict, k_member: int | None, slides: list) -> RegionModel:
            return cluster(slides, k_member, consensus=False, _fits=fits, _columns=_columns, **shared, **setting)

        def fit_block(setting: dict, k_block: int | None, slides: list) -> ConsensusRegionModel:
            # one network's consensus
            return cluster(slides, k_block, n_pcs=n_pcs, consensus=True, **shared, **setting)

        if blocks > 1:  # an ensemble's readout: the consensus of its networks' consensuses
            model = consensus_cut(adatas, fit_block, block_settings(blocks, _pooled(adatas[:1], use_rep).shape[1]),
                                  k, refine=refine, key_added=key_added, use_rep=use_rep)
        else:
            model = consensus_cut(adatas, fit_member, member_settings(n_pcs), k, refine=refine, key_added=key_added,
                                  use_rep=use_rep)
        return model if return_model else int(model.k_requested)
    X = _pooled(adatas, use_rep)
    if _columns is not None:
        X = X[:, _columns[0]:_columns[1]]
    n = X.shape[0]
    if n < 2:
        raise SlideError(f"only {n} spot(s) to cluster, need at least 2", slide=", ".join(map(_slide, adatas)),
                         field=f"obsm['{use_rep}']")
    n_pcs = None if n_pcs is None else min(n_pcs, n)  # PCA cannot keep more components than there are spots
    if k is not None:
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError("k", f"must be a positive integer or None, got {k!r}")
        if k > n:
            slides = ", ".join(_slide(a) for a in adatas)
            raise SlideError(f"k={k} regions requested but only {n} spots", slide=slides, field="k")
    key = (n_pcs, covariance, k, method, _columns)
    report: dict = {}  # k=None: how k auto read k (tl._k_auto.choose_k)
    if _fits is not None and key in _fits:  # a consensus member: the same fit as another
        k, aligner, reducer, Xr, estimator = _fits[key]
    else:
        k, aligner, reducer, Xr, estimator = _fit(adatas, X, k, method, n_pcs, seed, k_max, align, covariance,
                                                  report)
        if _fits is not None:
            _fits[(n_pcs, covariance, k, method, _columns)] = (k, aligner, reducer, Xr, estimator)
    labels = _leiden(Xr, k, seed) if method == "leiden" else estimator.predict(Xr)
    use_prior = method == "gmm" and spatial_prior > 0
    # the Potts prior within each slide (slides without neighbours keep the arg-max): the labels below
    current = _prior_labels(adatas, _log_posterior(estimator, Xr), spatial_prior) if use_prior else None
    if use_prior and prior_em_rounds and covariance == "full":  # (other covariance types: not re-estimated)
        used = len(np.unique(current))
        for _ in range(int(prior_em_rounds)):  # HMRF-EM: label under the prior, re-estimate, again
            refit = _refit_full_gmm(estimator, Xr, current)
            nxt = _prior_labels(adatas, _log_posterior(refit, Xr), spatial_prior)
            if len(np.unique(nxt)) < used or len(np.unique(refit.predict(Xr))) < used:
                break  # the mixture collapsing: keep the last good one
            estimator, current = refit, nxt
        labels = estimator.predict(Xr)
    remap, categories = write_regions(adatas, labels if current is None else current, refine=refine,
                                      key_added=key_added)
    if not return_model:
        return int(k)
    raw_ids = np.unique(labels)
    centroids = np.stack([Xr[labels == r].mean(0) for r in raw_ids])
    model = RegionModel(reducer, estimator, method, len(categories), remap, centroids, use_rep, refine,
                        aligner=aligner, spatial_prior=spatial_prior if method == "gmm" else 0.0, columns=_columns)
    model.raw_ids_ = raw_ids
    model.k_requested = int(k)  # k asked / chosen; model.k = regions left after refinement
    model.k_auto = report or None
    return model
