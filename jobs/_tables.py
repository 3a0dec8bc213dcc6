"""The tidy tables of a run (``OUTPUT/tables/``, Parquet beside CSV), from the per-slide summaries of
``jobs.infer.summarise_slide`` and the cohort's region names (``senca_core.tl.name_regions``).

- ``regions``: one row per region (name, tissue label, tumour flag, colour, size, top markers);
- ``composition``: long form, one row per patient × region (spots, proportion);
- ``patients``: one row per patient, scalar indices only (no duplicate, no setting, no JSON);
- ``slides``: one row per slide, scalar values only (lists as plain text);
- ``markers``: the per-slide marker genes of ``tl.marker_genes`` (unchanged).

Every column is described in ``docs/OUTPUTS.md``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ._files import atomic_write_with

#: ``tl.heterogeneity`` scalars kept in the slides / patients tables (settings and duplicates left out:
#: ``n_spots``/``n_regions`` come from the counts, ``pitch_px``/``min_component`` are settings,
#: ``tumour_spread_px`` repeats ``tumour_spread`` in pixels)
HET_KEYS = ("shannon", "shannon_evenness", "simpson", "inverse_simpson", "neighbour_mixing", "neighbour_entropy",
            "tumour_fraction", "n_tumour_regions", "n_tumour_components", "n_tumour_fragments", "tumour_spread")
#: composition indices recomputed from the pooled spot counts of a patient (not averaged over slides)
POOLED = ("n_regions", "shannon", "shannon_evenness", "simpson", "inverse_simpson")


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _weighted(values: list[tuple[float, float]]) -> float | None:
    w = sum(c for _, c in values)
    return sum(v * c for v, c in values) / w if w else None


def _sort_regions(xs) -> list[str]:
    return sorted({str(x) for x in xs}, key=lambda x: (len(x), x))


def _diversity(counts: list[int]) -> dict[str, float]:
    n = sum(counts)
    p = np.array([c / n for c in counts if c > 0]) if n else np.zeros(0)
    shannon = float(-(p * np.log(p)).sum()) if len(p) else 0.0
    return {"n_regions": int(len(p)), "shannon": shannon,
            "shannon_evenness": shannon / math.log(len(p)) if len(p) > 1 else 0.0,
            "simpson": float(1.0 - (p ** 2).sum()) if len(p) else 0.0,
            "inverse_simpson": float(1.0 / (p ** 2).sum()) if len(p) else 0.0}


def patient_table(slide_rows: list[dict[str, Any]], categories: list[str], names: dict[str, list] | None = None):
    """One row per patient from its finished slides' summaries (a pandas DataFrame), scalar indices only.

    Composition indices (``n_regions``, ``shannon``, ``shannon_evenness``, ``simpson``, ``inverse_simpson``) are
    computed on the patient's pooled spots; the other ``tl.heterogeneity`` indices and ARI / NMI / silhouette are
    spot-weighted means over its slides; ``tumour_regions`` the tumour regions present (comma-separated ids) and
    ``n_tumour_regions`` their number;
    ``env_ring1_<region>`` / ``env_enrichment_<region>`` the micro-environment (ring-size weighted). Region
    proportions are in the ``composition`` table, marker genes in ``regions`` / ``markers``. ``names`` is unused
    here (kept for symmetry with :func:`composition_table`)."""
    import pandas as pd

    by_patient: dict[str, list[dict]] = {}
    for r in slide_rows:
        if r.get("status") == "ok":
            by_patient.setdefault(r["patient_id"], []).append(r)
    rows = []
    for pid, slides in by_patient.items():
        n = sum(s["n_spots"] for s in slides)
        row: dict[str, Any] = {"patient_id": pid, "n_slides": len(slides),
                               "slides": ",".join(s["slide_id"] for s in slides), "n_spots": n}
        row.update(_diversity([sum(s["region_counts"].get(c, 0) for s in slides) for c in categories]))
        for k in HET_KEYS:
            if k not in POOLED and k != "n_tumour_regions":
                row[k] = _weighted([(v, s["n_spots"]) for s in slides
                                    if (v := _num((s.get("heterogeneity") or {}).get(k))) is not None])
        tumour = [str(t) for s in slides for t in ((s.get("heterogeneity") or {}).get("tumour_regions") or [])]
        row["n_tumour_regions"] = len(set(tumour))
        row["tumour_regions"] = ",".join(_sort_regions(tumour))
        subs = {k for s in slides for k in (s.get("tumour_subregion_counts") or {})}
        row["n_tumour_subregions"] = len(subs)
        row["tumour_subregions"] = ",".join(_sort_regions(subs))
        ring: dict[str, list[tuple[float, float]]] = {}
        enrich: dict[str, list[tuple[float, float]]] = {}
        for s in slides:
            env = s.get("microenvironment") or {}
            ring1 = env.get("ring1") or {}
            size = float(ring1.get("n_spots") or 0)
            for c, v in ring1.items():
                if c != "n_spots" and _num(v) is not None:
                    ring.setdefault(str(c), []).append((float(v), size))
            for c, v in (env.get("enrichment") or {}).items():
                if _num(v) is not None:
                    enrich.setdefault(str(c), []).append((float(v), size))
        for c in categories:
            if c in ring:
                row[f"env_ring1_{c}"] = _weighted(ring[c])
        for c in categories:
            if c in enrich:
                row[f"env_enrichment_{c}"] = _weighted(enrich[c])
        for metric in ("ari", "nmi", "silhouette"):
            row[metric] = _weighted([(s[metric], s["n_spots"]) for s in slides if s.get(metric) is not None])
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        df = df.sort_values("patient_id").reset_index(drop=True)
    return df


def composition_table(slide_rows: list[dict[str, Any]], categories: list[str], names: dict[str, list] | None = None):
    """Long form: one row per patient × region (every region of the cohort, 0 where absent): ``patient_id``,
    ``region``, ``region_name``, ``tissue``, ``n_spots``, ``proportion`` (of the patient's spots)."""
    import pandas as pd

    info = _names_by_region(categories, names)
    counts: dict[str, dict[str, int]] = {}
    for s in slide_rows:
        if s.get("status") == "ok":
            pc = counts.setdefault(s["patient_id"], {})
            for c in categories:
                pc[c] = pc.get(c, 0) + int((s.get("region_counts") or {}).get(c, 0))
    rows = []
    for pid in sorted(counts):
        tot = sum(counts[pid].values())
        for c in categories:
            rows.append({"patient_id": pid, "region": c, "region_name": info[c]["region_name"],
                         "tissue": info[c]["tissue"], "n_spots": counts[pid][c],
                         "proportion": counts[pid][c] / tot if tot else 0.0})
    return pd.DataFrame(rows, columns=["patient_id", "region", "region_name", "tissue", "n_spots", "proportion"])


def _names_by_region(categories: list[str], names: dict[str, list] | None) -> dict[str, dict[str, Any]]:
    """``{region: {column: value}}`` from the names table; regions without a name get ``R<id>`` / unassigned."""
    out = {c: {"region_name": f"R{c}", "tissue": "unassigned"} for c in categories}
    if names:
        for i, r in enumerate(names.get("region", [])):
            out[str(r)] = {k: v[i] for k, v in names.items()}
    return out


def regions_table(names: dict[str, list] | None, categories: list[str], slide_rows: list[dict[str, Any]]):
    """One row per region: the ``tl.name_regions`` table (``senca_core.tl.REGION_COLUMNS``); without
    names (no profile), ids, colours and counts only."""
    import pandas as pd
    from senca_core.tl import REGION_COLUMNS, region_colors

    if names:
        return pd.DataFrame({c: names[c] for c in REGION_COLUMNS}, columns=list(REGION_COLUMNS))
    counts = {c: sum(int((s.get("region_counts") or {}).get(c, 0)) for s in slide_rows if s.get("status") == "ok")
              for c in categories}
    tot = sum(counts.values())
    return pd.DataFrame([{"region": c, "region_name": f"R{c}", "tissue": "unassigned", "tissue_score": np.nan,
                          "is_tumour": False, "color": col, "n_spots": counts[c],
                          "fraction": counts[c] / tot if tot else 0.0, "top_markers": ""}
                         for c, col in zip(categories, region_colors(categories))], columns=list(REGION_COLUMNS))


def slides_table(summaries: list[dict[str, Any]]):
    """One row per slide (failed ones too): identifiers, status, counts, scores, the ``HET_KEYS`` indices,
    ``tumour_regions`` and ``warnings`` as plain text, the output paths. No JSON: the nested detail
    (region counts, micro-environment, markers) stays in the per-slide summary JSON."""
    import pandas as pd

    rows = []
    for s in summaries:
        het = s.get("heterogeneity") or {}
        warnings = [str(w) for w in (s.get("warnings") or [])]
        row = {k: s.get(k) for k in ("slide_id", "patient_id", "status", "error", "n_spots", "n_regions", "ari",
                                      "nmi", "silhouette")}
        row.update({k: _num(het.get(k)) for k in HET_KEYS})
        row["tumour_regions"] = ",".join(_sort_regions(het.get("tumour_regions") or []))
        row["tumour_subregions"] = ",".join(_sort_regions(s.get("tumour_subregion_counts") or {}))
        row["n_warnings"] = len(warnings)
        row["warnings"] = " | ".join(warnings)
        row.update({k: s.get(k) for k in ("h5ad_path", "map_path", "markers_path", "summary_file", "seconds",
                                          "peak_rss_mb")})
        rows.append(row)
    return pd.DataFrame(rows)


def write_tables(tables_dir: str | Path, summaries: list[dict[str, Any]], categories: list[str],
                 names: dict[str, list] | None = None, subregions: dict[str, list] | None = None) -> dict[str, str]:
    """Write ``regions``, ``composition``, ``patients``, ``slides``, ``markers`` (when any slide has markers) and
    ``tumour_subregions`` (``subregions``: ``tl.tumour_subregions``' table as ``{column: list}``, when given) as
    ``<name>.parquet`` + ``<name>.csv``; returns ``{<name>_parquet_path, <name>_csv_path: str}``."""
    import pandas as pd

    tables_dir = Path(tables_dir)
    tables_dir.mkdir(parents=True, exist_ok=True)
    ok = [s for s in summaries if s.get("status") == "ok"]
    marker_files = [s["markers_path"] for s in ok if s.get("markers_path") and Path(s["markers_path"]).exists()]
    frames = {"regions": regions_table(names, categories, ok), "composition": composition_table(ok, categories, names),
              "patients": patient_table(ok, categories, names), "slides": slides_table(summaries),
              "markers": pd.concat([pd.read_csv(f) for f in marker_files], ignore_index=True) if marker_files
              else pd.DataFrame()}
    if subregions is not None:
        frames["tumour_subregions"] = pd.DataFrame(subregions)
    paths: dict[str, str] = {}
    for name, df in frames.items():
        paths[f"{name}_parquet_path"] = str(atomic_write_with(tables_dir / f"{name}.parquet",
                                                              lambda tmp, df=df: df.to_parquet(tmp, index=False)))
        paths[f"{name}_csv_path"] = str(atomic_write_with(tables_dir / f"{name}.csv",
                                                          lambda tmp, df=df: df.to_csv(tmp, index=False)))
    return paths
