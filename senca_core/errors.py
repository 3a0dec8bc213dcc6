"""Typed errors that the platform can report per slide.

Every problem with a slide's input is raised as :class:`SlideError`, which names the slide, the
file and the field (or check) at fault, so that a cohort run can record it for that slide and let
the other slides finish.
"""

from __future__ import annotations

from pathlib import Path


class SencaError(Exception):
    """Base class of every error senca_core raises on purpose."""


class SlideError(SencaError):
    """A problem with one slide's input (a file, a field, a value).

    ``str(err)`` reads ``slide 'A1': file 'counts/A1.tsv.gz': field 'counts': <problem>``;
    the parts that are unknown are left out.
    """

    def __init__(
        self,
        problem: str,
        *,
        slide: str | None = None,
        file: str | Path | None = None,
        field: str | None = None,
    ) -> None:
        self.problem = problem
        self.slide = slide
        self.file = str(file) if file is not None else None
        self.field = field
        super().__init__(self._message())

    def _message(self) -> str:
        parts = []
        if self.slide is not None:
            parts.append(f"slide {self.slide!r}")
        if self.file is not None:
            parts.append(f"file {self.file!r}")
        if self.field is not None:
            parts.append(f"field {self.field!r}")
        parts.append(self.problem)
        return ": ".join(parts)

    def with_slide(self, slide: str) -> "SlideError":
        """The same error with the slide filled in (when a lower layer did not know it)."""
        if self.slide is not None:
            return self
        return SlideError(self.problem, slide=slide, file=self.file, field=self.field)

    def to_dict(self) -> dict[str, str | None]:
        return {
            "slide": self.slide,
            "file": self.file,
            "field": self.field,
            "problem": self.problem,
            "message": str(self),
        }

    def __reduce__(self):  # picklable across Ray workers with its keyword arguments
        return (_rebuild_slide_error, (self.problem, self.slide, self.file, self.field))


def _rebuild_slide_error(problem, slide, file, field):
    return SlideError(problem, slide=slide, file=file, field=field)


class ConfigError(SencaError):
    """A bad model / clustering configuration value (names the field)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"field {field!r}: {problem}")

    def __reduce__(self):
        return (ConfigError, (self.field, self.problem))
