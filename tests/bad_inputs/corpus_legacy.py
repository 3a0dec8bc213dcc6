"""Legacy-ST cases of the corpus: the good slide S1 (HER2ST layout: counts .tsv.gz, spot selection, labels,
JPEG), the writers of its files, and the broken copies (``legacy/``: read_legacy_st / decode_image cases and
the label files accepted with warnings)."""

from __future__ import annotations

import gzip
import io
import struct

from corpus_registry import accepted, case


KEYS = [f"{x}x{y}" for y in range(1, 5) for x in range(1, 5)]
GENES = ["GENE_A", "GENE_B", "GENE_C"]


def _counts_rows(value=None, at: int = 5, gene: int = 1) -> list[list[str]]:
    """The 16 × 3 count table as text cells; ``value`` (a string) replaces the cell (row ``at``, ``gene``)."""
    rows = []
    for i, k in enumerate(KEYS):
        cells = [str(i % 5 + 1), str(i % 3), str(i % 2)]
        if value is not None and i == at:
            cells[gene] = value
        rows.append([k, *cells])
    return rows


def counts_text(rows: list[list[str]] | None = None, header: str | None = None) -> bytes:
    rows = _counts_rows() if rows is None else rows
    header = "\t" + "\t".join(GENES) if header is None else header
    return ("\n".join([header, *("\t".join(r) for r in rows)]) + "\n").encode()


