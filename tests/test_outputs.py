"""The tidy tables of a run (``tables/*.csv|parquet``) and the named regions: every column documented in
docs/OUTPUTS.md, no JSON cell, no duplicated column; region names one set per run, in the h5ad and on the maps.

A tiny infer stage without Ray: the same driver / task functions the pipeline maps (``jobs.infer``), on three
synthetic slides (two patients) preprocessed in process and a model trained for two epochs."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import senca_core.pp as pp
from jobs import infer
from jobs._tables import write_tables
from senca_core.datasets import synthetic_slide
from senca_core.model import SencaConfig, fit, save_model
from senca_core.tl import REGION_COLUMNS as COLUMNS, name_regions

DOC = Path(__file__).resolve().parents[1] / "docs" / "OUTPUTS.md"
TABLES = ("regions", "composition", "patients", "slides", "markers")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs")
    slides = []
    for s, pid in enumerate(("P1", "P1", "P2")):
        a = synthetic_slide(160, seed=s, with_image=False)
        a.uns["senca"].update(slide_id=f"S{s}", patient_id=pid)
        slides.append(a)
    pp.preprocess(slides, n_comps=10)
    model, _ = fit(slides, SencaConfig(epochs=2, hidden=32, embed_dim=8, n_prototypes=4, n_negatives=16))
    save_model(model, out / "model.pt")
    rows = []
    for a in slides:
        sid = a.uns["senca"]["slide_id"]
        path = out / "pre" / f"{sid}.h5ad"
        path.parent.mkdir(exist_ok=True)
        a.write_h5ad(path)
        r = infer.embed_slide({"slide_id": sid, "path": str(path), "model_path": str(out / "model.pt"),
                               "emb_path": str(out / "infer" / "embeddings" / f"{sid}.npy")})
        assert r["status"] == "ok", r["error"]
        rows.append({**r, "path": str(path), "patient_id": a.uns["senca"]["patient_id"]})
    regions = infer.cluster_cohort(rows, {"k": 4}, out / "infer" / "regions")
    t0 = time.perf_counter()
    names = infer.name_cohort_regions(rows, regions)
    seconds = time.perf_counter() - t0
    assert any(names["is_tumour"]), names  # the synthetic slides have tumour: sub-regions are computed
    subregions = infer.cohort_subregions(rows, regions, names, out / "infer" / "subregions")
    summaries = [infer.summarise_slide({
        "slide_id": r["slide_id"], "patient_id": r["patient_id"], "path": r["path"], "emb_path": r["emb_path"],
        "region_path": regions["region_paths"][r["slide_id"]], "categories": regions["categories"],
        "region_names": json.loads(json.dumps(names)),  # as Ray Data rows carry it (JSON)
        "subregion_path": subregions["paths"][r["slide_id"]],
        "h5ad_path": str(out / "slides" / f"{r['slide_id']}.h5ad"),
        "map_path": str(out / "maps" / f"{r['slide_id']}_regions.png"),
        "markers_path": str(out / "infer" / "markers" / f"{r['slide_id']}.csv"),
        "summary_file": str(out / "infer" / "summaries" / f"{r['slide_id']}.json")}) for r in rows]
    assert all(s["status"] == "ok" for s in summaries), [s["error"] for s in summaries]
    paths = write_tables(out / "tables", summaries, regions["categories"], names, subregions["table"])
    return {"out": out, "names": names, "regions": regions, "summaries": summaries, "paths": paths,
            "subregions": subregions,
            "seconds": seconds}


def documented() -> dict[str, set[str]]:
    """``{table: {column, ...}}`` from the ``## tables/<name>`` sections of docs/OUTPUTS.md (first cell of each
    table row, in backticks)."""
    out: dict[str, set[str]] = {}
    current = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^##+ .*tables/(\w+)", line)
        if m:
            current = out.setdefault(m.group(1), set())
        elif line.startswith("## "):
            current = None
        elif current is not None and line.startswith("| `"):
            current.add(line.split("`")[1])
    return out


def _pattern(col: str, categories: list[str]) -> str:
    for c in sorted(categories, key=len, reverse=True):
        if col.endswith(f"_{c}"):
            return col[: -len(c)] + "<region>"
    return col


def _is_json(v) -> bool:
    if not isinstance(v, str) or not v.strip().startswith(("{", "[")):
        return False
    try:
        json.loads(v)
        return True
    except ValueError:
        return False


def test_every_column_is_documented_and_tidy(run):
    doc = documented()
    cats = run["regions"]["categories"]
    for name in (*TABLES, "tumour_subregions"):
        csv = pd.read_csv(run["paths"][f"{name}_csv_path"])
        pq = pd.read_parquet(run["paths"][f"{name}_parquet_path"])
        assert list(csv.columns) == list(pq.columns) and len(csv) == len(pq) > 0, name
        assert csv.columns.is_unique, name
        missing = {_pattern(c, cats) for c in csv.columns} - doc.get(name, set())
        assert not missing, f"tables/{name}: columns not in docs/OUTPUTS.md: {sorted(missing)}"
        for c in pq.columns:
            assert not any(_is_json(v) for v in pq[c]), f"tables/{name}.{c} holds JSON"
            assert not any(isinstance(v, (dict, list, np.ndarray)) for v in pq[c]), f"tables/{name}.{c} nested"
    patients = pd.read_parquet(run["paths"]["patients_parquet_path"])
    assert not [c for c in patients.columns if c.startswith(("het_", "prop_region_")) or c == "top_markers"]
    assert sorted(patients["patient_id"]) == ["P1", "P2"] and patients.loc[0, "n_slides"] == 2
    assert (patients["shannon"] > 0).all() and patients["neighbour_mixing"].between(0, 1).all()


def test_regions_and_composition(run):
    regions = pd.read_csv(run["paths"]["regions_csv_path"], dtype={"region": str})
    assert list(regions.columns) == list(COLUMNS)
    assert list(regions["region"]) == run["regions"]["categories"]
    assert regions["region_name"].is_unique and regions["color"].str.match(r"^#[0-9a-f]{6}$").all()
    assert regions["n_spots"].sum() == 3 * 160 and regions["fraction"].sum() == pytest.approx(1.0)
    assert regions["tissue"].isin(["tumour", "immune", "stroma", "adipose", "normal gland", "unassigned"]).all()
    assert (regions["is_tumour"] == (regions["tissue"] == "tumour")).all() and regions["is_tumour"].any()
    assert not regions["top_markers"].str.contains(r"[\[\]{}\"]").any()
    comp = pd.read_csv(run["paths"]["composition_csv_path"], dtype={"region": str})
    assert len(comp) == 2 * len(regions)
    assert np.allclose(comp.groupby("patient_id")["proportion"].sum(), 1.0)
    assert comp["n_spots"].sum() == 3 * 160
    names = dict(zip(regions["region"], regions["region_name"]))
    assert (comp["region"].map(names) == comp["region_name"]).all()


def test_names_reach_the_slides(run):
    tumour = {r for r, t in zip(run["names"]["region"], run["names"]["is_tumour"]) if t}
    for s in run["summaries"]:
        a = ad.read_h5ad(s["h5ad_path"])
        table = a.uns["senca"]["region_names"]
        assert list(table["region_name"]) == run["names"]["region_name"]
        assert isinstance(a.obs["region_name"].dtype, pd.CategoricalDtype)
        mapping = dict(zip(run["names"]["region"], run["names"]["region_name"]))
        assert (a.obs["region"].astype(str).map(mapping) == a.obs["region_name"].astype(str)).all()
        het = s["heterogeneity"]
        assert het["tumour_rule"] == "name_regions" and set(het["tumour_regions"]) <= tumour
        assert Path(s["map_path"]).stat().st_size > 1000
    text = DOC.read_text(encoding="utf-8")
    for key in ('obs["region_name"]', 'uns["senca"]["region_names"]', 'obs["region"]', "region_names.json"):
        assert key in text, key


def test_naming_is_cheap_and_label_free(run):
    assert run["seconds"] < 2.0
    a = synthetic_slide(200, seed=5, with_image=False)
    a.obs["region"] = pd.Categorical(a.obs["true_region"].astype(str))
    b = a.copy()
    b.obs["label"] = "scrambled"
    assert name_regions(a).equals(name_regions(b))
    assert "region_name" in a.obs and "region_names" in a.uns


def test_tumour_subregions_reach_tables_and_slides(run):
    """The hierarchy's second level: every tumour region has its sub-region rows, the slides carry
    ``obs["tumour_subregion"]`` (NA outside tumour) and the patients table counts them."""
    import anndata as ad

    table = pd.read_csv(run["paths"]["tumour_subregions_csv_path"], dtype={"region": str, "subregion": str})
    tumour = {str(r) for r, t in zip(run["names"]["region"], run["names"]["is_tumour"]) if t}
    assert set(table["region"]) == tumour
    for region, part in table.groupby("region"):
        assert len(part) == (2 if part["split"].all() else 1)
        assert part["n_spots"].sum() > 0 and abs(part["fraction_of_region"].sum() - 1) < 1e-9
    for s in run["summaries"]:
        a = ad.read_h5ad(s["h5ad_path"])
        sub = a.obs["tumour_subregion"]
        in_tumour = a.obs["region"].astype(str).isin(tumour).to_numpy()
        assert sub[in_tumour].notna().all() and sub[~in_tumour].isna().all()
        assert set(sub.dropna().astype(str)) <= set(table["subregion"])
    patients = pd.read_parquet(run["paths"]["patients_parquet_path"])
    assert (patients["n_tumour_subregions"] >= patients["n_tumour_regions"]).all()
