"""The training curve while training runs: the driver tails the JSON lines rank 0 appends each epoch.

``with tail(folder, on_record):`` reads, every ``interval`` seconds, the complete new lines of every ``*.jsonl``
file under ``folder`` (a Ray Train run, a task, or one file per Tune trial) and calls ``on_record(record)`` for each,
in file order, from a background thread; a last read happens on exit, so no record written before the stage
ended is missed. ``on_record`` must not raise (its errors are swallowed: a tracker problem never stops training).
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


class _Tail:
    def __init__(self, folder: Path, on_record: Callable[[dict[str, Any]], None]) -> None:
        self.folder = folder
        self.on_record = on_record
        self.offsets: dict[Path, int] = {}

    def read(self) -> None:
        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.glob("*.jsonl")):
            start = self.offsets.get(path, 0)
            try:
                with open(path, "rb") as fh:
                    fh.seek(start)
                    chunk = fh.read()
            except OSError:
                continue
            end = chunk.rfind(b"\n") + 1  # complete lines only: a line being written waits for the next read
            if end <= 0:
                continue
            self.offsets[path] = start + end
            for line in chunk[:end].splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                try:
                    self.on_record(record)
                except Exception:  # noqa: BLE001 - never let tracking stop the stage
                    pass


@contextmanager
def tail(folder: str | Path, on_record: Callable[[dict[str, Any]], None], *,
         interval: float = 1.0) -> Iterator[None]:
    reader = _Tail(Path(folder), on_record)
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            reader.read()

    thread = threading.Thread(target=loop, name="senca-live-tail", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        reader.read()
