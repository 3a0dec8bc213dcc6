"""The dropout masks side by side, alone and inside a training epoch
(``senca_core.model._network.draw_keep_mask``): four elements cut from each 64-bit draw of torch's generator (the
default since the twenty-ninth stop) against one uniform float drawn per element and compared with p (the default
before it).

    .venv/bin/python bench/bench_dropout.py [--sections DLPFC A1] [--threads 1 2] [--reps 8]

The settings alternate in short runs (five epochs, twenty masks) so that a slow minute of the machine hits each;
the table gives the median and the range per setting. Masks: the shapes a DLPFC 151673 epoch draws (3,639 spots
at the encoder's 2 x 128 width, at 128, and the attention's (spots, 4 heads, 7 neighbours)). Epochs: the default
model on the labelled sections (skipped without ../shared). Other masks train other networks: their regions are
measured in docs/BENCHMARKS.md, not here. Numbers are benchmarks, never assertions.
"""

from __future__ import annotations

import sys
import warnings

warnings.filterwarnings("ignore")
sys.path.insert(0, __file__.rsplit("/", 1)[0])

import torch  # noqa: E402

from senca_core.model import _network  # noqa: E402
from _epochs import alternating_call_ms, compare_settings  # noqa: E402

BITS = _network.draw_keep_mask


def _uniform_per_element(shape, p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The default before: one uniform float per element, kept where it is at least p."""
    return (torch.rand(shape, dtype=dtype, device=device) >= p).to(dtype) / (1.0 - p)


SETTINGS = {"four lanes per 64-bit draw (default)": BITS, "a uniform float per element": _uniform_per_element}
BASE = "a uniform float per element"


def _use(name: str) -> None:
    _network.draw_keep_mask = SETTINGS[name]


def _masks(shape: tuple[int, ...], reps: int) -> dict[str, list[float]]:
    return alternating_call_ms(SETTINGS, lambda: _network.draw_keep_mask(shape, 0.1, torch.float32,
                                                                         torch.device("cpu")), reps, before=_use)


def main() -> None:
    parts = [(f"mask {' x '.join(map(str, shape))}", lambda reps, shape=shape: _masks(shape, reps))
             for shape in ((3639, 256), (3639, 128), (3639, 4, 7))]
    compare_settings(__doc__, "mask", BASE, list(SETTINGS), parts, _use)


if __name__ == "__main__":
    main()
