"""How many training workers a cohort is worth (``jobs.train.plan_workers``): slides, spots and spot-epochs.

A Ray Train worker group costs about 10 s to start on a 2-core machine; DDP over two workers saves a share of each
epoch. The plan gives a worker group only to trainings long enough to pay that back (``min_spot_epochs_per_worker``,
docs/BENCHMARKS.md, "thirty-first stop"), and the census before Ray starts asks the same question
(``may_use_worker_groups``), so the two never disagree.
"""

from __future__ import annotations

import pytest

from jobs.train import may_use_worker_groups, most_epochs, plan_workers

SPOTS_8X2000 = 16_000


@pytest.mark.parametrize("epochs,workers", [(20, 1), (100, 1), (187, 1), (188, 2), (200, 2)])
def test_short_trainings_train_on_one_worker(epochs, workers):
    got, why = plan_workers(n_slides=8, n_spots=SPOTS_8X2000, num_workers=2, min_spots_per_worker=5000,
                            epochs=epochs, min_spot_epochs_per_worker=1_500_000)
    assert got == workers
    if workers == 1:
        assert f"{SPOTS_8X2000} spots x {epochs} epochs = {SPOTS_8X2000 * epochs:,} spot-epochs" in why
        assert "training.min_spot_epochs_per_worker" in why
    else:
        assert why == "2 worker(s) as configured"


def test_each_minimum_names_its_own_field():
    by_slides = plan_workers(n_slides=1, n_spots=10**6, num_workers=4, min_spots_per_worker=5000, epochs=200,
                             min_spot_epochs_per_worker=1)
    assert by_slides == (1, "1 worker(s) instead of 4: the cohort has 1 slide(s)")
    by_spots = plan_workers(n_slides=8, n_spots=12_000, num_workers=4, min_spots_per_worker=5000, epochs=10_000,
                            min_spot_epochs_per_worker=1)
    assert by_spots[0] == 2 and "training.min_spots_per_worker" in by_spots[1]
    by_work = plan_workers(n_slides=8, n_spots=40_000, num_workers=4, min_spots_per_worker=5000, epochs=50,
                           min_spot_epochs_per_worker=1_000_000)
    assert by_work[0] == 2 and "training.min_spot_epochs_per_worker" in by_work[1]


@pytest.mark.parametrize("minimum", [0, None])
def test_the_spot_epoch_minimum_turns_off(minimum):
    kwargs = {} if minimum is None else {"epochs": 1, "min_spot_epochs_per_worker": minimum}
    assert plan_workers(n_slides=2, n_spots=100, num_workers=2, min_spots_per_worker=0, **kwargs)[0] == 2


@pytest.mark.parametrize("n_spots,epochs", [(16_000, 20), (16_000, 100), (16_000, 187), (16_000, 188), (600, 200),
                                            (19_200, 200), (None, 20)])
def test_the_census_and_the_plan_agree(n_spots, epochs):
    """``may_use_worker_groups`` (asked before Ray starts, to decide Ray's dashboard) says yes exactly when the plan
    would give the cohort more than one worker; an unknown count keeps the worker group possible."""
    minimums = {"min_spots_per_worker": 5000, "min_spot_epochs_per_worker": 1_500_000}
    may = may_use_worker_groups(n_slides=8, num_workers=2, n_spots=n_spots, epochs=epochs, **minimums)
    if n_spots is None:
        assert may
    else:
        assert may == (plan_workers(n_slides=8, n_spots=n_spots, num_workers=2, epochs=epochs, **minimums)[0] > 1)


def test_tuned_epochs_count_at_their_most():
    assert most_epochs(20) == 20
    assert most_epochs(20, {"lr": {"type": "loguniform", "low": 0.001, "high": 0.01}}) == 20
    assert most_epochs(20, {"epochs": {"type": "choice", "values": [10, 300, 50]}}) == 300
    assert most_epochs(20, {"epochs": {"type": "randint", "low": 5, "high": 80}}) == 80
    assert most_epochs(400, {"epochs": {"type": "randint", "low": 5, "high": 80}}) == 400


def test_the_planned_workers_key_the_training_cache():
    """A training stage's cache key holds the workers planned: changing a minimum that changes the plan (one task
    instead of two DDP workers) trains again instead of reusing the other network."""
    from jobs.stage_model import scaling_key

    t = {"num_workers": 2, "use_gpu": False, "resources_per_worker": {"CPU": 1.0}}
    assert scaling_key(t, 1) != scaling_key(t, 2)
    assert scaling_key(t, 2) == scaling_key(dict(t), 2)
