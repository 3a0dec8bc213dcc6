"""Build the bad-input corpus: tiny synthetic files, one bad thing each (no real data; every file < 4 KB).

Run ``python tests/bad_inputs/make_corpus.py`` to (re)write the corpus (and its README.md table) next to this
script; the files are committed, and ``tests/test_bad_inputs.py`` checks that the committed copy is what this
script writes.
Every case is listed in :data:`CASES` with the entry point it goes through and the names its ONE error must
carry (slide, file, field) — the test file is parametrised over that list.

Layout (paths relative to this folder)::

    legacy/   a good legacy-ST slide S1 (HER2ST layout: counts .tsv.gz, spot selection, labels, JPEG) and,
              next to it, one broken copy of one of its files per case
    visium/   a good Space Ranger folder (MEX counts, v1/v2 positions, scale factors) and broken copies
    spec/     cohort specs (YAML): broken specs, and valid specs whose slide data is broken
    h5/       binary HDF5 cases (a truncated 10x .h5, a truncated .h5ad)

The good slide (S1): a 4 × 4 square grid (keys "{x}x{y}", x, y in 1..4), 3 genes, pixel centres
(x·20, y·20) on a 100 × 100 px H&E. The good Visium folder (V1): 16 barcodes on a hex grid, 3 genes.

Entry points (``entry`` of a case):

- ``read_legacy_st`` / ``read_visium`` / ``read_h5ad``: the senca_core reader, called with ``args`` (paths
  relative to this folder; the remaining keyword arguments as given) must raise ONE ``SlideError``;
- ``decode_image``: the image is fine for the reader (its header is intact) but its pixel data is broken:
  ``senca_platform.spec.check_inputs`` (what ``senca-platform validate`` runs) decodes it and names it;
- ``load_spec``: ``senca_platform.spec.load_spec(spec/<file>)`` must raise ONE ``SpecError`` naming the field
  and the line (and ``senca-platform validate`` exits 2 with that message, no traceback);
- ``check_inputs``: the spec is valid but its data is not: ``check_inputs`` returns issues naming the slide,
  the file and the field, and ``senca-platform validate --strict`` exits 2 with them.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# ------------------------------------------------------------------------------------------- the good slide
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


# ------------------------------------------------------------------------------------------- the good Visium
V_BARCODES = [f"AAACGT{i:02d}-1" for i in range(16)]


def visium_files(*, positions: str = "v1", drop_col: str | None = None, replace: tuple[int, str, str] | None = None,
                 barcode_prefix: str = "", duplicate_barcode: bool = False, negative: bool = False,
                 mtx_header: str | None = None, scalefactors: bytes | None = None) -> dict[str, bytes]:
    """The files of a tiny Space Ranger folder (MEX counts, positions, scale factors), with one change."""
    rows = [i // 4 for i in range(16)]
    cols = [2 * (i % 4) + (r % 2) for i, r in enumerate(rows)]
    pos_rows = []
    for i, bc in enumerate(V_BARCODES):
        row = {"barcode": barcode_prefix + bc, "in_tissue": "1", "array_row": str(rows[i]),
               "array_col": str(cols[i]), "pxl_row_in_fullres": f"{100 + rows[i] * 86.6:.1f}",
               "pxl_col_in_fullres": f"{100 + cols[i] * 50.0:.1f}"}
        if replace is not None and replace[0] == i:
            row[replace[1]] = replace[2]
        pos_rows.append(row)
    if duplicate_barcode:
        pos_rows[1]["barcode"] = pos_rows[0]["barcode"]
    head = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
    keep = [c for c in head if c != drop_col]
    lines = ([",".join(keep)] if positions == "v2" else []) + [",".join(r[c] for c in keep) for r in pos_rows]
    pos_name = "tissue_positions.csv" if positions == "v2" else "tissue_positions_list.csv"
    entries = []
    for j in range(16):  # genes × spots, 1-based
        for g in range(3):
            v = (j + g) % 4 + (1 if g == 0 else 0)
            if v:
                entries.append((g + 1, j + 1, v))
    if negative:
        g, j, _ = entries[4]
        entries[4] = (g, j, -2)
    mtx = ["%%MatrixMarket matrix coordinate integer general", "%"]
    mtx.append(mtx_header if mtx_header is not None else f"3 16 {len(entries)}")
    mtx += [f"{g} {j} {v}" for g, j, v in entries]
    feats = [f"ENSG0000000000{g}\tGENE_{'ABC'[g]}\tGene Expression" for g in range(3)]
    sf = scalefactors if scalefactors is not None else json.dumps(
        {"spot_diameter_fullres": 40.0, "tissue_hires_scalef": 0.5, "tissue_lowres_scalef": 0.1}).encode()
    return {
        "filtered_feature_bc_matrix/matrix.mtx": ("\n".join(mtx) + "\n").encode(),
        "filtered_feature_bc_matrix/features.tsv": ("\n".join(feats) + "\n").encode(),
        "filtered_feature_bc_matrix/barcodes.tsv": ("\n".join(V_BARCODES) + "\n").encode(),
        f"spatial/{pos_name}": ("\n".join(lines) + "\n").encode(),
        "spatial/scalefactors_json.json": sf,
    }


def visium_10x_h5() -> bytes:
    """A valid 10x HDF5 matrix (v3 schema) of the good Visium slide (16 spots, 3 genes)."""
    import h5py
    import numpy as np

    buf = io.BytesIO()
    with h5py.File(buf, "w", track_order=False) as f:
        g = f.create_group("matrix")
        g.create_dataset("barcodes", data=np.array(V_BARCODES, dtype="S"))
        g.create_dataset("data", data=np.arange(1, 33, dtype=np.int32))
        g.create_dataset("indices", data=np.tile(np.arange(2), 16).astype(np.int64))
        g.create_dataset("indptr", data=np.arange(0, 33, 2, dtype=np.int64))
        g.create_dataset("shape", data=np.array([3, 16], dtype=np.int32))
        fg = g.create_group("features")
        fg.create_dataset("id", data=np.array([f"ENSG{i}" for i in range(3)], dtype="S"))
        fg.create_dataset("name", data=np.array(GENES, dtype="S"))
        fg.create_dataset("feature_type", data=np.array(["Gene Expression"] * 3, dtype="S"))
    return buf.getvalue()


def truncated_10x_h5() -> bytes:
    """``visium_10x_h5`` cut to its first 2 KB."""
    return visium_10x_h5()[:2048]


def truncated_h5ad() -> bytes:
    """The first 2 KB of an .h5ad of the good slide (the HDF5 superblock is there, the data is not)."""
    import anndata
    import numpy as np
    import scipy.sparse as sp

    ad = anndata.AnnData(X=sp.csr_matrix(np.ones((4, 3), dtype=np.float32)))
    ad.obsm["spatial"] = np.arange(8, dtype=np.float64).reshape(4, 2)
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "x.h5ad"
        ad.write_h5ad(p)
        return p.read_bytes()[:2048]


# ------------------------------------------------------------------------------------------- specs
def spec(slides: str, *, extra: str = "", name: str = "bad-inputs") -> bytes:
    return (f"name: {name}\noutput_dir: out\npatients:\n{slides}{extra}").encode()


GOOD_S1 = """  - id: P1
    slides:
      - id: S1
        reader: legacy_st
        counts: ../legacy/S1.tsv.gz
        spots: ../legacy/S1_selection.tsv
        labels: ../legacy/S1_labels.tsv
        image: ../legacy/S1.jpg
