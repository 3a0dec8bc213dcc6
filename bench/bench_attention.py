"""The neighbourhood attention's kernels side by side, alone and inside a training epoch
(``senca_core.model._neighbour_attention``): sparse rows (the CPU default since the twenty-eighth stop) against the
gathered kernel, over cache-sized blocks of spots (the CPU default before it; the same bits as one block) and over
one block of all spots.

    .venv/bin/python bench/bench_attention.py [--sections DLPFC A1] [--threads 1 2] [--reps 8]

The settings alternate in short runs (five epochs, twenty kernel calls) so that a slow minute of the machine hits
each; the table gives the median and the range per setting. Kernel: the DLPFC 151673 shape (3,639 spots, 7
neighbours, 4 heads of 32) and HER2ST's (346 spots, 9 neighbours) on a grid's neighbourhoods, forward and
backward, inputs in the dtype training feeds it (bfloat16 where ``precision: auto`` trains in it). Epochs: the
default model on the labelled sections (skipped without ../shared). The sparse kernel computes in float32 and so
gives other bits than the gathered one under bfloat16: its regions are measured in docs/BENCHMARKS.md, not here.
Numbers are benchmarks, never assertions.
"""

from __future__ import annotations

import sys
import warnings

warnings.filterwarnings("ignore")
sys.path.insert(0, __file__.rsplit("/", 1)[0])

import torch  # noqa: E402

from senca_core.model._precision import training_dtype  # noqa: E402
from senca_core.model import _neighbour_attention as kernel  # noqa: E402
from _epochs import alternating_call_ms, compare_settings  # noqa: E402
from senca_core.model._train import deterministic  # noqa: E402

#: the settings compared: (sparse rows on CPU, the gathered kernel's block bytes)
SETTINGS = {"sparse rows (default)": (True, kernel.BLOCK_BYTES),
            "gathered, blocks of ~1 MB": (False, kernel.BLOCK_BYTES),
            "gathered, one block": (False, 1 << 62)}
BASE = "gathered, blocks of ~1 MB"


def _use(name: str) -> None:
    kernel.SPARSE_ON_CPU, kernel.BLOCK_BYTES = SETTINGS[name]


def _grid_neighbours(n: int, k: int, width: int = 60) -> torch.Tensor:
    """(n, k): each spot and its nearest cells on a ``width``-wide grid (wrapping at the ends), as on a slide."""
    offsets = [0, 1, -1, width, -width, width + 1, -width - 1, width - 1, -width + 1][:k]
    return (torch.arange(n).unsqueeze(1) + torch.tensor(offsets)) % n


def _kernel_call(n: int, k: int, reps: int) -> dict[str, list[float]]:
    g = torch.Generator().manual_seed(0)
    dtype = training_dtype("auto", torch.device("cpu"))
    q, keys, values = (torch.randn(n, 4, 32, generator=g).to(dtype).requires_grad_(True) for _ in range(3))
    nb = _grid_neighbours(n, k)
    keep = ((torch.rand(n, 4, k, generator=g) >= 0.1).float() / 0.9).to(dtype)
    with deterministic():
        return alternating_call_ms(SETTINGS, lambda: kernel.neighbour_attention(q, keys, values, nb, keep)[0]
                                   .float().sum().backward(), reps, before=_use)


def main() -> None:
    print(f"inputs in {training_dtype('auto', torch.device('cpu'))} (what training feeds the kernel on this CPU)")
    shapes = (("kernel, DLPFC shape (3,639 x 7)", 3639, 7), ("kernel, HER2ST shape (346 x 9)", 346, 9))
    parts = [(label, lambda reps, n=n, k=k: _kernel_call(n, k, reps)) for label, n, k in shapes]
    compare_settings(__doc__, "kernel", BASE, list(SETTINGS), parts, _use)


if __name__ == "__main__":
    main()
