"""What the HTML cohort report (``jobs.report``) shows, read from a finished run's output folder.

Newer tables first, today's as fallback: ``tables/regions.csv`` (region, region_name, tissue, tissue_score,
is_tumour, color, n_spots, fraction, top_markers) else region ids, the ``senca_core`` palette and ``markers.csv``;
``tables/composition.csv`` (patient_id, region, ..., proportion) else ``patients.csv``'s ``prop_region_<r>``;
slides from ``cohort_summary.json`` (else ``infer/summaries/*.json``). Every reader is best effort: a missing or
unreadable table leaves its part of the report empty, it never fails the report.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

#: patients.csv columns shown as heterogeneity indices, in this order: (label, names it may have: the first present
#: wins; today's ``het_*`` / ``*_regions`` and the one-row-per-patient table's plain names); others when none exist
PATIENT_COLUMNS = [
    ("Patient", ("patient_id",)), ("Slides", ("n_slides",)), ("Spots", ("n_spots",)), ("Regions", ("n_regions",)),
    ("Shannon", ("shannon_regions", "shannon", "het_shannon")),
    ("Simpson", ("simpson_regions", "simpson", "het_simpson")),
    ("Evenness", ("shannon_evenness", "het_shannon_evenness")),
    ("Neighbour mixing", ("neighbour_mixing", "het_neighbour_mixing")),
    ("Tumour fraction", ("tumour_fraction", "het_tumour_fraction")),
    ("Tumour foci", ("n_tumour_components", "het_n_tumour_components")),
    ("Tumour spread", ("tumour_spread", "het_tumour_spread")),
    ("Tumour regions", ("tumour_regions",)), ("Tumour sub-regions", ("n_tumour_subregions",)),
    ("ARI", ("ari",)), ("NMI", ("nmi",)),
]
_NOT_INDEX = re.compile(r"^(prop_region_|env_|top_markers|slides$|het_n_spots|het_pitch)")
_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf"]


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001
        return None


def _csv(path: Path):
    import pandas as pd

    try:
        return pd.read_csv(path, dtype={"region": str, "group": str, "patient_id": str}) if path.is_file() else None
    except Exception:  # noqa: BLE001
        return None


def _clean(v: Any) -> Any:
    """A table cell as plain Python (NaN -> None)."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def region_key(r: Any) -> tuple:
    s = str(r)
    return (0, int(s), s) if s.isdigit() else (1, len(s), s)


def one_line(text: Any, limit: int = 400) -> str:
    line = " ".join(str(text or "unknown error").split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def palette(n: int) -> list[str]:
    """The colours of the region maps (``senca_core.io.to_scanpy`` / ``pl.region_map``), one per category."""
    try:
        from senca_core.tl import region_colors

        return region_colors(list(range(n)))
    except Exception:  # noqa: BLE001
        return [_TAB10[i % 10] for i in range(n)]


def _has_image(h5ad: Any) -> bool:
    try:
        import h5py

        with h5py.File(str(h5ad), "r") as f:
            return "uns/senca/image_path" in f
    except Exception:  # noqa: BLE001
        return False


def _slides(out: Path, summary: dict) -> list[dict]:
    slides = [dict(s) for s in summary.get("slides") or []]
    if not slides:  # no summary: the per-slide summaries of the infer stage
        for f in sorted((out / "infer" / "summaries").glob("*.json")):
            d = _json(f) or {}
            slides.append({"slide": d.get("slide_id", f.stem), "patient": d.get("patient_id"),
                           "status": d.get("status", "ok"), "error": d.get("error"), "n_spots": d.get("n_spots"),
                           "n_regions": d.get("n_regions"), "ari": d.get("ari"), "nmi": d.get("nmi"),
                           "h5ad": d.get("h5ad_path"), "region_map": d.get("map_path"),
                           "warnings": d.get("warnings") or []})
    for s in slides:
        s["slide"] = str(s.get("slide") or s.get("slide_id") or "?")
        s["status"] = str(s.get("status") or "failed")
        if s["status"] != "ok":
            continue
        d = _json(out / "infer" / "summaries" / f"{s['slide']}.json") or {}
        s["region_counts"] = {str(k): int(v) for k, v in (d.get("region_counts") or {}).items() if v}
        if not s.get("region_map"):
            guess = out / "maps" / f"{s['slide']}_regions.png"
            s["region_map"] = str(guess) if guess.is_file() else d.get("map_path")
        s["has_image"] = _has_image(s.get("h5ad") or out / "slides" / f"{s['slide']}.h5ad")
        s["tumour_regions"] = [str(t) for t in ((d.get("heterogeneity") or {}).get("tumour_regions") or [])]
    return slides


def _markers_from_csv(df, n: int = 6) -> dict[str, list[str]]:
    """Top genes per region over the slides: Borda count of their per-slide ranks (top 10 of each slide)."""
    if df is None or not {"group", "rank", "gene"} <= set(df.columns):
        return {}
    df = df[df["rank"] < 10].assign(points=lambda d: 10 - d["rank"])
    out = {}
    for g, sub in df.groupby("group", sort=False):
        ranked = sub.groupby("gene")["points"].sum().sort_values(ascending=False, kind="stable")
        out[str(g)] = [str(x) for x in ranked.index[:n]]
    return out


def _split_markers(v: Any) -> list[str]:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return []
    s = str(v).strip()
    if s.startswith("["):
        try:
            return [str(x) for x in json.loads(s)]
        except ValueError:
            pass
    return [g for g in re.split(r"[,;\s]+", s) if g]


def _settings(out: Path) -> list[tuple[str, list[tuple[str, str]]]]:
    run = _json(out / "tracking" / "run.json") or {}
    spec = run.get("spec") if isinstance(run.get("spec"), dict) else {}
    # run.json's spec is redacted when written (senca_platform.sync.Journal); URIs and masked values are left out
    sections = []
    for name in ("preprocess", "model", "training", "tuning", "clustering"):
        flat: list[tuple[str, str]] = []

        def walk(prefix: str, v: Any) -> None:
            if isinstance(v, dict):
                for k, x in v.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), x)
            elif isinstance(v, str) and (_URI.match(v) or "***" in v):
                return  # a URI, or a redacted secret: not shown
            elif v is not None:
                flat.append((prefix, json.dumps(v) if isinstance(v, (list, bool)) else str(v)))

        walk("", spec.get(name))
        if flat:
            sections.append((name, flat))
    return sections


