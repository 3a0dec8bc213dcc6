"""``OUTPUT/report.html`` (``jobs.report``): written by a real run (the shared ``senca-platform demo`` of
``conftest.demo_cli_run``: 2 patients, 200 spots, CLI in a subprocess), self-contained, logged to MLflow, rendered by a real headless Chromium; and, on hand-made output
folders, the fallbacks (no tables), the newer tables (``regions.csv`` / ``composition.csv``), a failed slide, a
slide without image or annotations, and hostile ids (escaped)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from jobs.report import REPORT_NAME, build_report, write_report

EVIL = "<script>alert('x')</script>"


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


# --------------------------------------------------------------------------------------------- a real run
@pytest.fixture(scope="module")
def run_out(demo_cli_run):
    """The results of the shared real demo run (``conftest.demo_cli_run``) and what it printed."""
    out, proc = demo_cli_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc.stdout + proc.stderr


@pytest.mark.slow
def test_run_writes_a_self_contained_report(run_out):
    out, console = run_out
    path = out / REPORT_NAME
    assert path.is_file()
    log = out / "logs" / "run.log"
    said = console + (log.read_text(errors="replace") if log.is_file() else "")
    assert f"report: {path}" in said
    html = path.read_text(encoding="utf-8")
    summary = json.loads((out / "cohort_summary.json").read_text())
    ok = [s for s in summary["slides"] if s["status"] == "ok"]
    assert len(ok) == 2
    # self-contained: no fetched resource, no link, no external script
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert "<link" not in html.lower() and "<script" not in html.lower() and "@import" not in html
    imgs = re.findall(r"<img\b[^>]*>", html)
    assert len(imgs) == len(ok)
    assert all('src="data:image/png;base64,' in tag for tag in imgs)
    for s in ok:
        assert f">{s['slide']}</h3>" in html
    for pid in ("P1", "P2"):
        assert f'<th scope="row">{pid}</th>' in html  # the patients' table
    assert "Regions and marker genes" in html and "<code>" in html  # the marker table
    assert "scored against annotations" in html  # synthetic slides carry ground truth
    # the demo's k: auto says how it read k, on the console and in the report (no labels)
    assert summary["k_auto"]["k"] == summary["k"] and "infer: k auto, each slide cut alone:" in said
    assert "<b>Number of regions:</b> k auto, each slide cut alone:" in html
    # each slide's cut from three clustering seeds: how much they agree, on the console, in the summary and report
    assert set(summary["region_restarts"]["slides"]) == {s["slide"] for s in ok}
    assert "infer: regions: each slide's cut from 3 clustering seeds" in said
    assert "<b>Reproducibility:</b> regions: each slide&#x27;s cut from 3 clustering seeds" in html
    assert html.count("<svg") >= 2  # cohort and patient composition charts
    # logged to the MLflow parent run
    from mlflow.tracking import MlflowClient

    uri = summary["mlflow"]["tracking_uri"]
    names = [a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(summary["mlflow_run_id"])]
    assert REPORT_NAME in names, names


@pytest.mark.slow
def test_report_renders_in_headless_chromium(run_out, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not installed: apt-get install -y chromium")
    out, _ = run_out
    url = (out / REPORT_NAME).resolve().as_uri()
    base = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True, timeout=60).stdout
    assert len(re.findall(r"<img\b[^>]*src=\"data:image/png;base64,", dom)) == 2
    assert dom.count("<table") >= 3 and "Heterogeneity indices" in dom and "Top marker genes" in dom
    shot = out.parent / "report_screenshot.png"
    subprocess.run(base + [f"--screenshot={shot}", "--window-size=1280,2400", url], capture_output=True,
                   timeout=60)
    from PIL import Image

    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size == (1280, 2400)
        px = np.asarray(im.convert("RGB"), dtype=np.float64)
    assert px.std() > 20  # not blank
    assert len(np.unique(px[::4, ::4].reshape(-1, 3), axis=0)) > 200  # text, charts and the H&E maps
    # the top of the page (header + composition chart) is not blank either
    assert px[:600].std() > 10


# --------------------------------------------------------------------------------------------- hand-made folders
def _tiny_png(path: Path, colour=(200, 80, 120)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:] = colour
    rgb[10:30, 20:40] = (30, 120, 200)
    Image.fromarray(rgb).save(path)


def _folder(root: Path, *, tables: str = "none") -> Path:
    out = root / "out"
    (out / "infer" / "summaries").mkdir(parents=True)
    _tiny_png(out / "maps" / "S1_regions.png")
    slides = [
        {"patient": "PA", "slide": "S1", "status": "ok", "error": None, "n_spots": 30, "n_regions": 2,
         "ari": None, "nmi": None, "h5ad": str(out / "slides" / "S1.h5ad"),  # absent: no image known
         "region_map": str(out / "maps" / "S1_regions.png"), "warnings": [f"odd slide {EVIL}"]},
        {"patient": EVIL, "slide": EVIL, "status": "failed", "error": f"slide {EVIL}: counts truncated\nline 2",
         "n_spots": 0, "n_regions": 0, "ari": None, "nmi": None, "warnings": []},
    ]
    (out / "infer" / "summaries" / "S1.json").write_text(json.dumps(
        {"slide_id": "S1", "region_counts": {"0": 20, "1": 10},
         "heterogeneity": {"tumour_regions": ["1"]}}))
    summary = {"cohort": f"cohort {EVIL}", "status": "partial", "error": None, "output_dir": str(out),
               "n_patients": 2, "n_slides": 2, "n_failed": 1, "slides": slides, "k": 2,
               "warnings": [f"the pooled regions follow the patients {EVIL}"],
               "tuning": {"selection": {"rule": f"highest score {EVIL}"}, "best_config": {"lr": 0.001}}}
    (out / "cohort_summary.json").write_text(json.dumps(summary))
    (out / "tracking").mkdir()
    (out / "tracking" / "run.json").write_text(json.dumps({"spec": {
        "model": {"hidden": 64}, "tracking": {"uri": "http://user:pw@host:5000"},
        "clustering": {"k": 2, "note": "https://user:secret@example.org/x"}}}))
    tab = out / "tables"
    tab.mkdir()
    if tables == "old":
        (tab / "patients.csv").write_text(
            "patient_id,n_slides,n_spots,prop_region_0,prop_region_1,n_regions,shannon_regions,simpson_regions,"
            "tumour_regions\nPA,1,30,0.6667,0.3333,2,0.64,0.44,1\n")
        (tab / "markers.csv").write_text("group,rank,gene,score\n0,0,COL1A1,5\n0,1,<b>G</b>,4\n1,0,KRT8,6\n")
    elif tables == "new":
        (tab / "regions.csv").write_text(
            "region,region_name,tissue,tissue_score,is_tumour,color,n_spots,fraction,top_markers\n"
            "0,Stroma,stroma,0.8,False,#336699,20,0.667,\"COL1A1,POSTN\"\n"
            f"1,\"Tumour {EVIL}\",tumour,0.9,True,#cc3300,10,0.333,\"KRT8,ERBB2\"\n")
        (tab / "composition.csv").write_text(
            "patient_id,region,region_name,tissue,n_spots,proportion\nPA,0,Stroma,stroma,20,0.6667\n"
            "PA,1,Tumour,tumour,10,0.3333\n")
        (tab / "patients.csv").write_text("patient_id,n_slides,n_spots,shannon,simpson,tumour_fraction\n"
                                          "PA,1,30,0.64,0.44,0.33\n")
    return out


@pytest.mark.parametrize("tables", ["none", "old", "new"])
def test_failed_slide_plain_slide_and_hostile_ids(tmp_path, tables):
    out = _folder(tmp_path, tables=tables)
    path = write_report(out, on_error=pytest.fail)
    assert path == out / REPORT_NAME
    html = path.read_text(encoding="utf-8")
    assert "<script" not in html.lower() and "&lt;script&gt;" in html  # ids, errors, warnings, names escaped
    assert "counts truncated line 2" in html  # the failed slide's error on one line
    assert "Failed slides" in html
    assert html.count("<img") == 1 and "Regions (no H&amp;E image)" in html
    assert "scored against annotations" not in html  # no labels: no ARI / NMI
    assert "user:pw" not in html and "secret@" not in html and "http" not in html.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert "highest score &lt;script&gt;" in html
    assert "<b>Warning:</b> the pooled regions follow the patients &lt;script&gt;" in html  # cohort-level
    if tables == "old":
        assert "<code>COL1A1</code>" in html and "<code>&lt;b&gt;G&lt;/b&gt;</code>" in html
        assert "66.7%" in html  # cohort composition from the slides' counts
    if tables == "new":
        assert "Stroma" in html and "#cc3300" in html and "<code>ERBB2</code>" in html
        assert "Tumour &lt;script&gt;" in html


def test_never_raises(tmp_path):
    said = []
    assert write_report(tmp_path / "missing", on_error=said.append) is None
    assert len(said) == 1 and said[0].startswith("report not written:")
    with pytest.warns(UserWarning, match="report not written"):
        assert write_report(tmp_path / "missing") is None
    out = _folder(tmp_path)
    (out / "cohort_summary.json").write_text("{ not json")  # unreadable summary: slides from infer/summaries
    assert "S1" in build_report(out)