"""


def legacy_slide(sid: str, counts: str, *, patient: str = "P2", spots: str = "../legacy/S1_selection.tsv",
                 more: str = "") -> str:
    return (f"  - id: {patient}\n    slides:\n      - id: {sid}\n        reader: legacy_st\n"
            f"        counts: {counts}\n        spots: {spots}\n{more}")


# ------------------------------------------------------------------------------------------- the cases
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


def _line(text: bytes, needle: str) -> int:
    for i, line in enumerate(text.decode("utf-8", "replace").splitlines(), start=1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in the spec")


def build_cases() -> None:
    FILES.clear()
    CASES.clear()
    ACCEPTED.clear()
    good = {"legacy/S1.tsv.gz": gz(counts_text()), "legacy/S1_selection.tsv": spots_text(),
            "legacy/S1_labels.tsv": labels_text(), "legacy/S1.jpg": jpeg()}
    FILES.update(good)
    for rel, data in visium_files().items():
        FILES[f"visium/V1/{rel}"] = data

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

    # ---- Visium
    def visium(id, doc, folder, *, file, field, text, files=None, **kwargs):
        case(id, "read_visium", doc, args={"path": f"visium/{folder}", "slide_id": "V1", **kwargs}, slide="V1",
             file=file, field=field, text=text,
             files={f"visium/{folder}/{k}": v for k, v in (files or {}).items()})

    visium("visium_missing_folder", "the Space Ranger folder does not exist", "absent", file="absent",
           field="path", text="not found")
    visium("visium_positions_missing_column", "positions (v2, header) without pxl_col_in_fullres",
           "positions_missing_column", file="tissue_positions.csv", field="pxl_col_in_fullres",
           text="missing column", files=visium_files(positions="v2", drop_col="pxl_col_in_fullres"))
    visium("visium_positions_non_numeric", "an array_row value 'x7'", "positions_non_numeric",
           file="tissue_positions_list.csv", field="array_row", text="'x7'",
           files=visium_files(replace=(3, "array_row", "x7")))
    visium("visium_positions_duplicate", "two position rows for one barcode", "positions_duplicate",
           file="tissue_positions_list.csv", field="barcode", text="duplicate barcode",
           files=visium_files(duplicate_barcode=True))
    visium("visium_barcode_mismatch", "positions of another slide: no barcode in common with the matrix",
           "barcode_mismatch", file="tissue_positions_list.csv", field="barcode", text="counts/spot-file mismatch",
           files=visium_files(barcode_prefix="GG"))
    visium("visium_scalefactors_bad_json", "scalefactors_json.json is not JSON", "scalefactors_bad_json",
           file="scalefactors_json.json", field="scalefactors", text="not valid JSON",
           files=visium_files(scalefactors=b"{spot_diameter_fullres: 40"))
    visium("visium_scalefactors_missing_key", "scalefactors_json.json without spot_diameter_fullres",
           "scalefactors_missing_key", file="scalefactors_json.json", field="spot_diameter_fullres",
           text="missing", files=visium_files(scalefactors=b'{"tissue_lowres_scalef": 0.1}'))
    visium("visium_scalefactor_not_a_number", "tissue_lowres_scalef: 'about 0.1' (text, not a number: the image "
           "would silently be unused)", "scalefactor_text", file="scalefactors_json.json",
           field="tissue_lowres_scalef", text="must be a number", files=visium_files(
               scalefactors=b'{"spot_diameter_fullres": 40.0, "tissue_lowres_scalef": "about 0.1"}'))
    visium("visium_mtx_negative", "a negative count in matrix.mtx", "mtx_negative", file="matrix.mtx",
           field="counts", text="negative", files=visium_files(negative=True))
    visium("visium_mtx_shape", "matrix.mtx says 5 genes, features.tsv lists 3", "mtx_shape", file="matrix.mtx",
           field="matrix", text="features", files=visium_files(mtx_header="5 16 40"))
    visium("visium_h5_truncated", "filtered_feature_bc_matrix.h5 cut to 2 KB", "h5_truncated",
           file="filtered_feature_bc_matrix.h5", field="matrix", text="cannot read the 10x HDF5 matrix",
           files={"filtered_feature_bc_matrix.h5": truncated_10x_h5(),
                  **{k: v for k, v in visium_files().items() if k.startswith("spatial/")}})
    case("h5ad_truncated", "read_h5ad", "an .h5ad cut to 2 KB", args={"path": "h5/truncated.h5ad", "slide_id": "H1"},
         slide="H1", file="truncated.h5ad", field="h5ad", text="cannot read the h5ad file",
         files={"h5/truncated.h5ad": truncated_h5ad()})

    # ---- specs: the spec itself is bad (load_spec -> SpecError naming field + line)
    def bad_spec(id, doc, text: bytes, *, field, needle=None, line=None, msg=""):
        rel = f"spec/{id}.yaml"
        case(id, "load_spec", doc, args={"spec": rel}, file=f"{id}.yaml", field=field,
             line=line if line is not None else (_line(text, needle) if needle else None), text=msg,
             files={rel: text})

    t = spec(GOOD_S1.replace("reader: legacy_st", "reader: [legacy_st"))
    bad_spec("malformed_yaml", "an unclosed flow sequence (the parser notices on the next line and names both)",
             t, field="<yaml>", line=_line(t, "[legacy_st") + 1, msg="flow sequence started at line 7")
    t = spec(GOOD_S1).replace(b"        counts:", b"\tcounts:")
    bad_spec("tab_indent", "a tab used for indentation", t, field="<yaml>", needle="\tcounts", msg="")
    t = spec(GOOD_S1.replace("- id: S1", "- id: !!python/object/apply:os.system ['touch senca_pwned']"))
    bad_spec("python_object_tag", "a !!python/object/apply tag: refused by safe loading, nothing executed", t,
             field="<yaml>", needle="python/object", msg="'!!python/object/apply:os.system' is not allowed")
    t = spec(GOOD_S1.replace("        spots:", "        spot:"))
    bad_spec("unknown_key", "a typo: 'spot' for 'spots' (one error for the unknown key, one for the missing "
             "field, both on the slide)", t, field="patients[0].slides[0].spot", needle="spot:",
             msg="unknown field")
    t = spec(GOOD_S1, extra="trainnig:\n  epochs: 3\n")
    bad_spec("unknown_top_key", "an unknown top-level section", t, field="trainnig", needle="trainnig",
             msg="unknown field")
    t = spec(GOOD_S1, extra="training:\n  epochs: many\n")
    bad_spec("wrong_type_scalar", "training.epochs: 'many'", t, field="training.epochs", needle="epochs: many",
             msg="integer")
    t = spec(GOOD_S1 + "        image_scale: half\n")
    bad_spec("wrong_type_slide", "image_scale: 'half'", t, field="patients[0].slides[0].image_scale",
             needle="image_scale", msg="number")
    t = b"name: bad-inputs\npatients:\n  P1: {slides: []}\n"
    bad_spec("wrong_type_structure", "patients is a mapping, not a list", t, field="patients", needle="patients:",
             msg="list")
    t = spec(GOOD_S1 + "        image_scale: -2\n")
    bad_spec("negative_number", "image_scale: -2", t, field="patients[0].slides[0].image_scale",
             needle="image_scale", msg="greater than 0")
    t = spec(GOOD_S1 + "        image_scale: .nan\n")
    bad_spec("nan_number", "image_scale: .nan", t, field="patients[0].slides[0].image_scale",
             needle="image_scale", msg="finite")
    t = spec(GOOD_S1, extra="model:\n  hidden: 1.0e+400\n")
    bad_spec("huge_number", "model.hidden: 1e400 (infinite)", t, field="model.hidden", needle="hidden",
             msg="integer")
    t = spec(GOOD_S1.replace("        spots: ../legacy/S1_selection.tsv\n", ""))
    bad_spec("missing_required", "a legacy_st slide without 'spots'", t, field="patients[0].slides[0].spots",
             needle="- id: S1", msg="required field is missing")
    t = spec(GOOD_S1.replace("reader: legacy_st", "reader: xenium"))
    bad_spec("unknown_reader", "reader: xenium", t, field="patients[0].slides[0].reader", needle="xenium",
             msg="unknown reader")
    t = spec(GOOD_S1 + legacy_slide("S2", "../legacy/S1.tsv.gz", patient="P1"))
    bad_spec("duplicate_patient_id", "two patients with id P1", t, field="patients[1].id", line=12,
             msg="duplicate patient id 'P1'")
    t = spec(GOOD_S1 + legacy_slide("S1", "../legacy/S1.tsv.gz"))
    bad_spec("duplicate_slide_id", "slide id S1 in two patients", t, field="patients[1].slides[0].id", line=14,
             msg="duplicate slide id 'S1'")
    t = spec(GOOD_S1.replace("        spots:", "        counts: ../legacy/S1.tsv.gz\n        spots:"))
    bad_spec("duplicate_key", "the same key twice in one slide (plain safe_load keeps the last silently)", t,
             field="patients[0].slides[0].counts", line=9, msg="duplicate key 'counts' (first at line 8)")
    t = spec(GOOD_S1).replace(b"name: bad-inputs", b"name: bad-inputs  # caf\xe9 (latin-1)")
    bad_spec("not_utf8", "a latin-1 byte in the YAML", t, field="<file>", line=1, msg="not UTF-8")
    t = spec(GOOD_S1).replace(b"name: bad-inputs", b"name: bad-\x07inputs")
    bad_spec("control_character", "a BEL control character", t, field="<yaml>", line=1, msg="U+0007")
    bad_spec("empty", "an empty file", b"", field="<root>", line=1, msg="empty")
    bad_spec("not_a_mapping", "a YAML list at the top", b"- a\n- b\n", field="<root>", line=1, msg="mapping")
    t = (b"name: bad-inputs\npatients:\n  - &p {id: P1, slides: [{id: S1, reader: h5ad, path: x.h5ad}], "
         b"extra: *p}\n")
    bad_spec("recursive_alias", "a patient that contains itself through an alias", t, field="<yaml>", line=3,
             msg="recursive")
    levels = ["a: &a [x, x, x, x, x, x, x, x, x, x]"] + [
        f"{c}: &{c} [" + ", ".join([f"*{p}"] * 10) + "]" for p, c in zip("abcdef", "bcdefg")]
    t = ("\n".join(levels) + "\nname: bad-inputs\npatients: [*g]\n").encode()
    bad_spec("alias_bomb", "a 'billion laughs' alias bomb (10^7 values)", t, field="<yaml>", line=None,
             msg="expands to more than")
    t = spec(GOOD_S1.replace("../legacy/S1.tsv.gz", "\"\""))
    bad_spec("empty_path", "counts: '' (an empty path)", t, field="patients[0].slides[0].counts", line=8,
             msg="path is empty")
    t = spec(GOOD_S1, extra="paths:\n  confine_to_spec_dir: true\n")
    bad_spec("path_escape", "paths.confine_to_spec_dir: true and counts: ../legacy/S1.tsv.gz (outside the "
             "spec's folder)", t, field="patients[0].slides[0].counts", line=8, msg="outside the spec's folder")
    t = spec(GOOD_S1.replace("../legacy/S1.tsv.gz", "/etc/passwd"), extra="paths:\n  confine_to_spec_dir: true\n")
    bad_spec("path_absolute", "paths.confine_to_spec_dir: true and an absolute counts path", t,
             field="patients[0].slides[0].counts", line=8, msg="outside the spec's folder")
    t = spec(GOOD_S1, extra="model:\n  hidden: big\n")
    bad_spec("model_wrong_type", "model.hidden: 'big'", t, field="model.hidden", needle="hidden: big",
             msg="must be an integer")

    # ---- specs: valid spec, bad data (check_inputs / validate --strict)
    def data_spec(id, doc, text: bytes, *, slide, file, field, msg):
        rel = f"spec/{id}.yaml"
        case(id, "check_inputs", doc, args={"spec": rel}, slide=slide, file=file, field=field, text=msg,
             files={rel: text})

    t = spec(GOOD_S1 + legacy_slide("S2", "../legacy/counts_negative.tsv"))
    data_spec("one_bad_slide", "S1 is fine, S2's counts have a negative value: only S2 is named", t, slide="S2",
              file="counts_negative.tsv", field="patients[1].slides[0].counts", msg="negative")
    t = spec(GOOD_S1 + legacy_slide("S2", "../legacy/S2_missing.tsv.gz"))
    data_spec("missing_file", "S2's counts file does not exist", t, slide="S2", file="S2_missing.tsv.gz",
              field="patients[1].slides[0].counts", msg="file not found")
    t = spec(GOOD_S1, extra="clustering:\n  k: 40\n")
    data_spec("k_above_spots", "clustering.k: 40 but the cohort has 16 spots", t, slide=None, file=None,
              field="clustering.k", msg="k=40 regions but the 1 readable slide(s) have only 16 spots")
    t = spec(GOOD_S1 + legacy_slide("S2", "../legacy/S1.tsv.gz",
                                    more="        image: ../legacy/image_truncated.jpg\n"))
    data_spec("truncated_image", "S2's JPEG is cut in its pixel data (header fine)", t, slide="S2",
              file="image_truncated.jpg", field="patients[1].slides[0].image", msg="pixel data cannot be decoded")
    t = spec(GOOD_S1 + "  - id: P2\n    slides:\n      - {id: V1, reader: visium, path: ../visium/mtx_negative}\n")
    data_spec("visium_bad_slide", "a Visium slide whose matrix has a negative count", t, slide="V1",
              file="matrix.mtx", field="patients[1].slides[0].path", msg="negative")
    t = spec(GOOD_S1 + "  - id: P2\n    slides:\n      - {id: H1, reader: h5ad, path: ../h5/truncated.h5ad}\n")
    data_spec("h5ad_bad_slide", "a truncated .h5ad slide", t, slide="H1", file="truncated.h5ad",
              field="patients[1].slides[0].path", msg="cannot read")


def write(out: Path = HERE) -> list[Path]:
    """Write every corpus file under ``out``; returns the paths written."""
    build_cases()
    written = []
    for rel, data in sorted(FILES.items()):
        p = out / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        written.append(p)
    (out / "README.md").write_text(readme())
    return written


def readme() -> str:
    """README.md of the corpus: one line per case (generated; edit make_corpus.py instead)."""
    out = ["# Bad-input corpus (generated by `make_corpus.py`; edit that script, then run it)", "",
           "Each case: the entry point it goes through, what is wrong, and what its one error must name "
           "(tested by `tests/test_bad_inputs.py`).", "",
           "| case | entry | what is wrong | slide | file | field | line | message contains |",
           "|---|---|---|---|---|---|---|---|"]
    for c in CASES:
        code = (lambda v: f"`{v}`" if v else "")
        cells = [c["id"], c["entry"], c["doc"], c["slide"] or "", code(c["file"]), code(c["field"]),
                 str(c["line"] or ""), code(c["text"])]
        out.append("| " + " | ".join(str(x).replace("|", "\\|") for x in cells) + " |")
    out += ["", "## Accepted with warnings", "",
            "Label files of the good slide S1 that read: the odd rows are skipped, counted in "
            "`uns['senca']['labels_join']` and said in `uns['senca']['warnings']` (only counts and spots are strict).",
            "", "| case | what is odd | label file | spots labelled | warning contains |", "|---|---|---|---|---|"]
    for c in ACCEPTED:
        out.append(f"| {c['id']} | {c['doc']} | `{c['labels']}` | {c['labelled']} | "
                   + ", ".join(f"`{w}`" for w in c["warnings"]) + " |")
    return "\n".join(out) + "\n"


build_cases()

if __name__ == "__main__":
    paths = write(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
    print(f"wrote {len(paths)} files, {len(CASES)} cases, {len(ACCEPTED)} accepted; "
          f"largest {max(p.stat().st_size for p in paths)} bytes")
