"""Training epochs and single calls of several settings timed side by side, and their table rows (the benches that
compare a setting's speed: ``bench_attention.py``, ``bench_dropout.py``, ``bench_precision.py``)."""

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


def alternating_call_ms(names, call: Callable[[], object], reps: int, *,
                        before: Callable[[str], None]) -> dict[str, list[float]]:
    """Milliseconds per ``call()`` under each setting of ``names``, the settings timed in turns (``before(name)``,
    three untimed calls, twenty timed) so that a slow minute of the machine hits every one; ``reps`` turns each."""
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(reps):
        for name in names:
            before(name)
            for _ in range(3):
                call()
            t = time.perf_counter()
            for _ in range(20):
                call()
            times[name].append((time.perf_counter() - t) / 20 * 1000)
    return times


def median_rows(cells: str, times: dict[str, list[float]], base: str) -> list[str]:
    """One markdown row per setting: ``cells``, its name, median and range of ``times`` and the median against
    ``base``'s."""
    reference = statistics.median(times[base])
    return [f"| {cells} | {name} | {statistics.median(v):.1f} | {min(v):.1f}–{max(v):.1f} | "
            f"{statistics.median(v) / reference:.2f} |" for name, v in times.items()]


def compare_settings(description: str, what: str, base: str, names: list[str], parts: list[tuple[str, Callable]],
                     before: Callable[[str], None], default_reps: int = 8) -> None:
    """A bench's command line and table: per torch thread count, each part (``(label, times_of(reps))``) and then
    training epochs of the default model on the labelled sections, setting ``names`` side by side (``before(name)``
    switches to one; the first is left in place), each row against ``base``."""
    import argparse

    import torch

    from bench_regions import load_section, shared_ready

    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", nargs="*", default=["DLPFC", "A1"])
    p.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    p.add_argument("--reps", type=int, default=default_reps)
    args = p.parse_args()
    real = shared_ready()
    print(f"| what | torch threads | {what} | median ms | range ms | against {base} |")
    print("|---|---|---|---|---|---|")
    cfg = SencaConfig().validate()
    for threads in args.threads:
        torch.set_num_threads(threads)
        for label, times_of in parts:
            print("\n".join(median_rows(f"{label} | {threads}", times_of(args.reps), base)), flush=True)
        for section in args.sections if real else []:
            times = alternating_epoch_ms(load_section(section), {name: cfg for name in names}, args.reps,
                                         before=before)
            print("\n".join(median_rows(f"epoch, {section} (default model) | {threads}", times, base)), flush=True)
        before(names[0])
    if not real:
        print("(epochs skipped: the shared sections are not here)")
