"""How many spots a cohort has at most, from its files' headers, before anything is read: whether Ray needs its
dashboard (a Ray Train worker group needs it; without, an embedded Ray starts 0.8-1.9 s sooner on 2 cores).

Each count is an upper bound on the spots the slide's reader returns (the reader keeps a subset: the spot rows that
join the counts, the in-tissue barcodes in the matrix, the AnnData's rows), read without the reader's imports:
the spot file's rows (``legacy_st``), the in-tissue rows of the positions file (``visium``), the AnnData's row
index (``h5ad``). A slide that cannot be counted so (a missing or unusual file: its reader says why later) makes
the census unknown, and the run keeps the dashboard.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

from .schema import CohortSpec


def _text_rows(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        return [line for line in fh if line.strip()]


def _legacy_st(slide: Any) -> int:
    return max(0, len(_text_rows(Path(slide.spots))) - 1)  # its header


def _visium(slide: Any) -> int:
    spatial = Path(slide.path) / "spatial"
    v2, v1 = spatial / "tissue_positions.csv", spatial / "tissue_positions_list.csv"
    rows = _text_rows(v2)[1:] if v2.is_file() else _text_rows(v1)
    return sum(1 for row in rows if row.split(",")[1].strip() == "1")  # barcode, in_tissue, ...


def _h5ad(slide: Any) -> int:
    import h5py

    with h5py.File(Path(slide.path), "r") as f:
        obs = f["obs"]
        return int(len(obs[obs.attrs["_index"]]))


_COUNTERS = {"legacy_st": _legacy_st, "visium": _visium, "h5ad": _h5ad}


def most_spots(spec: CohortSpec, *, enough: int | None = None) -> int | None:
    """An upper bound on the cohort's spots, or None when a slide cannot be counted from its headers. ``enough``:
    stop once the count reaches it (the caller only asks whether the cohort has that many)."""
    total = 0
    for _, slide in spec.slides():
        counter = _COUNTERS.get(slide.reader)
        try:
            total += counter(slide)
        except Exception:  # noqa: BLE001 - unknown: the run keeps what needs the most (its reader says why)
            return None
        if enough is not None and total >= enough:
            break
    return total


def most_training_epochs(spec: CohortSpec) -> int:
    """The most epochs any training of the run may take: the trainer's or a trial's (``jobs.train.most_epochs``)."""
    from jobs.train import most_epochs

    tuning = spec.tuning
    if not tuning.enabled:
        return int(spec.training.epochs)
    space = {k: dim.model_dump() for k, dim in tuning.search_space.items()}
    return max(int(spec.training.epochs), most_epochs(int(tuning.epochs or spec.training.epochs), space))


def needs_dashboard(spec: CohortSpec) -> bool:
    """Whether any training of the run may be a Ray Train worker group (``jobs.train.may_use_worker_groups``),
    with the cohort's spots counted where the slides and workers alone would say yes."""
    from jobs.train import may_use_worker_groups

    t = spec.training
    args = dict(n_slides=len(spec.slides()), num_workers=t.num_workers, launcher=t.launcher)
    possible = may_use_worker_groups(**args)
    if not possible or t.launcher != "auto" or not (t.min_spots_per_worker or t.min_spot_epochs_per_worker):
        return possible  # the spots cannot change the answer
    epochs = most_training_epochs(spec)
    # two workers need twice each minimum: stop counting once the cohort has that many spots
    enough = max(2 * t.min_spots_per_worker, -(-2 * t.min_spot_epochs_per_worker // epochs))
    return may_use_worker_groups(**args, n_spots=most_spots(spec, enough=enough), epochs=epochs,
                                 min_spots_per_worker=t.min_spots_per_worker,
                                 min_spot_epochs_per_worker=t.min_spot_epochs_per_worker)