def load(out: Path) -> dict[str, Any]:
    """Everything the report shows, as plain data."""
    if not out.is_dir():
        raise FileNotFoundError(f"{out}: no such output folder")
    summary_path = out / "cohort_summary.json"
    summary = _json(summary_path) or {}
    tables = out / "tables"
    slides = _slides(out, summary)
    ok = [s for s in slides if s["status"] == "ok"]
    regions_df, comp_df, pat_df = _csv(tables / "regions.csv"), _csv(tables / "composition.csv"), \
        _csv(tables / "patients.csv")

    # regions: names, colours, info
    info: dict[str, dict] = {}
    if regions_df is not None and "region" in regions_df.columns:
        for row in regions_df.to_dict("records"):
            info[str(row["region"])] = {k: _clean(v) for k, v in row.items()}
    order = list(info)
    if not order and pat_df is not None:
        order = [c[len("prop_region_"):] for c in pat_df.columns if c.startswith("prop_region_")]
    seen = {r for s in ok for r in s.get("region_counts", {})}
    order += sorted(seen - set(order), key=region_key)
    base = palette(len(order))
    colours = {r: str(info.get(r, {}).get("color") or base[i]) for i, r in enumerate(order)}
    names = {r: str(info.get(r, {}).get("region_name") or (r if not r.isdigit() else f"Region {r}")) for r in order}
    tumour = {t for s in ok for t in s.get("tumour_regions", [])}
    for r in order:
        info.setdefault(r, {})
        if info[r].get("is_tumour") is None and tumour:
            info[r]["is_tumour"] = r in tumour

    counts = {r: 0 for r in order}
    for s in ok:
        for r, n in s.get("region_counts", {}).items():
            counts[r] = counts.get(r, 0) + int(n)
    if not sum(counts.values()):
        counts = {r: int(info[r].get("n_spots") or 0) for r in order}
    total = sum(counts.values()) or 1
    fraction = {r: n / total for r, n in counts.items()}

    # per patient composition
    composition: dict[str, dict[str, float]] = {}
    if comp_df is not None and {"patient_id", "region", "proportion"} <= set(comp_df.columns):
        for row in comp_df.to_dict("records"):
            composition.setdefault(str(row["patient_id"]), {})[str(row["region"])] = float(row["proportion"] or 0)
    elif pat_df is not None and "patient_id" in pat_df.columns:
        for row in pat_df.to_dict("records"):
            composition[str(row["patient_id"])] = {c[len("prop_region_"):]: float(_clean(v) or 0.0)
                                                  for c, v in row.items() if c.startswith("prop_region_")}
    prow = [{k: _clean(v) for k, v in r.items()} for r in pat_df.to_dict("records")] if pat_df is not None else []
    for r in prow:
        r["patient_id"] = str(r.get("patient_id"))
    present = []
    for label, keys in PATIENT_COLUMNS:
        key = next((k for k in keys if any(r.get(k) is not None for r in prow)), None)
        if key is not None:
            present.append((key, label))
    if len(present) < 4 and prow:  # a table of other indices: its scalar columns
        present = [("patient_id", "Patient")] + [(k, k.replace("_", " ")) for k in prow[0] if k != "patient_id"
                                                 and not _NOT_INDEX.match(k)]
    ids = [r["patient_id"] for r in prow] + [str(s["patient"]) for s in slides if s.get("patient")]
    patient_ids = list(dict.fromkeys(ids))

    markers = {r: _split_markers(info[r].get("top_markers")) for r in order if info[r].get("top_markers")}
    if not markers:
        markers = _markers_from_csv(_csv(tables / "markers.csv"))
    for r in info.values():
        r.pop("top_markers", None)

    stamp = summary_path.stat().st_mtime if summary_path.exists() else time.time()
    return {"out": str(out), "summary": summary, "cohort": summary.get("cohort") or out.name,
            "date": time.strftime("%d %B %Y, %H:%M UTC", time.gmtime(stamp)), "slides": slides,
            "regions": order, "colours": colours, "names": names, "region_info": info,
            "cohort_counts": counts, "cohort_fraction": fraction, "composition": composition,
            "patient_rows": prow, "patient_columns": present, "patient_ids": patient_ids, "markers": markers,
            "settings": _settings(out), "any_image": any(s.get("has_image") for s in ok)}


