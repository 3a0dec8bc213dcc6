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


def build_plan(spec: CohortSpec, num_cpus: int) -> dict[str, Any]:
    """The resolved spec as the plain data ``jobs.pipeline`` takes (one flat list of slides)."""
    data = spec.model_dump(mode="json")
    return {"name": spec.name, "output_dir": str(Path(spec.output_dir).resolve()), "slides": slide_entries(spec),
            "preprocess": data["preprocess"], "model": data["model"], "training": data["training"],
            "tuning": data["tuning"], "clustering": data["clustering"], "num_cpus": num_cpus}
