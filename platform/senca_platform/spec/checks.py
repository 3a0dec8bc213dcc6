"""Checks of the input files a spec names (what ``senca-platform validate`` reports): missing files, slides
whose data cannot be read by their reader, images whose pixel data cannot be decoded, ``clustering.k`` above the
cohort's spots. A slide that fails here fails alone at run time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._confine import is_inside
from .schema import PATH_FIELDS, CohortSpec, SpecIssue
from .yaml_lines import _format_loc


def _slide_key(pi: int, si: int, name: str | None = None) -> tuple:
    return ("patients", pi, "slides", si) + ((name,) if name else ())


def _field_of_file(slide: Any, file: str | None) -> str | None:
    """The slide's spec field whose path is ``file`` or a folder holding it (None when no field matches)."""
    if not file:
        return None
    try:
        target = Path(file).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    for name in PATH_FIELDS:
        value = getattr(slide, name, None)
        if value is None:
            continue
        p = Path(value).resolve()
        if target == p or is_inside(target, p):
            return name
    return None


def read_slide(slide: Any, patient_id: str):
    """Read one spec slide with its senca_core reader (what a run does first). Raises SlideError.

    Through ``jobs.preprocess.read_entry`` (the plan's slide entry: ``slide_id``, ``patient_id`` and the slide's
    fields), i.e. the one reader dispatch ``senca_core.io.read``, as a run reads it."""
    from jobs.preprocess import read_entry

    fields = {k: v for k, v in slide.model_dump().items() if k != "id"}
    return read_entry({"patient_id": patient_id, "slide_id": slide.id, **fields})


def _decode_image(path: str, slide_id: str) -> None:
    """Decode the slide's image once, as the histology stage will, at reduced size where the format allows: a
    JPEG/PNG/TIFF whose header is fine but whose pixel data is cut or corrupt fails here (SlideError).

    Opened with ``senca_core.hist.open_slide`` (its header checks and size limits); a plain image is then decoded
    by ``senca_core.hist.decode_reduced`` (JPEG in draft mode at 1/8 scale: the whole stream is read,
    ~50x less memory and time than full size; a PNG above the decode bound streamed), a whole-slide image by
    reading its smallest pyramid level."""
    import warnings

    import openslide

    from senca_core.errors import SlideError
    from senca_core.hist import decode_reduced, open_slide

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's "corrupt EXIF" etc.: an error or nothing, not noise
            with open_slide(path, slide_id=slide_id) as osl:
                if isinstance(osl, openslide.ImageSlide):  # JPEG at 1/8; a PNG above the bound streamed
                    decode_reduced(path, min_factor=8, to_rgb=lambda im: im)[0].close()
                else:
                    level = osl.level_count - 1
                    osl.read_region((0, 0), level, osl.level_dimensions[level])
    except SlideError:
        raise
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - a decoder error in the pixel data
        raise SlideError(f"image pixel data cannot be decoded ({type(err).__name__}: {err})".replace("\n", " "),
                         slide=slide_id, file=path, field="image") from None


def check_inputs(spec: CohortSpec, *, read: bool = True) -> list[SpecIssue]:
    """Problems with the input files a spec names, each naming the field, the slide and the file.

    - ``kind="missing"``: a file or folder that does not exist (every field of every slide);
    - ``read=True``: each slide whose files all exist is read with its reader (``senca_core.io``, as a run
      does) and its image decoded once; a :class:`senca_core.errors.SlideError` becomes one issue
      (``kind="data"``) on the field of the file at fault (``patients[1].slides[0].counts``) whose message is
      the reader's (slide, file, field, problem);
    - ``read=True``: ``clustering.k`` larger than the number of spots of the slides that could be read
      (``kind="cohort"``): the regions could not be fitted.

    A slide that fails here fails alone at run time; ``senca-platform validate`` prints every issue.
    """
    from senca_core.errors import SlideError

    lines = spec._lines
    issues: list[SpecIssue] = []
    n_spots = 0
    n_read = 0
    for pi, patient in enumerate(spec.patients):
        for si, slide in enumerate(patient.slides):
            missing = False
            for name in PATH_FIELDS:
                value = getattr(slide, name, None)
                if value is not None and not Path(value).exists():
                    missing = True
                    issues.append(SpecIssue(f"patients[{pi}].slides[{si}].{name}",
                                            lines.get(_slide_key(pi, si, name)),
                                            f"slide {slide.id!r}: file not found: {value}", kind="missing"))
            if missing or not read:
                continue
            try:
                adata = read_slide(slide, patient.id)
                image = adata.uns.get("senca", {}).get("image_path")
                if image:
                    _decode_image(str(image), slide.id)
            except SlideError as err:
                err = err.with_slide(slide.id)
                name = _field_of_file(slide, err.file)
                issues.append(SpecIssue(_format_loc(_slide_key(pi, si, name)),
                                        lines.get(_slide_key(pi, si, name)) or lines.get(_slide_key(pi, si)),
                                        str(err), kind="data"))
                continue
            except MemoryError:
                raise
            except Exception as err:  # noqa: BLE001 - a reader bug must still name the slide, not trace back
                issues.append(SpecIssue(_format_loc(_slide_key(pi, si)), lines.get(_slide_key(pi, si)),
                                        f"slide {slide.id!r}: cannot be read ({type(err).__name__}: {err})"
                                        .replace("\n", " "), kind="data"))
                continue
            n_read += 1
            n_spots += int(adata.n_obs)
            del adata
    k = spec.clustering.k
    if read and n_read and isinstance(k, int) and k > n_spots:
        issues.append(SpecIssue("clustering.k", lines.get(("clustering", "k")),
                                f"k={k} regions but the {n_read} readable slide(s) have only {n_spots} spots "
                                "in all", kind="cohort"))
    if spec.preprocess.encoder_weights is not None and not spec.preprocess.encoder_weights.exists():
        issues.append(SpecIssue("preprocess.encoder_weights", lines.get(("preprocess", "encoder_weights")),
                                f"file not found: {spec.preprocess.encoder_weights}", kind="missing"))
    return issues


def missing_files(spec: CohortSpec, *, read: bool = True) -> list[SpecIssue]:
    """The input problems ``senca-platform validate`` reports: :func:`check_inputs` (missing files and, with
    ``read=True``, slides whose data cannot be read, and ``clustering.k`` above the cohort's spots).
    ``read=False``: only the files that do not exist."""
    return check_inputs(spec, read=read)

