"""The cohort spec: every error names the field AND the YAML line; paths resolve against the YAML file."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from senca_platform.example import example_yaml
from senca_platform.spec import SpecError, load_spec, missing_files, redact, spec_to_dict

GOOD = textwrap.dedent("""\
    name: demo
    output_dir: out
    patients:
      - id: P1
        slides:
          - id: S1
            reader: legacy_st
            counts: data/S1.tsv.gz
            spots: data/S1_selection.tsv
            image: img/S1.png
            image_scale: 0.5
      - id: P2
        slides:
          - id: S2
            reader: h5ad
            path: data/S2.h5ad
          - id: S3
            reader: visium
            path: visium/S3
    training:
      epochs: 5
      num_workers: 2
    tuning:
      enabled: true
      num_samples: 2
      search_space:
        lr: {type: loguniform, low: 0.0001, high: 0.01}
        hidden: {type: choice, values: [64, 128]}
    """)


def _write(tmp_path: Path, text: str, name: str = "cohort.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _problems(tmp_path: Path, text: str) -> list:
    with pytest.raises(SpecError) as info:
        load_spec(_write(tmp_path, text))
    return info.value.issues


def _line_of(text: str, needle: str) -> int:
    for i, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in the text")


def test_good_spec_resolves_paths_against_the_yaml_folder(tmp_path, monkeypatch):
    sub = tmp_path / "cohorts"
    sub.mkdir()
    path = _write(sub, GOOD)
    monkeypatch.chdir(tmp_path)  # the cwd must not matter
    spec = load_spec(path)
    s1 = spec.patients[0].slides[0]
    assert s1.counts == (sub / "data" / "S1.tsv.gz").resolve()
    assert s1.image == (sub / "img" / "S1.png").resolve()
    assert spec.output_dir == (sub / "out").resolve()
    assert spec.patients[1].slides[1].reader == "visium"
    assert spec.tracking_uri() == f"sqlite:///{(sub / 'out' / 'mlflow.db').resolve()}"
    assert spec.model_name == "demo" and spec.experiment_name == "demo"
    # every input file is reported missing (validate prints them; run fails only those slides)
    missing = {i.field for i in missing_files(spec)}
    assert {"patients[0].slides[0].counts", "patients[0].slides[0].image", "patients[1].slides[0].path"} <= missing


def test_unknown_key_names_field_and_line(tmp_path):
    text = GOOD.replace("  num_workers: 2", "  num_wrokers: 2")
    [issue] = _problems(tmp_path, text)
    assert issue.field == "training.num_wrokers"
    assert issue.line == _line_of(text, "num_wrokers")
    assert "unknown field" in issue.message


def test_wrong_type_deep_in_a_slide_names_field_and_line(tmp_path):
    text = GOOD.replace("image_scale: 0.5", "image_scale: half")
    [issue] = _problems(tmp_path, text)
    assert issue.field == "patients[0].slides[0].image_scale"
    assert issue.line == _line_of(text, "image_scale")


def test_negative_scale_is_refused(tmp_path):
    text = GOOD.replace("image_scale: 0.5", "image_scale: -1")
    [issue] = _problems(tmp_path, text)
    assert issue.field == "patients[0].slides[0].image_scale" and "greater than 0" in issue.message


def test_unknown_reader_points_at_the_reader_line(tmp_path):
    text = GOOD.replace("reader: visium", "reader: xenium")
    [issue] = _problems(tmp_path, text)
    assert issue.field == "patients[1].slides[1].reader"
    assert issue.line == _line_of(text, "reader: xenium")
    assert "xenium" in issue.message and "legacy_st" in issue.message


def test_missing_required_field_points_at_its_slide(tmp_path):
    text = GOOD.replace("        spots: data/S1_selection.tsv\n", "")
    assert "spots:" not in text
    [issue] = _problems(tmp_path, text)
    assert issue.field == "patients[0].slides[0].spots"
    assert issue.line == _line_of(text, "- id: S1")
    assert "missing" in issue.message


def test_field_of_another_reader_is_refused(tmp_path):
    text = GOOD.replace("        path: data/S2.h5ad\n", "        path: data/S2.h5ad\n        counts: x.tsv\n")
    assert "counts: x.tsv" in text
    [issue] = _problems(tmp_path, text)
    assert issue.field == "patients[1].slides[0].counts"
    assert issue.line == _line_of(text, "counts: x.tsv")


def test_duplicate_slide_and_patient_ids(tmp_path):
    text = GOOD.replace("- id: S3", "- id: S1").replace("- id: P2", "- id: P1")
    issues = _problems(tmp_path, text)
    by_field = {i.field: i for i in issues}
    assert set(by_field) == {"patients[1].id", "patients[1].slides[1].id"}
    assert by_field["patients[1].slides[1].id"].line == _line_of(text, "reader: visium") - 1
    assert "duplicate slide id 'S1'" in by_field["patients[1].slides[1].id"].message
    assert by_field["patients[1].id"].line == 12 and "duplicate patient id 'P1'" in by_field["patients[1].id"].message


def test_bad_ids_are_refused(tmp_path):
    text = GOOD.replace("- id: S2", "- id: ../S2")
    [issue] = _problems(tmp_path, text)
    assert issue.field == "patients[1].slides[0].id" and issue.line == _line_of(text, "../S2")


def test_model_settings_are_checked_against_senca_config(tmp_path):
    text = GOOD + "model:\n  hidden: 64\n  hiden: 3\n"
    [issue] = _problems(tmp_path, text)
    assert issue.field == "model.hiden" and issue.line == _line_of(text, "hiden: 3")
    text = GOOD + "model:\n  epochs: 3\n"
    [issue] = _problems(tmp_path, text)
    assert issue.field == "model.epochs" and "training.epochs" in issue.message
    text = GOOD + "model:\n  hidden: 30\n  n_heads: 4\n"  # SencaConfig.validate: n_heads must divide hidden
    [issue] = _problems(tmp_path, text)
    assert issue.field == "model.n_heads" and issue.line == _line_of(text, "n_heads")


def test_search_space_dimension_errors(tmp_path):
    text = GOOD.replace("lr: {type: loguniform, low: 0.0001, high: 0.01}", "lr: {type: loguniform, low: 0.01}")
    [issue] = _problems(tmp_path, text)
    assert issue.field == "tuning.search_space.lr" and issue.line == _line_of(text, "lr: {type")
    assert "'high'" in issue.message
    text = GOOD.replace("hidden: {type: choice", "hiddn: {type: choice")
    [issue] = _problems(tmp_path, text)
    assert issue.field == "tuning.search_space.hiddn" and issue.line == _line_of(text, "hiddn")


def test_tuning_enabled_needs_a_search_space(tmp_path):
    text = GOOD.split("tuning:")[0] + "tuning:\n  enabled: true\n"
    [issue] = _problems(tmp_path, text)
    assert issue.field == "tuning" and issue.line == _line_of(text, "tuning:")
    assert "search_space" in issue.message


def test_several_problems_are_all_reported_with_their_lines(tmp_path):
    text = GOOD.replace("epochs: 5", "epochs: 0").replace("num_samples: 2", "num_samples: -1")
    issues = _problems(tmp_path, text)
    assert [(i.field, i.line) for i in issues] == [("training.epochs", _line_of(text, "epochs: 0")),
                                                   ("tuning.num_samples", _line_of(text, "num_samples"))]
    rendered = str(SpecError("c.yaml", issues))
    assert f"c.yaml:{_line_of(text, 'epochs: 0')}: training.epochs" in rendered


def test_yaml_syntax_error_has_a_line(tmp_path):
    text = GOOD.replace("  num_workers: 2", "  num_workers: [2")
    [issue] = _problems(tmp_path, text)
    assert issue.field == "<yaml>" and issue.line is not None and issue.line >= _line_of(text, "num_workers")


def test_safe_load_semantics_no_python_objects(tmp_path):
    text = GOOD.replace("name: demo", "name: !!python/object/apply:os.system ['echo hi']")
    [issue] = _problems(tmp_path, text)
    assert issue.field == "<yaml>" and issue.line == 1


def test_empty_and_non_mapping_specs(tmp_path):
    assert "empty" in _problems(tmp_path, "")[0].message
    assert "mapping" in _problems(tmp_path, "- a\n- b\n")[0].message
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "nope.yaml")


def test_secrets_are_redacted_from_the_logged_spec(tmp_path):
    text = GOOD + "tracking:\n  uri: https://alice:s3cret@mlflow.example.org\n"
    spec = load_spec(_write(tmp_path, text))
    logged = spec_to_dict(spec)
    assert "s3cret" not in str(logged) and logged["tracking"]["uri"] == "https://***@mlflow.example.org"
    assert redact({"api_key": "abc", "nested": {"password": "p", "x": 1}}) == \
        {"api_key": "***", "nested": {"password": "***", "x": 1}}


def test_training_length_is_one_default_everywhere(tmp_path):
    """The spec, the example `init` writes and the model train for as long (they drifted apart once: CLI runs
    trained 100 epochs while every benchmark trained SencaConfig's 200)."""
    from senca_core.model import SencaConfig
    from senca_platform.spec.schema import TrainingSpec

    example = load_spec(_write(tmp_path, example_yaml()))
    assert example.training.epochs == TrainingSpec().epochs == SencaConfig().epochs


def test_example_spec_validates_and_points_at_real_files_when_rooted(tmp_path, her2st_root):
    path = _write(tmp_path, example_yaml(root=str(her2st_root)))
    spec = load_spec(path)
    assert [s.id for _, s in spec.slides()] == ["A1", "B1", "C1"]
    assert missing_files(spec) == []
    a1 = spec.patients[0].slides[0]
    assert a1.image.name == "A1_HE_dark_2000px.png" and abs(a1.image_scale - 2000 / 6954) < 1e-6


# ------------------------------------------------------------------------------------------------ hardening
def test_duplicate_keys_are_refused_with_both_lines(tmp_path):
    text = GOOD.replace("  num_workers: 2", "  num_workers: 2\n  num_workers: 4")
    [issue] = _problems(tmp_path, text)
    assert issue.field == "training.num_workers" and issue.line == _line_of(text, "num_workers: 4")
    assert f"first at line {_line_of(text, 'num_workers: 2')}" in issue.message


def test_unsafe_tags_name_the_tag(tmp_path):
    text = GOOD.replace("name: demo", "name: !!python/object/new:os.system [x]")
    [issue] = _problems(tmp_path, text)
    assert "'!!python/object/new:os.system' is not allowed" in issue.message and "safe YAML" in issue.message


def test_non_finite_and_mistyped_numbers(tmp_path):
    for old, new, field in [("image_scale: 0.5", "image_scale: .inf", "patients[0].slides[0].image_scale"),
                            ("low: 0.0001", "low: .nan", "tuning.search_space.lr.low")]:
        text = GOOD.replace(old, new)
        [issue] = _problems(tmp_path, text)
        assert issue.field == field and "finite" in issue.message
    text = GOOD + "model:\n  dropout: .nan\n"
    [issue] = _problems(tmp_path, text)
    assert issue.field == "model.dropout" and issue.line == _line_of(text, "dropout")
    text = GOOD.replace("values: [64, 128]", "values: [64, wide]")
    [issue] = _problems(tmp_path, text)
    assert issue.field == "tuning.search_space.hidden.values[1]" and "'wide'" in issue.message


def test_a_typo_of_a_required_field_is_one_issue(tmp_path):
    text = GOOD.replace("spots: data/S1_selection.tsv", "spot: data/S1_selection.tsv")
    [issue] = _problems(tmp_path, text)
    assert issue.field == "patients[0].slides[0].spot" and issue.line == _line_of(text, "spot:")
    assert "did you mean 'spots'" in issue.message


def test_yaml_level_guards(tmp_path):
    assert "nests too deeply" in _problems(tmp_path, "name: " + "[" * 5000 + "]" * 5000 + "\n")[0].message
    assert "refers to a node that contains it" in _problems(tmp_path, "a: &a [*a]\n")[0].message
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "latin1.yaml")
    assert "not UTF-8" in str(info.value)
    assert _problems(tmp_path, "name: a\x00b\n")[0].message.startswith("character U+0000")


