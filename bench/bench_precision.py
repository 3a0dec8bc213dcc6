"""Training epochs in float32 against bfloat16 autocast (``SencaConfig.precision``), side by side.

    .venv/bin/python bench/bench_precision.py [--sections DLPFC A1] [--threads 1 2] [--reps 6]

One network per setting on each labelled section (skipped without ../shared; a synthetic 3,000-spot slide
otherwise), trained in turns of five epochs so that a slow minute of the machine hits both; the table gives the
median and range of an epoch's milliseconds per setting and what this CPU's ``auto`` resolves to. Quality is not
measured here (docs/BENCHMARKS.md, "Mixed precision in training", gives the regions over 10-12 networks per
section). Numbers are benchmarks, never assertions.
"""

from __future__ import annotations

import argparse
import sys
import warnings

warnings.filterwarnings("ignore")
sys.path.insert(0, __file__.rsplit("/", 1)[0])

import torch  # noqa: E402

from _epochs import alternating_epoch_ms, median_rows  # noqa: E402
from senca_core.model import SencaConfig, precision_name  # noqa: E402

PRECISIONS = ("float32", "bfloat16")


def _slide(section: str):
    from bench_regions import load_section, shared_ready

    if section != "synthetic" and shared_ready():
        return load_section(section)
    import senca_core as sc

    a = sc.datasets.synthetic_slide(n_spots=3000, seed=0)
    sc.pp.preprocess(a)
    return a


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", nargs="*", default=["DLPFC", "A1"])
    p.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    p.add_argument("--reps", type=int, default=6)
    args = p.parse_args()
    print(f"this CPU: precision auto trains in {precision_name('auto', torch.device('cpu'))}")
    print("| section | spots | torch threads | precision | median ms / epoch | range ms | against float32 |")
    print("|---|---|---|---|---|---|---|")
    slides = {section: _slide(section) for section in args.sections}  # read once, trained at every thread count
    for threads in args.threads:
        torch.set_num_threads(threads)
        for section, a in slides.items():
            configs = {precision: SencaConfig(precision=precision).validate() for precision in PRECISIONS}
            times = alternating_epoch_ms(a, configs, args.reps, warmup=True)  # the first turn warms both up
            print("\n".join(median_rows(f"{section} | {a.n_obs} | {threads}", times, "float32")), flush=True)


if __name__ == "__main__":
    main()
