"""The corpus registry: every file (path -> bytes), every case and every accepted label file, filled by the
``build_*_cases`` functions of the corpus_* modules (make_corpus.build_cases clears and refills it)."""

from __future__ import annotations

#: every file of the corpus: relative path -> bytes
FILES: dict[str, bytes] = {}
#: every case: id, entry point, arguments, what the error must name
CASES: list[dict] = []
#: files a reader must ACCEPT, with warnings: id, what is odd, the label file, what the slide must say
ACCEPTED: list[dict] = []


def accepted(id: str, doc: str, *, labels: str, data: bytes, labelled: int, join: dict[str, int],
             warnings: list[str]) -> None:
    """Register a label file of the good slide S1 that reads with warnings: ``labelled`` spots keep a label,
    ``join`` is part of ``uns["senca"]["labels_join"]``, each of ``warnings`` is in one of the slide's warnings."""
    assert labels not in FILES or FILES[labels] == data, f"{labels} defined twice differently"
    FILES[labels] = data
    ACCEPTED.append({"id": id, "doc": doc, "labels": labels, "labelled": labelled, "join": join,
                     "warnings": warnings})


def case(id: str, entry: str, doc: str, *, args: dict | None = None, slide: str | None = None,
         file: str | None = None, field: str | None = None, line: int | None = None, text: str = "",
         files: dict[str, bytes] | None = None) -> None:
    """Register one case (and its files). ``file``: the name the message must contain; ``field``: the
    SlideError field (readers) or the spec field path (specs); ``line``: the YAML line (specs)."""
    for rel, data in (files or {}).items():
        assert rel not in FILES or FILES[rel] == data, f"{rel} defined twice differently"
        FILES[rel] = data
    CASES.append({"id": id, "entry": entry, "doc": doc, "args": args or {}, "slide": slide, "file": file,
                  "field": field, "line": line, "text": text})

