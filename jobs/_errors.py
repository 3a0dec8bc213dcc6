"""How a failure is reported: :func:`error_text` (one line naming the slide) and :func:`short_traceback`."""

from __future__ import annotations

import traceback


def error_text(err: BaseException, slide: str | None = None) -> str:
    """One line naming the slide: ``SlideError`` messages already do; other exceptions get the slide prefixed."""
    try:
        from senca_core.errors import SlideError
    except ImportError:  # pragma: no cover
        SlideError = ()  # type: ignore[assignment]
    if isinstance(err, SlideError):
        text = str(err.with_slide(slide) if slide else err)
    else:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        text = f"{type(err).__name__}: {detail}" if detail else type(err).__name__
        if slide:
            text = f"slide {slide!r}: {text}"
    return text


def short_traceback(err: BaseException, limit: int = 6) -> str:
    return "".join(traceback.format_exception(type(err), err, err.__traceback__, limit=limit))[-4000:]
