"""The neighbourhood attention's kernel over cache-sized blocks of spots against one block of all spots, alone and
inside a training epoch (``senca_core.model._neighbour_attention``: the results are the same to the last bit).

    .venv/bin/python bench/bench_attention.py [--sections DLPFC A1] [--threads 1 2] [--reps 8]

The two settings alternate in short runs (five epochs, twenty kernel calls) so that a slow minute of the machine
hits both; the table gives the median and the range per setting. Kernel: the DLPFC 151673 shape (3,639 spots, 7
neighbours, 4 heads of 32) and HER2ST's (346 spots, 9 neighbours), forward and backward. Epochs: the default
model on the labelled sections (skipped without ../shared). Numbers are benchmarks, never assertions.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

warnings.filterwarnings("ignore")
sys.path.insert(0, __file__.rsplit("/", 1)[0])

import torch  # noqa: E402

from senca_core.model import SencaConfig  # noqa: E402
from senca_core.model import _neighbour_attention as kernel  # noqa: E402
from _epochs import alternating_epoch_ms, median_rows  # noqa: E402
from senca_core.model._train import deterministic  # noqa: E402

#: the two settings compared: the shipped block size, and one block of all spots (the kernel before blocks)
SETTINGS = {"blocks of ~1 MB (default)": kernel.BLOCK_BYTES, "one block": 1 << 62}


def _kernel_call(n: int, k: int, reps: int) -> dict[str, list[float]]:
    g = torch.Generator().manual_seed(0)
    q, keys, values = (torch.randn(n, 4, 32, generator=g, requires_grad=True) for _ in range(3))
    nb = torch.randint(0, n, (n, k), generator=g)
    keep = (torch.rand(n, 4, k, generator=g) >= 0.1).float() / 0.9
    times: dict[str, list[float]] = {name: [] for name in SETTINGS}
    with deterministic():
        for _ in range(reps):
            for name, size in SETTINGS.items():
                kernel.BLOCK_BYTES = size
                for _ in range(3):
                    kernel.neighbour_attention(q, keys, values, nb, keep)[0].sum().backward()
                t = time.perf_counter()
                for _ in range(20):
                    kernel.neighbour_attention(q, keys, values, nb, keep)[0].sum().backward()
                times[name].append((time.perf_counter() - t) / 20 * 1000)
    return times


def _epochs(section: str, reps: int) -> dict[str, list[float]]:
    from bench_regions import load_section

    cfg = SencaConfig().validate()
    return alternating_epoch_ms(load_section(section), {name: cfg for name in SETTINGS}, reps,
                                before=lambda name: setattr(kernel, "BLOCK_BYTES", SETTINGS[name]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", nargs="*", default=["DLPFC", "A1"])
    p.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    p.add_argument("--reps", type=int, default=8)
    args = p.parse_args()
    from bench_regions import shared_ready

    real = shared_ready()
    print("| what | torch threads | kernel | median ms | range ms | against one block |")
    print("|---|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for label, n, k in (("kernel, DLPFC shape (3,639 x 7)", 3639, 7), ("kernel, HER2ST shape (346 x 9)", 346, 9)):
            print("\n".join(median_rows(f"{label} | {threads}", _kernel_call(n, k, args.reps), "one block")),
                  flush=True)
        for section in args.sections if real else []:
            print("\n".join(median_rows(f"epoch, {section} (default model) | {threads}",
                                         _epochs(section, args.reps), "one block")), flush=True)
    if not real:
        print("(epochs skipped: the shared sections are not here)")


if __name__ == "__main__":
    main()
