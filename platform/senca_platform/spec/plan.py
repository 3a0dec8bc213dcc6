"""The plan: a resolved cohort spec as the plain data ``jobs.pipeline`` takes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .schema import CohortSpec


def slide_entries(spec: CohortSpec) -> list[dict[str, Any]]:
    """The spec's slides as one flat list of plain entries (``patient_id``, ``slide_id`` and the slide's fields),
    what the per-slide functions of ``jobs`` take: the run's plan and ``predict`` build their slides here."""
    data = spec.model_dump(mode="json")
    return [{"patient_id": patient["id"], "slide_id": s["id"], **{k: v for k, v in s.items() if k != "id"}}
            for patient in data["patients"] for s in patient["slides"]]


#: the most CPUs an unset ``preprocess.cpus_per_slide`` gives one slide's task
AUTO_SLIDE_CPUS_MAX = 4


def slide_cpus(spec: CohortSpec, num_cpus: int, embedded: bool) -> float:
    """The CPUs each slide's preprocessing task holds: ``preprocess.cpus_per_slide`` where set. Unset, on an
    embedded Ray (one machine), its CPUs shared among the slides, 1 to :data:`AUTO_SLIDE_CPUS_MAX` each: a lone
    slide describes its histology patches on every CPU (``senca_core.hist.patch_features`` runs its batches side
    by side on the task's CPUs; DLPFC 151673 on 2 CPUs: 4.0 -> 1.7 s, the same features) instead of leaving the
    others idle. On a cluster 1: its nodes' sizes are not known here, and a task larger than every node would wait."""
    if spec.preprocess.cpus_per_slide is not None:
        return float(spec.preprocess.cpus_per_slide)
    n_slides = len(spec.slides())
    if not embedded or n_slides < 1:
        return 1.0
    return float(max(1, min(AUTO_SLIDE_CPUS_MAX, int(num_cpus) // n_slides)))


def build_plan(spec: CohortSpec, num_cpus: int, *, embedded: bool = False,
               api_server: str | None = None) -> dict[str, Any]:
    """The resolved spec as the plain data ``jobs.pipeline`` takes (one flat list of slides); ``embedded``: the
    run's Ray is the embedded local one (:func:`slide_cpus`); ``api_server``: the state API address every worker of
    that Ray has in its environment (``senca_platform.ray_local``: Ray Train's controller then starts from the
    driver, ``jobs.train.where_train_finds_its_cluster``)."""
    data = spec.model_dump(mode="json")
    preprocess = {**data["preprocess"], "cpus_per_slide": slide_cpus(spec, num_cpus, embedded)}
    return {"name": spec.name, "output_dir": str(Path(spec.output_dir).resolve()), "slides": slide_entries(spec),
            "preprocess": preprocess, "model": data["model"], "training": data["training"],
            "tuning": data["tuning"], "clustering": data["clustering"], "num_cpus": num_cpus,
            "ray_api_server": api_server}
