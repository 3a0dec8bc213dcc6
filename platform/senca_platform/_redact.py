"""The one place secrets are removed before anything is printed, written or logged.

- :func:`redact_uri`: a URI with its ``user:password@`` replaced by ``***@`` — everything up to the LAST ``@``
  of the URI's authority, so a password that holds ``@`` (or ``/ ? #``, which users type unencoded) is masked
  whole. Used for the console, ``cohort_summary.json``, ``tracking/run.json`` and the MLflow param.
- :func:`redact_uris`: the same for every URI inside a message.
- :func:`redact`: resolved-spec data: values under secret-looking keys (:data:`SECRET_WORDS`) and URI credentials.
- :func:`redact_text`: the spec's YAML as written, for MLflow and the journal: its comments removed (free text
  that no rule can vet), values of secret-looking keys and URI credentials masked.
"""

from __future__ import annotations

import re
from typing import Any

#: what makes a key secret-looking (its value is never logged)
SECRET_WORDS = r"(?:password|passwd|secret|token|credential|api[_-]?key)"
_SECRET_KEY = re.compile(SECRET_WORDS, re.I)

#: ``scheme://`` + an authority that holds an ``@``: the credentials are everything up to the last ``@`` before
#: the URI ends (blank, quote, or end of text). ``scheme:///path`` (no authority) is left alone.
_SCHEME = r"([a-zA-Z][a-zA-Z0-9+.-]*://)"
_URI_USERINFO = re.compile(_SCHEME + r"(?!/)[^\s'\"<>]*@")
_TEXT_SECRET_LINE = re.compile(r"(?im)^(\s*-?\s*[\"']?[\w.-]*" + SECRET_WORDS + r"[\w.-]*[\"']?\s*:\s*)(\S.*)$")


def redact_uri(uri: str) -> str:
    """``uri`` safe to print: its ``user:password@`` (up to the last ``@``) is ``***@``."""
    return _URI_USERINFO.sub(r"\1***@", uri or "")


def redact_uris(text: str) -> str:
    """``text`` (a message) with the credentials of every URI in it masked (:func:`redact_uri`)."""
    return _URI_USERINFO.sub(r"\1***@", text)


def redact(value: Any, key: str = "") -> Any:
    """Remove secrets before anything is logged: values under secret-looking keys and URI user:password parts."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if key and _SECRET_KEY.search(key):
        return "***"
    if isinstance(value, str):
        return redact_uri(value)
    return value


def strip_yaml_comments(text: str) -> str:
    """``text`` (YAML) without its comments; every line stays where it was (line numbers still match).

    A ``#`` starts a comment only outside every token PyYAML scans (quoted and block scalars keep theirs) and
    at a line's start or after a blank. YAML that does not scan: every ``#`` at a line's start or after a blank
    ends its line (a secret is never kept for want of a parse)."""
    import yaml

    spans: list[tuple[int, int]] = []
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if token.end_mark.index > token.start_mark.index:
                spans.append((token.start_mark.index, token.end_mark.index))
    except yaml.YAMLError:
        spans = []
    inside = _Spans(spans)
    out, pos = [], 0
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        cut = None
        for i, ch in enumerate(body):
            if ch == "#" and (i == 0 or body[i - 1] in " \t") and not inside(pos + i):
                cut = i
                break
        out.append(line if cut is None else body[:cut].rstrip() + line[len(body):])
        pos += len(line)
    return "".join(out)


class _Spans:
    """Is a text offset inside one of the (sorted) token spans?"""

    def __init__(self, spans: list[tuple[int, int]]):
        import bisect

        self._bisect = bisect.bisect_right
        self.spans = sorted(spans)
        self.starts = [a for a, _ in self.spans]

    def __call__(self, index: int) -> bool:
        i = self._bisect(self.starts, index) - 1
        return i >= 0 and self.spans[i][0] <= index < self.spans[i][1]


def redact_text(text: str) -> str:
    """The original YAML text safe to log: comments removed, values of secret-looking keys and URI credentials
    masked."""
    text = redact_uris(strip_yaml_comments(text))
    return _TEXT_SECRET_LINE.sub(lambda m: m.group(1) + '"***"', text)


__all__ = ["SECRET_WORDS", "redact", "redact_text", "redact_uri", "redact_uris", "strip_yaml_comments"]