def test_confined_paths_keep_the_init_example_valid(tmp_path):
    text = example_yaml().replace("# paths:", "paths:").replace("#   confine_to_spec_dir: true",
                                                                "  confine_to_spec_dir: true")
    spec = load_spec(_write(tmp_path, text))
    assert spec.paths.confine_to_spec_dir
    assert spec.patients[0].slides[0].counts == (tmp_path / "data/her2st/counts/A1.tsv.gz").resolve()
    escaped = text.replace("counts: data/her2st/counts/B1.tsv.gz", "counts: ../B1.tsv.gz")
    [issue] = _problems(tmp_path, escaped)
    assert issue.field == "patients[1].slides[0].counts" and issue.line == _line_of(escaped, "../B1.tsv.gz")
    assert "outside the spec's folder" in issue.message
    assert load_spec(_write(tmp_path, escaped.replace("confine_to_spec_dir: true", "confine_to_spec_dir: false")))


def test_check_inputs_without_reading_only_reports_missing_files(tmp_path):
    spec = load_spec(_write(tmp_path, GOOD))
    issues = missing_files(spec, read=False)
    assert issues and all(i.kind == "missing" and "file not found" in i.message for i in issues)
    assert {i.field for i in issues} == {i.field for i in missing_files(spec)}
    assert issues[0].line == _line_of(GOOD, "counts: data/S1.tsv.gz")


