"""A function in a daemon thread whose result (or exception) the caller collects later: the run's start-up work
beside Ray's start (``senca_platform.runner``) and Ray Train's fit beside the run's main thread (``jobs.train``)."""

from __future__ import annotations

import threading
from typing import Any, Callable


class Background:
    """``fn()`` in a daemon thread; :meth:`result` joins and re-raises its exception. A signal handler's exception
    (Ctrl-C, the CLI's SIGTERM) interrupts the join on the main thread and leaves the thread to the run's end."""

    def __init__(self, fn: Callable[[], Any], *, name: str) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), name=name, daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.value = fn()
        except BaseException as err:  # noqa: BLE001 - handed to result()
            self.error = err

    def result(self) -> Any:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.value

    def result_or_none(self) -> Any:
        """Joins; the value, or None where ``fn`` raised (its exception dropped)."""
        self.thread.join()
        return self.value
