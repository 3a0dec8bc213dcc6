"""tl.cluster(restarts=r): the cut from r clustering seeds, the medoid partition kept (``senca_core.tl._restarts``)."""

from __future__ import annotations

import numpy as np
import pytest

from senca_core import tl
from senca_core.errors import ConfigError
from senca_core.tl import _restarts
from senca_core.tl._restarts import medoid_index, restart_seeds

from _state_slides import state_slide


def _ambiguous(seed: int = 1):
    """Three noisy tissue states cut into five regions: the clustering seed changes the cut."""
    return state_slide("S", [0.4, 0.3, 0.3], [0, 0, 0, 0], noise=1.0, n=300, seed=seed)


def _regions(a) -> np.ndarray:
    return a.obs["region"].astype(int).to_numpy()


def test_the_medoid_is_the_partition_the_others_agree_with_most_whatever_its_ids():
    a = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    b = np.array([5, 5, 5, 7, 7, 7, 7, 9, 9])  # a with spot 6 moved (other ids)
    c = np.array([1, 1, 2, 2, 2, 2, 2, 0, 0])  # b with spot 2 moved too: b lies between a and c
    chosen, means = medoid_index([a, b, c])
    assert chosen == 1 and means[1] == max(means)
    assert medoid_index([a, a.copy(), b])[0] == 0  # a tie: the first
    assert medoid_index([b]) == (0, [1.0])
    assert restart_seeds(7, 3) == [7, 107, 207]


def test_restarts_keep_one_of_their_cuts_exactly_and_its_model():
    a = _ambiguous()
    model = tl.cluster(a, 5, seed=0, return_model=True, n_pcs=None, refine=False)
    report = model.restarts_report
    assert report["seeds"] == [0, 100, 200] and len(report["agreement"]) == 3
    assert report["chosen"] == int(np.argmax(report["agreement"]))
    assert report["chosen"] != 0  # here a restart other than the first seed's: the choice is exercised
    chosen_seed = report["seeds"][report["chosen"]]
    alone = _ambiguous()
    tl.cluster(alone, 5, seed=chosen_seed, restarts=1, n_pcs=None, refine=False)
    np.testing.assert_array_equal(_regions(a), _regions(alone))  # the chosen restart's cut, to the spot
    np.testing.assert_array_equal(model.predict(a), _regions(a))  # and its model re-assigns it
    first = _ambiguous()
    tl.cluster(first, 5, seed=0, restarts=1, n_pcs=None, refine=False)
    assert not np.array_equal(_regions(first), _regions(a))


def test_one_restart_is_the_one_seed_cut():
    a, b = _ambiguous(), _ambiguous()
    model = tl.cluster(a, 4, seed=3, restarts=1, return_model=True, n_pcs=None)
    assert not hasattr(model, "restarts_report")
    tl.cluster(b, 4, seed=3, restarts=1, n_pcs=None)
    np.testing.assert_array_equal(_regions(a), _regions(b))


def test_k_auto_reads_k_once_and_the_chosen_restart_keeps_its_report(monkeypatch):
    monkeypatch.setattr(_restarts, "medoid_index", lambda parts: (len(parts) - 1, [0.0] * len(parts)))
    a = _ambiguous()
    model = tl.cluster(a, None, seed=0, return_model=True, n_pcs=None)
    assert model.restarts_report["chosen"] == 2
    assert model.k_auto is not None and model.k_auto["k"] == model.k_requested  # the first restart's reading
    b = _ambiguous()
    tl.cluster(b, model.k_requested, seed=200, restarts=1, n_pcs=None)
    np.testing.assert_array_equal(_regions(a), _regions(b))  # the last restart, cut at the k the first read


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
def test_restarts_must_be_a_positive_integer(bad):
    with pytest.raises(ConfigError) as err:
        tl.cluster(_ambiguous(), 3, restarts=bad)
    assert err.value.field == "restarts"


