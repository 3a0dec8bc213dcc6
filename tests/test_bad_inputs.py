"""The bad-input corpus (tests/bad_inputs/): every case gives ONE clear error naming the slide, the file and
the field (readers: ``SlideError``; specs: ``SpecError`` with the field and the YAML line), and the command line
(``senca-platform validate``) prints it without a traceback and exits non-zero.

The cases are listed, with what each must name, in ``tests/bad_inputs/make_corpus.py`` (``CASES``); that script
also wrote the corpus files, and the first test checks that the committed files are what it writes.
No Ray here: a broken slide inside a full run is tests/test_pipeline.py::test_a_broken_slide_fails_alone.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from senca_core import hist
from senca_core.errors import SlideError
from senca_core.io import read_h5ad, read_legacy_st, read_visium
from senca_platform.cli import app
from senca_platform.spec import SpecError, check_inputs, load_spec

from _corpus import CORPUS, load_make_corpus

make_corpus = load_make_corpus()
CASES = make_corpus.CASES

#: binary files whose bytes depend on the encoder library's version (checked for presence only)
_LIBRARY_BYTES = (".jpg", ".h5", ".h5ad")

runner = CliRunner()


def _by_entry(*entries: str) -> list:
    return [pytest.param(c, id=c["id"]) for c in CASES if c["entry"] in entries]


def _validate(*args: str):
    res = runner.invoke(app, ["validate", *args])
    out = res.output + (res.stderr if res.stderr_bytes is not None else "")
    assert res.exception is None or isinstance(res.exception, SystemExit), out
    assert "Traceback" not in out, out
    return res.exit_code, out


def _assert_names(message: str, case: dict) -> None:
    """The message is one line and names the slide, the file and the expected text."""
    assert "\n" not in message, message
    assert "Traceback" not in message
    if case["slide"]:
        assert f"slide {case['slide']!r}" in message, message
    if case["file"]:
        assert case["file"] in message, message
    assert case["text"].lower() in message.lower(), message


# ------------------------------------------------------------------------------------------------ the corpus
def test_corpus_is_what_make_corpus_writes(tmp_path):
    written = make_corpus.write(tmp_path)
    rels = {p.relative_to(tmp_path).as_posix() for p in written} | {"README.md"}
    committed = {p.relative_to(CORPUS).as_posix() for p in CORPUS.rglob("*")
                 if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts}
    assert rels == committed, "run: python tests/bad_inputs/make_corpus.py"
    for rel in rels:
        if not rel.endswith(_LIBRARY_BYTES):
            assert (tmp_path / rel).read_bytes() == (CORPUS / rel).read_bytes(), rel
    assert max((CORPUS / rel).stat().st_size for rel in rels - {"README.md"}) < 4096  # tiny files only
    # every kind of bad input the issue lists has at least one case
    ids = {c["id"] for c in CASES}
    for needed in ("malformed_yaml", "unknown_key", "wrong_type_scalar", "counts_missing_file",
                   "counts_truncated_gzip", "image_corrupt_jpeg", "image_corrupt_tiff", "spots_mismatch",
                   "counts_nan", "counts_negative", "counts_all_zero", "duplicate_patient_id", "duplicate_slide_id",
                   "k_above_spots", "path_escape", "python_object_tag", "one_bad_slide"):
        assert needed in ids, needed


# ------------------------------------------------------------------------------------------------ readers
def _read(case: dict):
    a = dict(case["args"])
    if case["entry"] == "read_legacy_st":
        counts, spots = CORPUS / a.pop("counts"), CORPUS / a.pop("spots")
        for key in ("labels", "image"):
            if key in a:
                a[key] = CORPUS / a[key]
        return read_legacy_st(counts, spots, **a)
    if case["entry"] == "read_visium":
        return read_visium(CORPUS / a.pop("path"), **a)
    return read_h5ad(CORPUS / a.pop("path"), **a)


@pytest.mark.parametrize("case", _by_entry("read_legacy_st", "read_visium", "read_h5ad"))
def test_reader_gives_one_slide_error(case):
    with pytest.raises(SlideError) as info:
        _read(case)
    err = info.value
    assert err.slide == case["slide"]
    assert err.field == case["field"], str(err)
    assert err.file is not None and Path(err.file).name == Path(case["file"]).name, str(err)
    _assert_names(str(err), case)
    assert err.to_dict()["message"] == str(err)


def _one_slide_spec(tmp_path: Path, case: dict) -> Path:
    """A cohort spec holding the case's slide, its paths absolute into the corpus."""
    a = case["args"]
    if case["entry"] == "read_legacy_st":
        lines = ["reader: legacy_st", f"counts: {CORPUS / a['counts']}", f"spots: {CORPUS / a['spots']}"]
        lines += [f"{k}: {CORPUS / a[k]}" for k in ("labels", "image") if k in a]
        lines += [f"image_scale: {a['image_scale']}"] if "image_scale" in a else []
    else:
        lines = [f"reader: {case['entry'].removeprefix('read_')}", f"path: {CORPUS / a['path']}"]
    slide = "\n".join(f"        {x}" for x in lines)
    text = f"name: one-slide\npatients:\n  - id: P\n    slides:\n      - id: {case['slide']}\n{slide}\n"
    path = tmp_path / "cohort.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", _by_entry("read_legacy_st", "read_visium", "read_h5ad"))
