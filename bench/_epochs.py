"""Training epochs of several settings timed side by side, and their table rows (the benches that compare a
setting's speed: ``bench_attention.py``, ``bench_precision.py``)."""

from __future__ import annotations

import random
import statistics
import time
from typing import Callable

from senca_core.model import SencaConfig
from senca_core.model._train import build_model, deterministic, make_batch, make_optimizer, run_epoch, seed_everything


def alternating_epoch_ms(a, configs: dict[str, SencaConfig], reps: int, *,
                         before: Callable[[str], None] | None = None, warmup: bool = False) -> dict[str, list[float]]:
    """Milliseconds per epoch of one network per setting on slide ``a``, the settings trained in turns of five
    epochs so that a slow minute of the machine hits every one; ``reps`` timed turns each. ``before(name)`` runs
    before each of a setting's turns (a setting that lives outside the config); ``warmup``: one more first turn,
    not timed."""
    times: dict[str, list[float]] = {name: [] for name in configs}
    with deterministic():
        runs = {}
        for name, config in configs.items():  # one network per setting, each trained on in turn
            generator = seed_everything(0)
            batches = [make_batch(a, config)]
            model = build_model(config, batches)
            runs[name] = (model, make_optimizer(model, config), generator, random.Random(0), batches, config)
        for turn in range(reps + int(warmup)):
            for name, (model, optimizer, generator, order, batches, config) in runs.items():
                if before is not None:
                    before(name)
                t = time.perf_counter()
                for _ in range(5):
                    run_epoch(model, batches, optimizer, 1, config, generator, order)
                if turn or not warmup:
                    times[name].append((time.perf_counter() - t) / 5 * 1000)
    return times


def median_rows(cells: str, times: dict[str, list[float]], base: str) -> list[str]:
    """One markdown row per setting: ``cells``, its name, median and range of ``times`` and the median against
    ``base``'s."""
    reference = statistics.median(times[base])
    return [f"| {cells} | {name} | {statistics.median(v):.1f} | {min(v):.1f}–{max(v):.1f} | "
            f"{statistics.median(v) / reference:.2f} |" for name, v in times.items()]