def test_hmrf_em_rounds_need_a_single_cut(tmp_path):
    """``clustering.prior_em_rounds`` belongs to one GMM cut: with ``consensus: true`` it is refused, naming the
    field; with ``consensus: false`` or unset (the default: the consensus unless one cut is asked for) it is taken."""
    issues = _problems(tmp_path, GOOD + "clustering:\n  prior_em_rounds: 10\n  consensus: true\n")
    assert any("clustering" in i.field and "consensus: false" in i.message for i in issues), issues
    spec = load_spec(_write(tmp_path, GOOD + "clustering:\n  prior_em_rounds: 10\n  consensus: false\n"))
    assert spec.clustering.prior_em_rounds == 10 and spec.clustering.consensus is False
    assert load_spec(_write(tmp_path, GOOD + "clustering:\n  prior_em_rounds: 10\n")).clustering.consensus is None
    assert load_spec(_write(tmp_path, GOOD)).clustering.consensus is None


def test_cut_by_defaults_to_auto_and_is_checked(tmp_path):
    """``clustering.cut_by``: the schema's default is the one the infer stage and the tuning objective fall back
    to (``auto``: each slide cut alone at k auto, the pooled cut at a given k); ``slide`` reaches ``tl.cluster``;
    anything else is refused naming the field."""
    from jobs.infer import CUT_BY_DEFAULT, cluster_args

    spec = load_spec(_write(tmp_path, GOOD))
    assert spec.clustering.cut_by == CUT_BY_DEFAULT == "auto"
    assert cluster_args({})["cut_by"] == "slide" and cluster_args({"k": 6})["cut_by"] == "cohort"
    assert cluster_args({"k": "auto", "cut_by": "cohort"})["cut_by"] == "cohort"
    spec = load_spec(_write(tmp_path, GOOD + "clustering:\n  cut_by: slide\n"))
    assert cluster_args(spec.clustering.model_dump())["cut_by"] == "slide"
    issues = _problems(tmp_path, GOOD + "clustering:\n  cut_by: patient\n")
    assert any("cut_by" in i.field for i in issues), issues


