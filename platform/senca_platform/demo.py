"""The demo cohort: a synthetic cohort with ground truth (``senca_core.datasets.synthetic_cohort``) and its spec."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from jobs._files import atomic_write_text


def demo_spec(records: list[dict[str, Any]], spec_dir: Path, *, name: str = "senca-demo", epochs: int = 40,
              tune_epochs: int = 12, num_samples: int = 2, num_workers: int = 2, tuning: bool = True,
              output_dir: str = "results", min_spots_per_worker: int | None = None,
              min_spot_epochs_per_worker: int | None = None) -> dict[str, Any]:
    """The cohort spec (as data) for synthetic slides: one ``h5ad`` slide per record, paths relative to the spec.
    ``min_spots_per_worker=0, min_spot_epochs_per_worker=0`` keep ``num_workers`` DDP workers however small and
    short the cohort's training (tests of the DDP path)."""
    patients: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        rel = os.path.relpath(r["h5ad"], spec_dir)
        patients.setdefault(r["patient_id"], []).append({"id": r["slide_id"], "reader": "h5ad", "path": rel})
    return {
        "name": name,
        "output_dir": output_dir,
        "patients": [{"id": pid, "slides": slides} for pid, slides in patients.items()],
        "preprocess": {"n_top_genes": 300, "n_pca": 20, "patch_size": 32},
        "model": {"hidden": 64, "embed_dim": 16, "n_prototypes": 8},
        "training": {"epochs": epochs, "num_workers": num_workers, "resources_per_worker": {"CPU": 0.5}, "seed": 0,
                     **({} if min_spots_per_worker is None else {"min_spots_per_worker": min_spots_per_worker}),
                     **({} if min_spot_epochs_per_worker is None
                        else {"min_spot_epochs_per_worker": min_spot_epochs_per_worker})},
        "tuning": {"enabled": tuning, "num_samples": num_samples, "scheduler": "asha", "metric": "auto",
                   "epochs": tune_epochs, "eval_every": max(1, tune_epochs // 3), "grace_period": max(1, tune_epochs // 3),
                   "keep": "checkpoint",
                   "search_space": {"lr": {"type": "loguniform", "low": 0.001, "high": 0.005},
                                    "w_neigh": {"type": "choice", "values": [0.25, 0.5, 1.0]}}},
        "clustering": {"k": "auto", "method": "gmm", "refine": True},
        "tracking": {"alias": "champion"},
    }


_HEADER = """\
# The SENCA-st demo cohort: synthetic slides with ground-truth regions (senca_core.datasets.synthetic_cohort).
# `senca-platform run {name}` runs it; `senca-platform init` writes a commented example for real data.
"""


def write_demo(out: str | Path, *, n_patients: int = 4, n_spots: int = 600, seed: int = 0, **spec_kwargs) -> Path:
    """Generate the cohort into ``out/data`` (once per size/seed) and write ``out/cohort.yaml``. Returns its path."""
    from senca_core.datasets import synthetic_cohort

    out = Path(out).resolve()
    data = out / "data" / f"p{n_patients}_n{n_spots}_s{seed}"
    done = data / ".complete"
    if done.exists():
        import json

        records = json.loads(done.read_text())
    else:
        import json

        records = synthetic_cohort(data, n_patients=n_patients, n_spots=n_spots, seed=seed)
        atomic_write_text(done, json.dumps(records))
    spec = demo_spec(records, out, **spec_kwargs)
    path = out / "cohort.yaml"
    atomic_write_text(path, _HEADER.format(name=path.name) + yaml.safe_dump(spec, sort_keys=False))
    return path
