"""Training keeps its freed memory: glibc's heap is neither trimmed nor bypassed by ``mmap`` while the loop runs.

A training step allocates and frees the same few hundred MiB every epoch (the autograd graph: on DLPFC 151673 the
(spots, neighbours, heads, head width) products of the attention, 3.3 MiB each). By default glibc serves large
blocks with ``mmap`` or gives the top of the heap back to the kernel when they are freed, so every epoch faults
memory in again, zero-filled by the kernel. How much depends on what the process did before (glibc raises its
thresholds after freeing large blocks): per DLPFC epoch, 22,000-25,000 page faults (55-65 ms of kernel time) in a
process that read a prepared h5ad and trained, 14,000 after preprocessing the slide in the same process, about 5,700
in the platform's Ray worker (docs/BENCHMARKS.md, platform section, "2026-12-06, thirteenth stop"). Inside
:func:`retained_heap` blocks up to 32 MiB come from the heap (glibc's own ceiling for its dynamic threshold) and
freed memory stays with the process until the context ends: a few hundred faults per epoch. The numbers computed
are unchanged: only where the allocator finds memory differs.

On leaving the outermost context the trim threshold goes back to 64 MiB (twice the mmap threshold, the state
glibc's dynamic thresholds reach after such a workload) and ``malloc_trim`` hands the retained pages back, so a
worker that trained does not keep its training peak. Not glibc (macOS, musl): nothing changes.
"""

from __future__ import annotations

import ctypes
import threading
from contextlib import contextmanager
from typing import Iterator

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: blocks below this come from the heap (glibc's largest dynamic mmap threshold on 64-bit: 32 MiB)
MMAP_THRESHOLD = 32 * 1024 * 1024
#: while training: freed memory is kept (the largest value ``mallopt`` takes)
TRIM_WHILE_TRAINING = 2 ** 31 - 1
#: after training: twice the mmap threshold
TRIM_AFTER = 2 * MMAP_THRESHOLD

_lock = threading.Lock()
_depth = 0


def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018 - glibc only
        libc.malloc_trim  # noqa: B018
        return libc
    except (OSError, AttributeError):
        return None


@contextmanager
def retained_heap() -> Iterator[None]:
    """While inside (nestable, process-wide): large blocks from the heap, freed memory kept for the next epoch."""
    global _depth
    libc = _libc()
    with _lock:
        _depth += 1
        if libc is not None and _depth == 1:
            libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_WHILE_TRAINING)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if libc is not None and _depth == 0:
                libc.mallopt(_M_TRIM_THRESHOLD, TRIM_AFTER)
                libc.malloc_trim(0)