def test_restarts_default_to_three_everywhere_and_are_checked(tmp_path):
    """``clustering.restarts``: the schema's default is ``tl.cluster``'s and the one the infer stage, the tuning
    objective and the model file fall back to; a number reaches ``tl.cluster``; below 1 is refused naming it."""
    import inspect

    from jobs.infer import RESTARTS_DEFAULT, cluster_args
    from senca_core import tl

    spec = load_spec(_write(tmp_path, GOOD))
    assert spec.clustering.restarts == RESTARTS_DEFAULT == inspect.signature(tl.cluster).parameters[
        "restarts"].default == 3
    assert cluster_args({})["restarts"] == 3
    spec = load_spec(_write(tmp_path, GOOD + "clustering:\n  restarts: 1\n"))
    assert cluster_args(spec.clustering.model_dump())["restarts"] == 1
    issues = _problems(tmp_path, GOOD + "clustering:\n  restarts: 0\n")
    assert any("restarts" in i.field for i in issues), issues


def test_slide_cpus_share_an_embedded_ray_and_never_change_what_is_computed(tmp_path):
    """Unset, `preprocess.cpus_per_slide` shares an embedded Ray's CPUs among the slides (a lone slide's patches
    are described on every CPU); on a cluster 1; set, as set. It is not part of a slide's cache key, nor is
    `concurrency`: how the work runs never invalidates what was computed."""
    from jobs.pipeline import _slide_key
    from senca_platform.spec.plan import AUTO_SLIDE_CPUS_MAX, build_plan

    spec = load_spec(_write(tmp_path, GOOD))  # three slides

    def cpus(num_cpus: int, embedded: bool = True) -> float:
        return build_plan(spec, num_cpus, embedded=embedded)["preprocess"]["cpus_per_slide"]

    assert spec.preprocess.cpus_per_slide is None
    assert (cpus(2), cpus(6), cpus(9), cpus(64)) == (1.0, 2.0, 3.0, float(AUTO_SLIDE_CPUS_MAX))
    assert cpus(64, embedded=False) == 1.0
    assert build_plan(spec, 64)["preprocess"]["cpus_per_slide"] == 1.0  # not said to be embedded: a cluster
    spec.preprocess.cpus_per_slide = 0.5
    assert cpus(64) == 0.5
    slide = build_plan(spec, 2)["slides"][0]
    pp = build_plan(spec, 2)["preprocess"]
    assert _slide_key(slide, pp) == _slide_key(slide, {**pp, "cpus_per_slide": 4.0, "concurrency": 3})
    assert _slide_key(slide, pp) != _slide_key(slide, {**pp, "n_pca": pp["n_pca"] + 1})