def gz(data: bytes) -> bytes:
    """gzip with a fixed header (mtime 0, no name): the same bytes on every run."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as fh:
        fh.write(data)
    return buf.getvalue()


def spots_text(*, shift: int = 0, drop: str | None = None, replace: tuple[int, str, str] | None = None,
               duplicate: bool = False) -> bytes:
    """The spot-selection table (x y new_x new_y pixel_x pixel_y selected); ``shift`` moves every key,
    ``drop`` leaves out a column, ``replace=(row, column, text)`` puts text into one cell."""
    cols = ["x", "y", "new_x", "new_y", "pixel_x", "pixel_y", "selected"]
    lines = []
    for i, k in enumerate(KEYS):
        x, y = (int(v) for v in k.split("x"))
        row = {"x": str(x + shift), "y": str(y + shift), "new_x": f"{x + 0.01:.2f}", "new_y": f"{y - 0.01:.2f}",
               "pixel_x": f"{x * 20.0:.1f}", "pixel_y": f"{y * 20.0:.1f}", "selected": "1"}
        if replace is not None and replace[0] == i:
            row[replace[1]] = replace[2]
        lines.append(row)
    if duplicate:
        lines.append(dict(lines[0]))
    keep = [c for c in cols if c != drop]
    out = ["\t".join(keep)] + ["\t".join(r[c] for c in keep) for r in lines]
    return ("\n".join(out) + "\n").encode()


def labels_text(*, drop_label: bool = False) -> bytes:
    classes = ["tumour", "stroma", "immune", "undetermined"]
    head = ["x", "y", "pixel_x", "pixel_y"] + ([] if drop_label else ["label"])
    out = ["\t".join(head)]
    for i, k in enumerate(KEYS):
        x, y = (int(v) for v in k.split("x"))
        row = [f"{x + 0.02:.2f}", f"{y - 0.03:.2f}", "0", "0"] + ([] if drop_label else [classes[i % 4]])
        out.append("\t".join(row))
    return ("\n".join(out) + "\n").encode()


def her2st_labels_text(*, extra: list[list[str]] = (), shift: int = 0, every: int = 1) -> bytes:
    """A label file in the published HER2ST layout (``Row.names x y pixel_x pixel_y label``, fractional x, y):
    every ``every``-th spot of the good slide (keys moved by ``shift``), then the ``extra`` rows as given."""
    classes = ["tumour", "stroma", "immune", "undetermined"]
    out = ["\t".join(["Row.names", "x", "y", "pixel_x", "pixel_y", "label"])]
    for i, k in enumerate(KEYS[::every]):
        x, y = (int(v) + shift for v in k.split("x"))
        out.append("\t".join([f"{x * 20}x{y * 20}", f"{x + 0.02:.3f}", f"{y - 0.03:.3f}", f"{x * 20.0:.1f}",
                              f"{y * 20.0:.1f}", classes[i % 4]]))
    out[len(out) // 2:len(out) // 2] = ["\t".join(r) for r in extra]  # in the middle, as in the published files
    return ("\n".join(out) + "\n").encode()


def jpeg(size: int = 100) -> bytes:
    """A small H&E-coloured JPEG (pink background, purple blobs): deterministic."""
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:size, 0:size]
    img = np.zeros((size, size, 3), dtype=np.uint8)
    img[...] = (230, 180, 210)
    blob = ((xx % 20 - 10) ** 2 + (yy % 20 - 10) ** 2) < 20
    img[blob] = (110, 60, 150)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=60)
    return buf.getvalue()


def corrupt_tiff() -> bytes:
    """A TIFF header ("II*\\0") whose first IFD offset points far past the end of the 64-byte file."""
    return b"II*\x00" + struct.pack("<I", 0x7FFF0000) + bytes(range(56))


def build_legacy_cases() -> None:
    """Register the legacy-ST cases (the good slide's files are registered by make_corpus.build_cases)."""
    def legacy(id, doc, *, counts="legacy/S1.tsv.gz", spots="legacy/S1_selection.tsv", labels=None, image=None,
               image_scale=1.0, file, field, text, files=None):
        args = {"counts": counts, "spots": spots, "slide_id": "S1"}
        if labels:
            args["labels"] = labels
        if image:
            args["image"] = image
        if image_scale != 1.0:
            args["image_scale"] = image_scale
        case(id, "read_legacy_st", doc, args=args, slide="S1", file=file, field=field, text=text, files=files)

    # ---- legacy ST: counts
    full = gz(counts_text())
    legacy("counts_truncated_gzip", "counts .tsv.gz cut in the middle of the compressed stream",
           counts="legacy/counts_truncated.tsv.gz", file="counts_truncated.tsv.gz", field="counts",
           text="truncated or corrupt compressed file",
           files={"legacy/counts_truncated.tsv.gz": full[: len(full) * 2 // 3]})
    legacy("counts_corrupt_gzip", "gzip magic bytes followed by garbage",
           counts="legacy/counts_corrupt.tsv.gz", file="counts_corrupt.tsv.gz", field="header",
           text="truncated or corrupt compressed file",
           files={"legacy/counts_corrupt.tsv.gz": b"\x1f\x8b\x08\x00" + bytes(range(200, 256)) * 4})
    legacy("counts_binary", "binary bytes (not text) in a counts .tsv",
           counts="legacy/counts_binary.tsv", file="counts_binary.tsv", field="header",
           text="not a text file", files={"legacy/counts_binary.tsv": bytes(range(128, 256)) * 4})
    legacy("counts_empty", "an empty counts file (0 bytes)", counts="legacy/counts_empty.tsv",
           file="counts_empty.tsv", field="header", text="empty", files={"legacy/counts_empty.tsv": b""})
    legacy("counts_header_only", "a header row and no spot rows", counts="legacy/counts_header_only.tsv",
           file="counts_header_only.tsv", field="counts", text="empty count matrix",
           files={"legacy/counts_header_only.tsv": counts_text(rows=[])})
    rows = _counts_rows()
    rows[3] = rows[3] + ["7"]
    legacy("counts_ragged", "one row has one count more than the header names",
           counts="legacy/counts_ragged.tsv", file="counts_ragged.tsv", field="counts",
           text="malformed table", files={"legacy/counts_ragged.tsv": counts_text(rows=rows)})
    legacy("counts_non_numeric", "a count cell 'abc'", counts="legacy/counts_non_numeric.tsv",
           file="counts_non_numeric.tsv", field="counts", text="non-numeric count 'abc' at spot '2x2'",
           files={"legacy/counts_non_numeric.tsv": counts_text(rows=_counts_rows("abc"))})
    legacy("counts_nan", "a NaN count", counts="legacy/counts_nan.tsv", file="counts_nan.tsv", field="counts",
           text="NaN", files={"legacy/counts_nan.tsv": counts_text(rows=_counts_rows("nan"))})
    legacy("counts_inf", "an infinite count", counts="legacy/counts_inf.tsv", file="counts_inf.tsv",
           field="counts", text="NaN/infinite", files={"legacy/counts_inf.tsv": counts_text(rows=_counts_rows("inf"))})
    legacy("counts_negative", "a negative count (-3)", counts="legacy/counts_negative.tsv",
           file="counts_negative.tsv", field="counts", text="negative count(s), first -3 at spot '2x2'",
           files={"legacy/counts_negative.tsv": counts_text(rows=_counts_rows("-3"))})
    zero_rows = [[k, "0", "0", "0"] for k in KEYS]
    legacy("counts_all_zero", "every spot has zero counts", counts="legacy/counts_all_zero.tsv",
           file="counts_all_zero.tsv", field="counts", text="all 16 spots have zero counts",
           files={"legacy/counts_all_zero.tsv": counts_text(rows=zero_rows)})
    dup = _counts_rows()
    dup[7][0] = dup[2][0]
    legacy("counts_duplicate_spot", "two count rows for spot '3x1'", counts="legacy/counts_duplicate_spot.tsv",
           file="counts_duplicate_spot.tsv", field="spot key", text="duplicate spot key",
           files={"legacy/counts_duplicate_spot.tsv": counts_text(rows=dup)})
    bad_key = _counts_rows()
    bad_key[4][0] = "spot5"
    legacy("counts_bad_row_name", "a row name that is not '{x}x{y}'", counts="legacy/counts_bad_row_name.tsv",
           file="counts_bad_row_name.tsv", field="row names", text="'spot5'",
           files={"legacy/counts_bad_row_name.tsv": counts_text(rows=bad_key)})
    # ---- legacy ST: spot file / labels
    legacy("spots_mismatch", "the spot file of another slide: no (x, y) in common with the count rows",
           spots="legacy/spots_mismatch.tsv", file="spots_mismatch.tsv", field="x,y",
           text="counts/spot-file mismatch", files={"legacy/spots_mismatch.tsv": spots_text(shift=10)})
    legacy("spots_missing_column", "the spot file has no pixel_y column", spots="legacy/spots_missing_column.tsv",
           file="spots_missing_column.tsv", field="pixel_y", text="missing column 'pixel_y'",
           files={"legacy/spots_missing_column.tsv": spots_text(drop="pixel_y")})
    legacy("spots_non_numeric", "a pixel_x value 'left'", spots="legacy/spots_non_numeric.tsv",
           file="spots_non_numeric.tsv", field="pixel_x", text="'left'",
           files={"legacy/spots_non_numeric.tsv": spots_text(replace=(2, "pixel_x", "left"))})
    legacy("spots_negative_nan", "a NaN pixel_y", spots="legacy/spots_nan.tsv", file="spots_nan.tsv",
           field="pixel_y", text="not a finite number", files={"legacy/spots_nan.tsv": spots_text(
               replace=(2, "pixel_y", "nan"))})
    legacy("spots_duplicate", "two spot rows with the same (x, y)", spots="legacy/spots_duplicate.tsv",
           file="spots_duplicate.tsv", field="x,y", text="duplicate spot key",
           files={"legacy/spots_duplicate.tsv": spots_text(duplicate=True)})
    legacy("labels_missing_column", "a label file without its 'label' column",
           labels="legacy/labels_missing_column.tsv", file="labels_missing_column.tsv", field="label",
           text="missing column 'label'", files={"legacy/labels_missing_column.tsv": labels_text(drop_label=True)})
    # ---- legacy ST: label files that are accepted (only counts and spots are strict), each oddity counted + said
    na = [["NA", "NA", "NA", "1510.2", "610.8", "immune infiltrate"], ["NA", "", "7.5", "NA", "NA", "undetermined"]]
    accepted("labels_na_coordinates", "published HER2ST layout with annotation rows whose x/y are 'NA' or empty",
             labels="legacy/labels_na_rows.tsv", data=her2st_labels_text(extra=na), labelled=16,
             join={"n_no_coordinates": 2, "n_labels_only": 0, "n_unlabelled": 0},
             warnings=["2 row(s) of", "have no spot coordinates"])
    accepted("labels_no_spot", "3 label rows at coordinates of no spot (9x9, -1x0, 1e6x2)",
             labels="legacy/labels_no_spot.tsv", labelled=8,
             data=her2st_labels_text(every=2, extra=[["x", "9.0", "9.1", "0", "0", "tumour"],
                                                     ["x", "-1", "0", "0", "0", "stroma"],
                                                     ["x", "1e6", "2", "0", "0", "stroma"]]),
             join={"n_labels_only": 3, "n_unlabelled": 8, "n_no_coordinates": 0},
             warnings=["3 of 11 labelled spots of", "are not spots of this slide"])
    accepted("labels_other_slide", "every label row is 10 array steps away from every spot (another slide's file)",
             labels="legacy/labels_other_slide.tsv", data=her2st_labels_text(shift=10), labelled=0,
             join={"n_labels_only": 16, "n_unlabelled": 16}, warnings=["none of the 16 labelled spots"])
    accepted("labels_two_labels_one_spot", "spot 1x1 labelled twice differently, spot 2x1 twice the same",
             labels="legacy/labels_conflicting.tsv", labelled=15,
             data=her2st_labels_text(extra=[["x", "1.1", "0.9", "0", "0", "stroma"],
                                            ["x", "2.0", "1.0", "0", "0", "stroma"]]),
             join={"n_ambiguous": 2, "n_labels_only": 0, "n_unlabelled": 1},
             warnings=["2 row(s) of", "give one spot different labels"])
    legacy("counts_missing_file", "the counts file does not exist", counts="legacy/nope.tsv.gz",
           file="nope.tsv.gz", field="counts", text="not found")
    # ---- legacy ST: images
    legacy("image_corrupt_jpeg", "a .jpg of garbage bytes (no JPEG header)", image="legacy/image_corrupt.jpg",
           file="image_corrupt.jpg", field="image", text="unreadable image",
           files={"legacy/image_corrupt.jpg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 3})
    legacy("image_corrupt_tiff", "a TIFF whose first IFD points past the end of the file",
           image="legacy/image_corrupt.tif", file="image_corrupt.tif", field="image", text="unreadable image",
           files={"legacy/image_corrupt.tif": corrupt_tiff()})
    legacy("image_wrong_scale", "the spots fall outside the image (image_scale 10 instead of 1)",
           image="legacy/S1.jpg", image_scale=10.0, file="S1.jpg", field="image_scale", text="fall outside")
    # ---- legacy ST: silently wrong joins and positions (issue 16, class 2)
    wide = [f"{x}x{y}" for y in range(1, 5) for x in range(1, 6)]  # a 5 × 4 grid: not symmetric in x / y
    wide_counts = ("\t" + "\t".join(GENES) + "\n" + "".join(
        f"{k}\t{i % 5 + 1}\t{i % 3}\t{i % 2 + 1}\n" for i, k in enumerate(wide))).encode()
    swapped = ["\t".join(["y", "x", "pixel_x", "pixel_y", "selected"])] + [
        "\t".join([k.split("x")[0], k.split("x")[1], f"{int(k.split('x')[0]) * 20.0:.1f}",
                   f"{int(k.split('x')[1]) * 20.0:.1f}", "1"]) for k in wide]
    legacy("spots_xy_swapped", "the spot file's 'x'/'y' header names are exchanged: 16 of 20 spots would still join "
           "(at the wrong places), all 20 join with x and y swapped", counts="legacy/counts_5x4.tsv",
           spots="legacy/spots_xy_swapped.tsv", file="spots_xy_swapped.tsv", field="x,y",
           text="x/y columns of the spot file look swapped",
           files={"legacy/counts_5x4.tsv": wide_counts,
                  "legacy/spots_xy_swapped.tsv": ("\n".join(swapped) + "\n").encode()})
    one_pixel = spots_text().decode().splitlines()
    one_pixel = [one_pixel[0]] + ["\t".join(r.split("\t")[:4] + ["50.0", "50.0"] + r.split("\t")[6:])
                                  for r in one_pixel[1:]]
    legacy("spots_one_pixel", "every spot row has the same pixel_x / pixel_y (all spots on one pixel)",
           spots="legacy/spots_one_pixel.tsv", file="spots_one_pixel.tsv", field="spatial",
           text="all 16 spots are at the same pixel",
           files={"legacy/spots_one_pixel.tsv": ("\n".join(one_pixel) + "\n").encode()})
    jp = jpeg()
    case("image_truncated_jpeg", "decode_image",
         "a JPEG whose header is intact but whose pixel data is cut: the reader (header only) accepts it, "
         "validate decodes it and names it", args={"image": "legacy/image_truncated.jpg"}, slide="S1",
         file="image_truncated.jpg", field="image", text="truncated",
         files={"legacy/image_truncated.jpg": jp[: len(jp) // 2]})