def k_auto_line(report: dict) -> str:
    """The console's and the HTML report's account of ``clustering.k: auto`` (``senca_core.tl._k_auto``); no labels.
    Slides cut one by one (``cut_by``): each slide's k, then the cohort's regions after matching."""
    if "slides" in report:
        each = ", ".join(f"{sid} {r['k']}" for sid, r in report["slides"].items())
        c = [r["design_effect"] for r in report["slides"].values() if r.get("design_effect") is not None]
        how = (f"; each the smaller of its BIC curve's knee and its minimum of BIC with the penalty times the spots' "
               f"spatial design effect, x{min(c):.2f}-{max(c):.2f}") if c else ""
        return (f"k auto, each slide cut alone: {each} regions, read without labels{how}; {report['k']} cohort "
                "regions after matching the slides' regions across the cohort")
    if report.get("knee") is None:
        return f"k auto: {report['k']} (too few spots for a BIC curve)"
    return (f"k auto: {report['k']} regions, read without labels from k 2-{report['k_max']} (the BIC curve's "
            f"knee at {report['knee']}; the minimum of BIC with its penalty x{report['design_effect']:.2f}, the spots' "
            f"spatial design effect, at {report['penalised']}; the smaller)")


def restart_agreement(report: dict) -> float:
    """The kept restart's mean adjusted Rand index to the other restarts (``senca_core.tl._restarts``): 1 when every
    clustering seed gave the same regions."""
    return float(report["agreement"][report["chosen"]])


def agreement_metrics(report: dict | None) -> dict[str, float]:
    """The restarts' agreement as MLflow metrics: ``restart_agreement`` (one cut) or ``restart_agreement_<slide>``
    per slide cut alone (a run's infer stage, a prediction)."""
    if not report:
        return {}
    if "slides" in report:
        return {f"restart_agreement_{sid}": restart_agreement(r) for sid, r in report["slides"].items()}
    return {"restart_agreement": restart_agreement(report)}


def restarts_line(report: dict) -> str:
    """The console's and the HTML report's account of ``clustering.restarts`` (no labels): how many clustering seeds
    cut the regions, which cut was kept and how much the others agree with it (per slide when slides are cut alone)."""
    how = "its mean ARI to the other seeds' cuts; 1 = every seed gave the same regions"
    if "slides" in report:
        each = list(report["slides"].values())
        n = len(each[0]["seeds"]) if each else 0
        per = ", ".join(f"{sid} {restart_agreement(r):.2f}" for sid, r in report["slides"].items())
        return (f"regions: each slide's cut from {n} clustering seeds, the one the others agree with most kept; "
                f"agreement {per} ({how})")
    seeds = ", ".join(str(s) for s in report["seeds"])
    return (f"regions: the cut from {len(report['seeds'])} clustering seeds ({seeds}) the others agree with most, "
            f"seed {report['seeds'][report['chosen']]}; agreement {restart_agreement(report):.2f} ({how})")