def test_validate_names_the_bad_slide(case, tmp_path):
    """What ``validate`` reports for a cohort holding that slide: one issue, on the slide's field."""
    spec = load_spec(_one_slide_spec(tmp_path, case))
    [issue] = check_inputs(spec)
    assert issue.field.startswith("patients[0].slides[0]"), issue
    assert issue.kind in ("missing", "data")
    _assert_names(issue.message, case)


def test_cli_validate_names_a_bad_slide(tmp_path):
    case = next(c for c in CASES if c["id"] == "counts_negative")
    path = _one_slide_spec(tmp_path, case)
    code, out = _validate("--strict", str(path))
    assert code == 2
    assert "patients[0].slides[0].counts" in out and "slide 'S1'" in out and "counts_negative.tsv" in out
    assert "negative count" in out
    code, out = _validate(str(path))  # the file is here and unreadable: an error even without --strict
    assert code == 2 and "error:" in out and "negative count" in out


@pytest.mark.parametrize("case", _by_entry("decode_image"))
def test_broken_pixel_data_fails_in_the_histology_stage(case):
    """A JPEG with a good header passes the reader (it reads headers only); the histology stage names it."""
    adata = read_legacy_st(CORPUS / "legacy/S1.tsv.gz", CORPUS / "legacy/S1_selection.tsv",
                           image=CORPUS / case["args"]["image"], slide_id="S1")
    with pytest.raises(SlideError) as info:
        hist.patch_features(adata)
    assert info.value.slide == "S1"
    _assert_names(str(info.value), case)