def test_slides_cut_alone_each_report_their_restarts_and_the_console_says_so():
    from jobs._report_data import restart_agreement, restarts_line

    slides = [_ambiguous(seed) for seed in (1, 2)]
    for sid, a in zip(("S1", "S2"), slides):
        a.uns["senca"] = {"slide_id": sid}
    model = tl.cluster(slides, 4, seed=0, cut_by="slide", return_model=True, n_pcs=None)
    each = model.restarts_report["slides"]
    assert set(each) == {"S1", "S2"}
    for sid, a in zip(("S1", "S2"), slides):  # each slide's own restarts: its report is its own cut's
        alone = _ambiguous(int(sid[1]))
        report = tl.cluster(alone, 4, seed=0, return_model=True, n_pcs=None).restarts_report
        assert each[sid] == report and restart_agreement(report) == max(report["agreement"])
    line = restarts_line(model.restarts_report)
    assert "each slide's cut from 3 clustering seeds" in line
    assert f"S1 {restart_agreement(each['S1']):.2f}" in line and f"S2 {restart_agreement(each['S2']):.2f}" in line
    one = tl.cluster(_ambiguous(), 5, seed=0, return_model=True, n_pcs=None, refine=False).restarts_report
    assert f"seed {one['seeds'][one['chosen']]}" in restarts_line(one) and "(0, 100, 200)" in restarts_line(one)


def test_a_new_slide_cut_alone_reports_its_own_restarts_and_a_training_slide_the_fits():
    """``senca-platform predict`` through a per-slide model: a new slide is cut from the fit's clustering seeds and
    its report is that cut's; a training slide gets its regions and the fit's report back."""
    from jobs.stage_predict import slide_regions, slide_regions_report

    slides = [_ambiguous(seed) for seed in (1, 2)]
    for sid, a in zip(("S1", "S2"), slides):
        a.uns["senca"] = {"slide_id": sid}
    model = tl.cluster(slides, 4, seed=0, cut_by="slide", return_model=True, n_pcs=None)
    X1 = np.asarray(slides[0].obsm["X_senca"])
    labels, report = slide_regions_report(model, X1, slides[0].obsm.get("spatial_neighbors"))
    assert (labels == _regions(slides[0])).all() and report == model.restarts_report["slides"]["S1"]
    new = _ambiguous(3)
    X = np.asarray(new.obsm["X_senca"])
    labels, report = slide_regions_report(model, X, new.obsm.get("spatial_neighbors"))
    alone = tl.cluster(_ambiguous(3), **{**model.settings, "return_model": True}).restarts_report
    assert report == alone and len(report["seeds"]) == 3
    assert (labels == slide_regions(model, X, new.obsm.get("spatial_neighbors"))).all()
    pooled = tl.cluster(_ambiguous(), 4, seed=0, return_model=True, n_pcs=None)  # a pooled model: no restarts
    assert slide_regions_report(pooled, X, None)[1] is None


@pytest.mark.slow
def test_predict_reports_each_slides_restarts(demo_cli_run, tmp_path):
    """``senca-platform predict`` with the demo's registered model (its slides cut alone at k auto): every slide's
    row, console line and MLflow metric carry that slide's restarts, the run's own for its training slides."""
    import json

    from mlflow.tracking import MlflowClient

    from jobs._report_data import restart_agreement
    from senca_platform.predict import predict_cohort

    out, proc = demo_cli_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "cohort_summary.json").read_text())
    said: list[str] = []
    uri = summary["mlflow"]["tracking_uri"]
    pred = predict_cohort(summary["registered_model"]["registered_uri"], out.parent / "cohort.yaml",
                          tracking_uri=uri, output_dir=tmp_path / "pred", echo=said.append).summary
    assert pred["status"] == "ok"
    metrics = MlflowClient(tracking_uri=uri).get_run(pred["mlflow_run_id"]).data.metrics
    for row in pred["slides"]:
        fit = summary["region_restarts"]["slides"][row["slide"]]
        assert row["restarts"] == fit
        assert any(m.startswith(f"slide {row['slide']}: regions: the cut from 3 clustering seeds") for m in said)
        assert metrics[f"restart_agreement_{row['slide']}"] == pytest.approx(restart_agreement(fit))
    saved = json.loads((tmp_path / "pred" / "predict_summary.json").read_text())
    assert [r["restarts"] for r in saved["slides"]] == [r["restarts"] for r in pred["slides"]]