def test_the_spot_census_bounds_what_each_reader_returns(tmp_path, her2st_root, dlpfc_root):
    """Before Ray starts, the cohort's spots are counted from its files' headers (whether Ray needs its dashboard):
    an upper bound on what each reader returns (legacy ST: the spot file's rows; Visium: the in-tissue positions;
    h5ad: the AnnData's rows); a slide that cannot be counted makes the census unknown."""
    import yaml

    from senca_core.io import read
    from senca_platform.demo import write_demo
    from senca_platform.spec.census import most_spots

    h5ad_spec = write_demo(tmp_path / "demo", n_patients=2, n_spots=60, seed=0, epochs=1, tuning=False)
    spec = yaml.safe_load(h5ad_spec.read_text())
    a1 = {"id": "A1", "reader": "legacy_st", "counts": str(her2st_root / "counts" / "A1.tsv.gz"),
          "spots": str(her2st_root / "spots" / "A1_selection.tsv")}
    dl = {"id": "D1", "reader": "visium", "path": str(dlpfc_root)}
    spec["patients"] += [{"id": "A", "slides": [a1]}, {"id": "D", "slides": [dl]}]
    path = h5ad_spec.parent / "census.yaml"  # beside the demo's spec: its slide paths are relative to it
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    cohort = load_spec(path)
    counted = {}
    for patient in cohort.patients:
        for slide in patient.slides:
            counted[slide.id] = most_spots(cohort.model_copy(update={"patients": [patient]}))
    n_read = {"A1": read(a1["counts"], reader="legacy_st", spots=a1["spots"]).n_obs, "D1": 3639}
    demo = [s for _, s in cohort.slides() if s.reader == "h5ad"]
    assert counted["D1"] == n_read["D1"]  # every in-tissue barcode is in the matrix
    assert n_read["A1"] <= counted["A1"] <= n_read["A1"] + 5  # spot rows without count rows are dropped
    assert len(demo) == 2 and all(counted[s.id] == read(s.path).n_obs == 60 for s in demo)
    assert most_spots(cohort) == sum(counted.values())
    assert most_spots(cohort, enough=100) < most_spots(cohort)  # stops once it has enough
    spec["patients"][-1]["slides"][0]["path"] = str(tmp_path / "nowhere")
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert most_spots(load_spec(path)) is None
