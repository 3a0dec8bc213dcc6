"""The terminal: the tool's own lines and one progress display; Ray / MLflow / torch output goes to the run's log.

:class:`RunConsole` is the one home of what a run prints. While a run is open, file descriptors 1 and 2 of the
process point at ``OUTPUT/logs/run.log`` (so Ray's worker lines, Tune's status tables, Ray Data's progress, MLflow's
and torch's warnings, and anything a library writes at C level, land there), and the tool's own lines are written to
the terminal the process started with (and to the log, time-stamped). ``verbosity``:

* ``"normal"``: the tool's lines and a progress display of training (epochs, loss, ETA: a rich progress bar on a
  terminal, a line every few seconds otherwise);
* ``"quiet"``: only warnings and errors (and the command's final result, printed by the CLI);
* ``"verbose"``: nothing is redirected: every engine's output on the terminal as it comes, the tool's lines too
  (and still in ``run.log``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Iterator

from jobs._say import PREFIX

VERBOSITIES = ("quiet", "normal", "verbose")

#: seconds between two progress lines when the terminal is not interactive (a pipe, a CI log)
LINE_EVERY_S = 5.0


@contextlib.contextmanager
def stdout_to_stderr(active: bool) -> Iterator[None]:
    """While running with ``--json``, everything else (Ray, Tune, progress bars) goes to stderr, at fd level."""
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    old = sys.stdout
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stdout = old
        os.dup2(saved, 1)
        os.close(saved)


def stage_done_line(name: str, info: dict[str, Any]) -> str:
    """``train: ok in 27.1s``, with ``(cached)`` for a cache hit and what the training multiplied in when it was
    bfloat16 (``model.precision``)."""
    used = (info.get("params") or {}).get("precision_used")
    return (f"{name}: {info['status']}{' (cached)' if info.get('cached') else ''} in {info['seconds']:.1f}s"
            + (f" (matrix products in {used})" if used == "bfloat16" else ""))


def _is_warning(message: str) -> bool:
    low = message.lower()
    return low.startswith(("warning", "error")) or ": warning" in low or "failed" in low


class _Bar:
    """Epoch progress of one training stage: a rich bar on a terminal, throttled lines elsewhere."""

    def __init__(self, console: "RunConsole", stage: str, total: int) -> None:
        self.console, self.stage, self.total = console, stage, max(1, int(total))
        self.done: dict[Any, int] = {}  # (trial, epoch) seen: a re-run epoch after a restart is not counted twice
        self.first: tuple[float, int] | None = None  # (time, count) at the first epoch: start-up is not a rate
        self.last_line = 0.0
        self.rich = None
        if console.interactive:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.rich = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[loss]}"), TimeRemainingColumn(),
                                 console=Console(file=console.term, force_terminal=True), transient=True)
            self.task = self.rich.add_task(f"{stage} epochs", total=self.total, loss="")
            self.rich.start()

    def update(self, record: dict[str, Any]) -> None:
        key = (record.get("trial"), record.get("epoch"))
        self.done[key] = 1
        n = min(len(self.done), self.total)
        loss = record.get("loss")
        loss_text = f"loss {loss:.4f}" if isinstance(loss, (int, float)) else ""
        if self.rich is not None:
            self.rich.update(self.task, completed=n, loss=loss_text)
            return
        now = time.monotonic()
        if self.first is None:
            self.first = (now, n)
        if now - self.last_line < LINE_EVERY_S and n < self.total:
            return
        self.last_line = now
        (t1, n1), eta = self.first, ""
        if n > n1 and n < self.total:
            eta = f", about {(now - t1) / (n - n1) * (self.total - n):.0f}s left"
        self.console.echo(f"{self.stage}: epoch {n}/{self.total}{', ' + loss_text if loss_text else ''}{eta}")

    def close(self) -> None:
        if self.rich is not None:
            self.rich.stop()
            self.rich = None


class RunConsole:
    """What one run prints (see the module's doc). A context manager; :meth:`echo` is the tool's one voice."""

    def __init__(self, log_dir: str | Path | None, verbosity: str = "normal") -> None:
        if verbosity not in VERBOSITIES:
            raise ValueError(f"verbosity must be one of {VERBOSITIES}, got {verbosity!r}")
        self.verbosity = verbosity
        self.log_path = Path(log_dir) / "run.log" if log_dir is not None else None
        self.term: IO[str] = sys.stderr
        self.interactive = False
        self._log: IO[str] | None = None
        self._saved: tuple[int, int] | None = None
        self._bar: _Bar | None = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "RunConsole":
        sys.stdout.flush()
        sys.stderr.flush()
        self.interactive = bool(getattr(sys.stderr, "isatty", lambda: False)())
        if self.log_path is None:
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "a", encoding="utf-8", errors="replace", buffering=1)
        self._log.write(f"\n===== senca-platform run, {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n")
        if self.verbosity != "verbose":
            try:
                out_fd, err_fd = sys.__stdout__.fileno(), sys.__stderr__.fileno()
            except (AttributeError, ValueError, OSError):
                out_fd, err_fd = 1, 2
            self._saved = (os.dup(out_fd), os.dup(err_fd))
            if sys.stderr is sys.__stderr__:  # the process' own terminal: a stream on the saved descriptor
                self.term = open(os.dup(self._saved[1]), "w", encoding="utf-8", errors="replace", buffering=1)
            else:  # stderr already captured at Python level (a test runner, an embedding program): keep it
                self.term = sys.stderr
            os.dup2(self._log.fileno(), out_fd)
            os.dup2(self._log.fileno(), err_fd)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.end_stage()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        if self._saved is not None:
            try:
                out_fd, err_fd = sys.__stdout__.fileno(), sys.__stderr__.fileno()
            except (AttributeError, ValueError, OSError):
                out_fd, err_fd = 1, 2
            os.dup2(self._saved[0], out_fd)
            os.dup2(self._saved[1], err_fd)
            for fd in self._saved:
                os.close(fd)
            self._saved = None
            if self.term is not sys.stderr:
                with contextlib.suppress(Exception):
                    self.term.close()
            self.term = sys.stderr
        if self._log is not None:
            self._log.close()
            self._log = None

    # ------------------------------------------------------------------ output
    def echo(self, message: str) -> None:
        """One line of the tool's own (``[senca-platform] ...``); in ``quiet`` only warnings and errors."""
        line = f"{PREFIX} {message}"
        with self._lock:
            if self._log is not None and self._saved is not None:
                self._log.write(f"{time.strftime('%H:%M:%S')} {line}\n")
            if self.verbosity == "quiet" and not _is_warning(message):
                return
            if self._bar is not None and self._bar.rich is not None:
                self._bar.rich.console.print(line, highlight=False, markup=False)
                return
            self.term.write(line + "\n")
            self.term.flush()

    def start_stage(self, stage: str, epochs_total: int | None) -> None:
        """A training stage begins: an epoch progress display of ``epochs_total`` epochs (not in ``quiet``)."""
        with self._lock:
            self.end_stage()
            if epochs_total and self.verbosity != "quiet":
                self._bar = _Bar(self, stage, epochs_total)

    def epoch(self, stage: str, record: dict[str, Any]) -> None:
        with self._lock:
            if self._bar is not None and self._bar.stage == stage:
                self._bar.update(record)

    def end_stage(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
