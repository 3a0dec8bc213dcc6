"""Synthetic expression: region programmes → negative-binomial counts with depth variation and dropout."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ._design import DEPTH, PROGRAMMES, REGION_NAMES, REGIONS

HOUSEKEEPING = ("ACTB", "GAPDH", "MALAT1", "EEF1A1", "RPLP0", "TMSB4X", "B2M", "FTL", "MT-CO1",
                "RPS27A")


def gene_panel(n_genes: int) -> list[str]:
    """Marker genes of every programme, housekeeping genes, then ``SYN0001``… fillers."""
    markers = [g for prog in PROGRAMMES.values() for g in prog]
    fixed = list(dict.fromkeys(markers + list(HOUSEKEEPING)))
    if n_genes < len(fixed) + 10:
        raise ConfigError("n_genes", f"must be at least {len(fixed) + 10} (the marker panel), got {n_genes}")
    return fixed + [f"SYN{i:04d}" for i in range(1, n_genes - len(fixed) + 1)]


def region_profiles(genes: list[str], panel_seed: int, signal: float = 1.0
                    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(R, G) expression proportions per region, from one panel seed (shared by a cohort).

    Base profile: log-normal gene means (heavy tail), housekeeping genes high. Each programme
    raises its markers by exp(U(1.2, 2.2) × signal) (3-9× at ``signal=1``) and ~15 filler genes by
    exp(U(0.3, 1.0) × signal); a region's profile is the base times the effects of its
    programmes (``REGIONS``), renormalised. Returns also the log effects per
    programme (G,)."""
    rng = np.random.default_rng([panel_seed, 7919])
    G = len(genes)
    gi = {g: i for i, g in enumerate(genes)}
    base = rng.normal(-0.5, 1.4, G)
    for g in HOUSEKEEPING:
        base[gi[g]] = rng.normal(4.0, 0.5)
    for prog in PROGRAMMES.values():
        for g in prog:
            base[gi[g]] = rng.normal(-0.3, 0.4)
    fillers = np.array([i for g, i in gi.items() if g.startswith("SYN")])
    effects: dict[str, np.ndarray] = {}
    for name, markers in PROGRAMMES.items():
        e = np.zeros(G)
        for g in markers:
            e[gi[g]] = rng.uniform(1.2, 2.2) * signal
        extra = rng.choice(fillers, size=min(15, fillers.size), replace=False)
        e[extra] += rng.uniform(0.3, 1.0, extra.size) * signal
        effects[name] = e
    prof = np.empty((len(REGION_NAMES), G))
    for r, name in enumerate(REGION_NAMES):
        logp = base + sum(effects[p] for p in REGIONS[name][1])
        p = np.exp(logp - logp.max())
        prof[r] = p / p.sum()
    return prof, effects


def simulate_counts(
    mix: np.ndarray,
    profiles: np.ndarray,
    rng: np.random.Generator,
    *,
    library_size: float,
    depth_sd: float = 0.35,
    dispersion: float = 4.0,
    dropout: float = 0.05,
    batch: np.ndarray | None = None,
) -> np.ndarray:
    """Counts (n, G) int: NB(mean = depth × mixed profile, size ``dispersion``), then zero-inflation.

    Spot depth = ``library_size`` × region depth factor (``DEPTH``, weighted by ``mix``) ×
    lognormal(0, ``depth_sd``). ``batch`` (G,) multiplies the profile (patient / slide effect)."""
    prof = mix @ profiles
    if batch is not None:
        prof = prof * batch[None, :]
        prof /= prof.sum(axis=1, keepdims=True)
    depth_factor = mix @ np.array([DEPTH[n] for n in REGION_NAMES])
    lib = library_size * depth_factor * np.exp(rng.normal(0.0, depth_sd, mix.shape[0]))
    mu = prof * lib[:, None]
    lam = rng.gamma(dispersion, 1.0 / dispersion, size=mu.shape) * mu
    counts = rng.poisson(lam)
    if dropout > 0:
        counts[rng.random(counts.shape) < dropout] = 0
    return counts
