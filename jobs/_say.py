"""The tool's own stderr lines: every one starts with :data:`PREFIX` (``[senca-platform] ...``).

The one home of that prefix, for the data plane (``jobs``) and the control plane (``senca_platform``, which may
import ``jobs``; ``jobs`` never imports it)."""

from __future__ import annotations

import sys

#: what starts every line the tool itself writes on stderr
PREFIX = "[senca-platform]"


def say(message: str) -> None:
    """Print ``[senca-platform] message`` on stderr (flushed)."""
    print(f"{PREFIX} {message}", file=sys.stderr, flush=True)
