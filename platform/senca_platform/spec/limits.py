"""Bounded resources for reading a cohort spec: what is refused before the spec is read in full or parsed.

- :func:`read_spec_bytes`: the spec must be a regular file (not ``/dev/zero``, a FIFO, a folder) of at most
  :data:`MAX_SPEC_BYTES`; at most that many bytes (+1) are ever read, even from a file that grows meanwhile.
- :func:`check_cohort_size` (called by the former): the patients and slides are counted on the YAML event
  stream (no node tree, no objects built) and refused past :data:`MAX_PATIENTS` / :data:`MAX_SLIDES`.

Both raise :class:`senca_platform.spec.SpecError` (one clear line; ``senca-platform run``/``validate`` exit 2).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import yaml

from .schema import SpecError, SpecIssue

#: the largest spec file read (a cohort of thousands of slides is a few hundred KB)
MAX_SPEC_BYTES = 5 * 1024 * 1024
#: most patients / slides one spec may list (counted before anything is built)
MAX_PATIENTS = 10_000
MAX_SLIDES = 20_000


def _refuse(path: str | Path, message: str, line: int | None = None):
    return SpecError(path, [SpecIssue("<file>" if line is None else "patients", line, message)])


def read_spec_bytes(path: str | Path, max_bytes: int = MAX_SPEC_BYTES) -> bytes:
    """The spec file's bytes; :class:`SpecError` when it is not a regular file or is over ``max_bytes``.

    ``OSError`` (missing, unreadable) is left to the caller."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block the open
    with os.fdopen(fd, "rb") as fh:  # opened first: what is checked is what is read
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a character device" if stat.S_ISCHR(st.st_mode)
                    else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                    else "a block device" if stat.S_ISBLK(st.st_mode) else "not a regular file")
            raise _refuse(path, f"the spec is {kind}, not a regular file")
        if st.st_size > max_bytes:
            raise _refuse(path, f"the spec is {st.st_size:,} bytes, more than the limit of {max_bytes:,}: "
                                "a cohort spec lists files, it does not hold data")
        raw = fh.read(max_bytes + 1)
    if len(raw) > max_bytes:  # grew while being read
        raise _refuse(path, f"the spec is more than the limit of {max_bytes:,} bytes")
    check_cohort_size(raw, str(path))
    return raw


def check_cohort_size(text: str | bytes, name: str = "<spec>", *, max_patients: int = MAX_PATIENTS,
                      max_slides: int = MAX_SLIDES) -> None:
    """Count ``patients`` and their ``slides`` on the YAML event stream; :class:`SpecError` past a limit.

    A YAML error is left to the real parse (which reports it with its line); aliases count once."""
    frames: list[list] = []  # [kind "map"/"seq", role, expecting_key, last_key]
    n_patients = n_slides = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                frames.pop()
                continue
            if not isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent, yaml.MappingStartEvent,
                                      yaml.SequenceStartEvent)):
                continue
            role = None
            if not frames:
                role = "root"
            else:
                parent = frames[-1]
                if parent[0] == "map":
                    if parent[2]:  # a key
                        parent[2], parent[3] = False, getattr(event, "value", None)
                        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                            frames.append(["map" if isinstance(event, yaml.MappingStartEvent) else "seq",
                                           None, True, None])
                        continue
                    parent[2] = True
                    if (parent[1], parent[3]) == ("root", "patients"):
                        role = "patients"
                    elif (parent[1], parent[3]) == ("patient", "slides"):
                        role = "slides"
                elif parent[1] == "patients":
                    n_patients += 1
                    role = "patient"
                    if n_patients > max_patients:
                        raise _refuse(name, f"the spec lists more than {max_patients:,} patients (the limit)",
                                      event.start_mark.line + 1)
                elif parent[1] == "slides":
                    n_slides += 1
                    if n_slides > max_slides:
                        raise _refuse(name, f"the spec lists more than {max_slides:,} slides (the limit)",
                                      event.start_mark.line + 1)
            if isinstance(event, yaml.MappingStartEvent):
                frames.append(["map", role, True, None])
            elif isinstance(event, yaml.SequenceStartEvent):
                frames.append(["seq", role, True, None])
    except yaml.YAMLError:
        return


def resource_warnings(spec) -> list[str]:
    """Warnings (never errors) when the spec asks more than this machine has and no ``ray.address`` is given:
    an embedded local Ray would refuse the training; a cluster (``ray.address``) may well have more."""
    if spec.ray.address:
        return []
    t = spec.training
    have = int(spec.ray.num_cpus or os.cpu_count() or 1)
    where = f"ray.num_cpus {have}" if spec.ray.num_cpus else f"this machine has {have} CPU(s)"
    n_slides = len(spec.slides())
    workers = max(1, min(int(t.num_workers), n_slides))
    per = float(t.resources_per_worker.get("CPU", 1.0))
    out = []
    if per > have:
        out.append(f"training.resources_per_worker: one worker asks {per:g} CPU, {where}")
    elif workers > 1 and workers * per > have:
        out.append(f"training.num_workers: {workers} worker(s) x {per:g} CPU = {workers * per:g} CPU, {where}: "
                   "an embedded local Ray cannot place them (a cluster may have more)")
    per_slide = float(spec.preprocess.cpus_per_slide or 1.0)  # unset: never more than the CPUs there are
    if per_slide > have:
        out.append(f"preprocess.cpus_per_slide: each slide's task asks {per_slide:g} CPU, {where}: an embedded "
                   "local Ray cannot place it (the preprocess stage would fail)")
    if t.use_gpu and not any(Path("/dev").glob("nvidia[0-9]*")) and not os.environ.get("CUDA_VISIBLE_DEVICES"):
        out.append("training.use_gpu: true, but this machine shows no GPU (an embedded local Ray would refuse)")
    return out
