"""The snapshot ensemble (``SencaConfig.snapshots``): the network at late epochs, read out side by side; training
itself untouched, in-process and in the platform's loop (its checkpoints carry the snapshots, a resume keeps them)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from anndata import AnnData

from senca_core.model import SencaConfig, fit, load_model, members, readout, save_model, snapshot_epochs, \
    split_snapshots

from _toy_slide import TINY, toy_slide

TINY = {**TINY, "epochs": 7}


def _slide() -> AnnData:
    return toy_slide()


def _states(model) -> list[dict]:
    return [{k: v.clone() for k, v in m.state_dict().items()} for m in members(model)]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_snapshot_epochs_are_the_last_and_every_n_before_it_never_before_the_first():
    assert snapshot_epochs(SencaConfig(epochs=200, snapshots=3)) == {174, 149}
    assert snapshot_epochs(SencaConfig(epochs=200)) == set()
    assert snapshot_epochs(SencaConfig(epochs=20, snapshots=3)) == set(), "a short (tuning) training: none fit"
    assert snapshot_epochs(SencaConfig(epochs=7, snapshots=3, snapshot_every=2)) == {4, 2}


@pytest.mark.parametrize("n_models", [1, 2])
def test_the_snapshots_are_the_networks_at_those_epochs_and_the_last_is_the_plain_training(n_models, tmp_path):
    a = _slide()
    plain, _ = fit(a, SencaConfig(**TINY, n_models=n_models))
    seen: dict[int, list[dict]] = {}
    cfg = SencaConfig(**TINY, n_models=n_models, snapshots=3, snapshot_every=2)

    import senca_core.model._train as train

    original = train.run_epoch

    def spy(model, *args):
        out = original(model, *args)
        seen[args[2]] = _states(model)  # args: batches, optimizer, epoch, ...
        return out

    train.run_epoch = spy
    try:
        stored, _ = fit(a, cfg)
    finally:
        train.run_epoch = original
    got = _states(stored)
    assert len(got) == 3 * n_models
    expected = seen[2] + seen[4] + seen[6]  # oldest first, the last epoch's networks last
    assert all(_same(g, e) for g, e in zip(got, expected))
    assert all(_same(g, p) for g, p in zip(got[-n_models:], _states(plain))), "training is untouched"

    z, r = readout(stored, a)
    _, r_plain = readout(plain, a)
    assert r.shape[1] == 3 * r_plain.shape[1]
    np.testing.assert_array_equal(r[:, -r_plain.shape[1]:], r_plain)
    back = load_model(save_model(stored, tmp_path / "m.pt"))
    assert len(members(back)) == 3 * n_models and back.config.snapshots == 3
    np.testing.assert_array_equal(readout(back, a)[1], r)


def test_split_snapshots_inverts_the_stored_layout():
    a = _slide()
    for n_models in (1, 2):
        stored, _ = fit(a, SencaConfig(**TINY, n_models=n_models, snapshots=2, snapshot_every=3))
        trained, _ = fit(a, SencaConfig(**TINY, n_models=n_models))
        snaps, current = split_snapshots(stored.state_dict(), len(members(stored)), n_models)
        assert len(snaps) == 1 and _same(current, trained.state_dict())
        assert snaps[0].keys() == current.keys()
        none, same = split_snapshots(trained.state_dict(), n_models, n_models)
        assert none == [] and _same(same, trained.state_dict())


def test_the_platform_loop_stores_the_snapshots_and_a_resume_keeps_them(tmp_path):
    """The loop's final model equals ``fit``'s snapshot ensemble; stopped after its first snapshot and resumed from
    the checkpoint, it ends with the same model."""
    from jobs.train_loop import read_checkpoint, run_loop
    from jobs.train_sessions import SoloSession

    path = tmp_path / "toy.h5ad"
    a = _slide()
    a.write_h5ad(path)
    config = SencaConfig(**TINY, snapshots=3, snapshot_every=2)

    def cfg(epochs: int) -> dict:
        return {"model": config.replace(epochs=epochs).to_dict(), "slide_paths": [str(path)], "n_expr": 6,
                "n_hist": 4, "eval": {}, "threads": 1, "checkpoint": {"every_epochs": 1, "min_interval_s": 0}}

    whole = SoloSession(tmp_path / "whole")
    run_loop(cfg(TINY["epochs"]), whole)
    final = load_model(read_checkpoint(whole.checkpoints()[-1])[0])
    assert len(members(final)) == 3
    plain = SoloSession(tmp_path / "plain")  # checkpoints that carry snapshots leave the training's stream alone
    run_loop({**cfg(TINY["epochs"]), "model": config.replace(snapshots=1).to_dict()}, plain)
    assert _same(_states(final)[-1], load_model(read_checkpoint(plain.checkpoints()[-1])[0]).state_dict())

    class StopAfter(SoloSession):  # a worker that dies after epoch 3's checkpoint (the first snapshot is epoch 2)
        def report(self, metrics, checkpoint_dir):
            super().report(metrics, checkpoint_dir)
            if metrics["epoch"] == 3:
                raise KeyboardInterrupt

    broken = StopAfter(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        run_loop(cfg(TINY["epochs"]), broken)
    partial = torch.load(read_checkpoint(broken.checkpoints()[-1])[0], weights_only=True)
    assert partial["members"] == 2, "the checkpoint holds the snapshot so far and the network being trained"
    resumed = SoloSession(tmp_path / "resumed")
    run_loop(cfg(TINY["epochs"]), resumed)
    again = load_model(read_checkpoint(resumed.checkpoints()[-1])[0])
    assert all(_same(x, y) for x, y in zip(_states(again), _states(final)))