# ------------------------------------------------------------------------------------------------ specs
@pytest.mark.parametrize("case", _by_entry("load_spec"))
def test_bad_spec_gives_field_and_line(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a '!!python/object' tag would run 'touch senca_pwned' here
    path = CORPUS / case["args"]["spec"]
    with pytest.raises(SpecError) as info:
        load_spec(path)
    issues = info.value.issues
    fields = [i.field for i in issues]
    assert case["field"] in fields, str(info.value)
    issue = issues[fields.index(case["field"])]
    if case["line"] is not None:
        assert issue.line == case["line"], str(info.value)
    assert case["text"].lower() in issue.message.lower(), str(info.value)
    if case["id"].startswith("path_"):  # one issue per input path of the slide, all for the same reason
        assert all("outside the spec's folder" in i.message for i in issues)
    else:
        assert len(issues) == 1, str(info.value)
    code, out = _validate(str(path))
    assert code == 2
    assert case["field"] in out and case["file"] in out
    if case["line"] is not None:
        assert f"{case['file']}:{case['line']}: {case['field']}" in out, out
    assert not (tmp_path / "senca_pwned").exists()


def test_python_tags_are_refused_and_nothing_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for tag in ("!!python/object/apply:os.system ['touch senca_pwned']", "!!python/name:os.system",
                "!!python/object:pathlib.Path {}", "!!python/object/new:subprocess.Popen [['touch', 'x']]"):
        path = tmp_path / "cohort.yaml"
        path.write_text(f"name: {tag}\npatients: []\n")
        with pytest.raises(SpecError) as info:
            load_spec(path)
        [issue] = info.value.issues
        assert issue.field == "<yaml>" and issue.line == 1 and "is not allowed" in issue.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort.yaml"]


def test_paths_may_leave_the_spec_folder_by_default_and_not_when_confined(tmp_path):
    data = tmp_path / "cohort" / "data"
    data.mkdir(parents=True)
    for name in ("S1.tsv.gz", "S1_selection.tsv"):
        shutil.copy(CORPUS / "legacy" / name, data / name)
    outside = tmp_path / "elsewhere.tsv"
    shutil.copy(CORPUS / "legacy" / "S1_selection.tsv", outside)
    (data / "link.tsv").symlink_to(outside)
    slides = ("  - id: P1\n    slides:\n      - id: S1\n        reader: legacy_st\n"
              "        counts: data/S1.tsv.gz\n        spots: {spots}\n")
    spec = tmp_path / "cohort" / "cohort.yaml"
    for spots, confine in (("data/S1_selection.tsv", True), ("../elsewhere.tsv", False), ("data/link.tsv", False)):
        spec.write_text("name: c\npatients:\n" + slides.format(spots=spots) +
                        f"paths:\n  confine_to_spec_dir: {str(confine).lower()}\n")
        s = load_spec(spec)
        assert check_inputs(s) == []  # readable, 16 spots
    for spots in ("../elsewhere.tsv", "data/link.tsv", str(outside), "data/../../elsewhere.tsv"):
        spec.write_text("name: c\npatients:\n" + slides.format(spots=spots) + "paths:\n  confine_to_spec_dir: true\n")
        with pytest.raises(SpecError) as info:
            load_spec(spec)
        [issue] = info.value.issues
        assert issue.field == "patients[0].slides[0].spots" and issue.line == 8
        assert "outside the spec's folder" in issue.message and spots in issue.message


def test_a_folder_of_symlinks_to_files_elsewhere_does_not_escape_confinement(tmp_path):
    """A folder inside the spec's folder passes a path check, but a reader opens the files in it: each is resolved
    too (symlinked files, symlinked sub-folders, links that lead back inside), so links out are refused."""
    outside = tmp_path / "elsewhere"
    shutil.copytree(CORPUS / "visium" / "V1", outside / "V1")
    cohort = tmp_path / "cohort"
    vis = cohort / "data" / "V1"
    (vis / "spatial").mkdir(parents=True)
    spec = cohort / "cohort.yaml"
    spec.write_text("name: c\npatients:\n  - id: P1\n    slides:\n      - id: V1\n        reader: visium\n"
                    "        path: data/V1\npaths:\n  confine_to_spec_dir: true\n")

    def refused(through: str) -> None:
        with pytest.raises(SpecError) as info:
            load_spec(spec)
        [issue] = info.value.issues
        assert issue.field == "patients[0].slides[0].path" and issue.line == 7, issue
        assert "outside the spec's folder" in issue.message and through in issue.message, issue.message

    for p in (outside / "V1").rglob("*"):  # every file of the folder a link to the copy outside
        if p.is_file():
            (vis / p.relative_to(outside / "V1")).parent.mkdir(parents=True, exist_ok=True)
            (vis / p.relative_to(outside / "V1")).symlink_to(p)
    assert read_visium(vis).n_obs == 16  # the reader does read through the links
    refused(str(outside / "V1"))
    # the same files copied in: confined and valid
    for p in vis.rglob("*"):
        if p.is_symlink():
            target = p.resolve()
            p.unlink()
            shutil.copy(target, p)
    assert check_inputs(load_spec(spec)) == []
    # one sub-folder a link out: refused; a link to a folder inside the spec's folder whose files lead out: refused
    shutil.rmtree(vis / "spatial")
    (vis / "spatial").symlink_to(outside / "V1" / "spatial")
    refused("spatial")
    (vis / "spatial").unlink()
    inside = cohort / "other"
    inside.mkdir()
    for p in (outside / "V1" / "spatial").iterdir():
        (inside / p.name).symlink_to(p)
    (vis / "spatial").symlink_to(inside)
    refused(str(outside / "V1" / "spatial"))
    # a link inside that stays inside: fine
    (vis / "spatial").unlink()
    shutil.copytree(outside / "V1" / "spatial", cohort / "spatial_copy")
    (vis / "spatial").symlink_to(cohort / "spatial_copy")
    assert check_inputs(load_spec(spec)) == []
    # without confinement, links out are allowed (the default)
    spec.write_text(spec.read_text().replace("confine_to_spec_dir: true", "confine_to_spec_dir: false"))
    (vis / "spatial").unlink()
    (vis / "spatial").symlink_to(outside / "V1" / "spatial")
    assert check_inputs(load_spec(spec)) == []


# ------------------------------------------------------------------------------------------------ accepted labels
@pytest.mark.parametrize("case", [pytest.param(c, id=c["id"]) for c in make_corpus.ACCEPTED])
def test_label_rows_that_join_no_spot_are_skipped_counted_and_said(case, tmp_path):
    """Only the counts and spot files are strict: label rows with NA coordinates, of no spot, or labelling one
    spot two ways are skipped, counted in ``labels_join`` and said in the slide's warnings (naming the file)."""
    labels = CORPUS / case["labels"]
    a = read_legacy_st(CORPUS / "legacy/S1.tsv.gz", CORPUS / "legacy/S1_selection.tsv", labels=labels,
                       slide_id="S1")
    assert a.n_obs == 16  # the slide itself is whole
    assert int(a.obs["label"].notna().sum()) == case["labelled"]
    join = a.uns["senca"]["labels_join"]
    assert {k: join[k] for k in case["join"]} == case["join"], join
    warnings = list(a.uns["senca"]["warnings"])
    assert all("\n" not in w and str(labels) in w for w in warnings), warnings
    for text in case["warnings"]:
        assert any(text in w for w in warnings), (text, warnings)
    # validate says the cohort holding it is fine; the warnings survive the slide's h5ad
    spec = tmp_path / "cohort.yaml"
    spec.write_text(f"name: c\npatients:\n  - id: P\n    slides:\n      - id: S1\n        reader: legacy_st\n"
                    f"        counts: {CORPUS / 'legacy/S1.tsv.gz'}\n"
                    f"        spots: {CORPUS / 'legacy/S1_selection.tsv'}\n"
                    f"        labels: {labels}\n")
    assert check_inputs(load_spec(spec)) == []
    a.write_h5ad(tmp_path / "S1.h5ad")
    assert read_h5ad(tmp_path / "S1.h5ad").uns["senca"]["warnings"] == warnings


def test_a_clean_label_file_gives_no_warning():
    a = read_legacy_st(CORPUS / "legacy/S1.tsv.gz", CORPUS / "legacy/S1_selection.tsv",
                       labels=CORPUS / "legacy/S1_labels.tsv", slide_id="S1")
    assert "warnings" not in a.uns["senca"]
    assert a.uns["senca"]["labels_join"] == {"n_labels_only": 0, "n_unlabelled": 0, "n_no_coordinates": 0,
                                             "n_ambiguous": 0}


# ------------------------------------------------------------------------------------------------ spec + data
@pytest.mark.parametrize("case", _by_entry("check_inputs"))
def test_valid_spec_with_bad_data_names_slide_file_and_field(case):
    path = CORPUS / case["args"]["spec"]
    spec = load_spec(path)
    [issue] = check_inputs(spec)
    assert issue.field == case["field"], issue
    assert issue.line is not None and issue.line > 1
    _assert_names(issue.message, case)
    if case["slide"]:
        assert "'S1'" not in issue.message  # the good slide of the cohort is not named
    code, out = _validate("--strict", str(path))
    assert code == 2
    assert case["field"] in out and case["text"].lower() in out.lower()


def test_the_good_corpus_slides_read_cleanly():
    """The corpus' good slide and Visium folder are valid: each bad case differs from them in one thing."""
    a = read_legacy_st(CORPUS / "legacy/S1.tsv.gz", CORPUS / "legacy/S1_selection.tsv",
                       labels=CORPUS / "legacy/S1_labels.tsv", image=CORPUS / "legacy/S1.jpg", slide_id="S1")
    assert a.n_obs == 16 and a.n_vars == 3 and a.obs["label_scored"].sum() == 12
    hist.patch_features(a)
    assert a.obsm["X_hist"].shape[0] == 16
    v = read_visium(CORPUS / "visium/V1")
    assert v.n_obs == 16 and v.n_vars == 3 and v.uns["senca"]["grid"] == "hex"


def test_console_script_prints_no_traceback():
    """The installed ``senca-platform`` on a bad spec and on a cohort with a bad slide (real process)."""
    exe = shutil.which("senca-platform") or str(Path(sys.executable).parent / "senca-platform")
    for spec, strict in (("spec/alias_bomb.yaml", []), ("spec/one_bad_slide.yaml", ["--strict"])):
        out = subprocess.run([exe, "validate", *strict, str(CORPUS / spec)], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 2, out.stderr
        assert "Traceback" not in out.stderr + out.stdout
        assert out.stderr.strip()


# ------------------------------------------------------------------------------------------------ k > spots
def test_cluster_k_above_spots_and_tiny_slides():
    """``tl.cluster``: k above the spots is one SlideError naming the slide and 'k'; a slide with fewer spots
    than PCA components still clusters (two far-apart groups of 3 spots come out as the two regions)."""
    import numpy as np

    from senca_core.errors import ConfigError
    from senca_core.tl import cluster

    a = read_legacy_st(CORPUS / "legacy/S1.tsv.gz", CORPUS / "legacy/S1_selection.tsv", slide_id="S1")
    rng = np.random.default_rng(0)
    a.obsm["X_senca"] = rng.normal(size=(a.n_obs, 8))
    with pytest.raises(SlideError) as info:
        cluster(a, k=40)
    assert info.value.slide == "S1" and info.value.field == "k" and "k=40" in str(info.value)
    assert "only 16 spots" in str(info.value)
    tiny = a[:6].copy()
    tiny.obsm["X_senca"] = np.vstack([rng.normal(0, 0.1, (3, 8)), rng.normal(5, 0.1, (3, 8))])
    assert cluster(tiny, k=2, refine=False) == 2
    regions = tiny.obs["region"].astype(str).to_numpy()
    assert len(set(regions[:3])) == 1 and len(set(regions[3:])) == 1 and regions[0] != regions[3]
    with pytest.raises(SlideError) as info:
        cluster(a[:1].copy())
    assert info.value.slide == "S1" and "need at least 2" in str(info.value)
    with pytest.raises(ConfigError):
        cluster([], k=2)
