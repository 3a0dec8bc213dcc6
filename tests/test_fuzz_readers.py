"""Fuzz tests (hypothesis) of ``senca_core.io``: mutated bytes of the small valid files of tests/bad_inputs (legacy-ST
counts, plain and gzipped, spot file, labels, JPEG / TIFF image, the Visium positions / scale factors / MEX files)
either read or raise ``SlideError``, never a raw exception. Settings: tests/_fuzz.py."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from senca_core.errors import SlideError
from senca_core.io import read_legacy_st, read_visium

from _corpus import CORPUS, load_make_corpus
from _fuzz import FUZZ, FUZZ_READERS


# ------------------------------------------------------------------------------------------------ (b) readers
@st.composite
def _mutated_bytes(draw, data: bytes, tokens: list[bytes] = ()) -> bytes:
    """``data`` with 1–4 edits: byte flips, inserted bytes or tokens, deleted ranges, truncation."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "token", "delete", "truncate"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[i] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "token":
            tok = draw(st.sampled_from(list(tokens) + [b"\t", b"\n", b"\x00", b"-", b"nan", b"inf", b"1e999",
                                                       b"99999999999999999999999", b'"', b"\xff\xfe", b"x"]))
            j = i + draw(st.integers(0, 4))
            data[i:j] = tok
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[i:]
    return bytes(data)


def _slide_outcome(call) -> None:
    """``call()`` may succeed (a valid AnnData) or raise SlideError naming the slide; nothing else."""
    try:
        adata = call()
    except SlideError as err:
        assert err.slide is not None, str(err)
        assert "\n" not in str(err) and "Traceback" not in str(err)
        return
    assert adata.n_obs > 0 and adata.n_vars > 0
    assert adata.X.dtype == "float32"


def _legacy_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.getbasetemp() / "fuzz_legacy"
    if not d.exists():
        shutil.copytree(CORPUS / "legacy", d)
    return d


_TSV_TOKENS = [b"-3", b"1x1", b"0x0", b"-1x-1", b"\t\t", b"\r\n", b"abc", b"NA", b"", b"1.5", b"selected",
               b"pixel_x", b"label", b"x", b"y"]
LEGACY = {name: (CORPUS / "legacy" / name).read_bytes()
          for name in ("S1.tsv.gz", "S1_selection.tsv", "S1_labels.tsv", "S1.jpg")}
COUNTS_TEXT = __import__("gzip").decompress(LEGACY["S1.tsv.gz"])


def _read_with(d: Path, **replaced: bytes):
    files = {"counts": "S1.tsv.gz", "spots": "S1_selection.tsv", "labels": "S1_labels.tsv", "image": "S1.jpg"}
    paths = {}
    for role, name in files.items():
        if role in replaced:
            p = d / f"fuzz_{role}{Path(name).suffix}"
            p.write_bytes(replaced[role])
            paths[role] = p
        else:
            paths[role] = d / name
    image = paths["image"] if "image" in replaced else None
    labels = paths["labels"] if "labels" in replaced else None
    return lambda: read_legacy_st(paths["counts"], paths["spots"], labels=labels, image=image, slide_id="S1")


@FUZZ_READERS
@given(data=_mutated_bytes(COUNTS_TEXT, _TSV_TOKENS))
def test_legacy_counts_text(data, tmp_path_factory):
    _slide_outcome(_read_with(_legacy_dir(tmp_path_factory), counts=data))


@FUZZ_READERS
@given(data=_mutated_bytes(LEGACY["S1.tsv.gz"]), text=_mutated_bytes(COUNTS_TEXT, _TSV_TOKENS))
def test_legacy_counts_gzip(data, text, tmp_path_factory):
    """Broken compressed bytes, and broken text compressed correctly."""
    import gzip

    d = _legacy_dir(tmp_path_factory)
    _slide_outcome(_read_with(d, counts=data))
    _slide_outcome(_read_with(d, counts=gzip.compress(text, mtime=0)))


@FUZZ_READERS
@given(data=_mutated_bytes(LEGACY["S1_selection.tsv"], _TSV_TOKENS))
def test_legacy_spot_file(data, tmp_path_factory):
    _slide_outcome(_read_with(_legacy_dir(tmp_path_factory), spots=data))


@FUZZ_READERS
@given(data=_mutated_bytes(LEGACY["S1_labels.tsv"], _TSV_TOKENS))
def test_legacy_labels(data, tmp_path_factory):
    _slide_outcome(_read_with(_legacy_dir(tmp_path_factory), labels=data))


def _tiff() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (100, 100), (220, 170, 200)).save(buf, format="TIFF")
    return buf.getvalue()


_IMAGE_TOKENS = [b"\xff\xd8", b"\xff\xd9", b"\xff\xc0\x00\x11", b"\xff\xda", b"II*\x00", b"MM\x00*",
                 b"\xff\xff\xff\xff", b"\x00\x00\x00\x00"]


def _decode_outcome(path: Path) -> None:
    """What ``validate`` does with a slide's image (decode it once): nothing, or a SlideError naming it."""
    from senca_platform.spec import _decode_image

    try:
        _decode_image(str(path), "S1")
    except SlideError as err:
        assert err.slide == "S1" and err.file == str(path) and "\n" not in str(err)


@FUZZ_READERS
@given(data=_mutated_bytes(LEGACY["S1.jpg"], _IMAGE_TOKENS))
def test_legacy_image_jpeg(data, tmp_path_factory):
    """Mutated JPEG bytes: the reader (header only) and what ``validate`` does (decode once)."""
    d = _legacy_dir(tmp_path_factory)
    _slide_outcome(_read_with(d, image=data))
    _decode_outcome(d / "fuzz_image.jpg")


@FUZZ_READERS
@given(data=_mutated_bytes(_tiff(), _IMAGE_TOKENS))
def test_legacy_image_tiff(data, tmp_path_factory):
    d = _legacy_dir(tmp_path_factory)
    (d / "fuzz_image.tif").write_bytes(data)
    _slide_outcome(lambda: read_legacy_st(d / "S1.tsv.gz", d / "S1_selection.tsv", image=d / "fuzz_image.tif",
                                          slide_id="S1"))
    _decode_outcome(d / "fuzz_image.tif")


VISIUM_FILES = {p.relative_to(CORPUS / "visium" / "V1").as_posix(): p.read_bytes()
                for p in (CORPUS / "visium" / "V1").rglob("*") if p.is_file()}
_CSV_TOKENS = [b",", b",,", b"\n", b"barcode", b"in_tissue", b"-1", b"0", b"AAACGT00-1", b"1e999", b"\"", b";"]


def _visium_call(tmp_path_factory, name: str, data: bytes):
    d = tmp_path_factory.getbasetemp() / "fuzz_visium"
    if d.exists():
        shutil.rmtree(d)
    for rel, content in VISIUM_FILES.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data if rel == name else content)
    return lambda: read_visium(d, slide_id="V1")


@FUZZ_READERS
@given(name=st.sampled_from(sorted(VISIUM_FILES)), data=st.data())
def test_visium_files(name, data, tmp_path_factory):
    """Mutated bytes of one file of the Space Ranger folder (positions, scale factors, MEX counts)."""
    mutated = data.draw(_mutated_bytes(VISIUM_FILES[name], _CSV_TOKENS + _TSV_TOKENS + [b"%%MatrixMarket", b"{", b"}"]))
    _slide_outcome(_visium_call(tmp_path_factory, name, mutated))


H5 = load_make_corpus().visium_10x_h5()  # the good Visium slide's 10x matrix, whole


def _damaged(data: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    """``data`` with a few bytes XOR-ed (``flips``: (offset, mask)), or, without flips, cut at ``cut``."""
    out = bytearray(data)
    for i, x in flips:
        out[i] ^= x
    if not flips:
        del out[cut:]
    return bytes(out)


@settings(FUZZ, max_examples=60)
@given(cut=st.integers(0, len(H5) - 1), flips=st.lists(st.tuples(st.integers(0, len(H5) - 1),
                                                                  st.integers(1, 255)), max_size=2))
def test_visium_h5(cut, flips, tmp_path_factory):
    """A truncated 10x HDF5 matrix, or one with a few bytes changed inside its data (not its B-trees)."""
    d = tmp_path_factory.getbasetemp() / "fuzz_h5"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir()
    for rel, content in VISIUM_FILES.items():
        if rel.startswith("spatial/"):
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_bytes(content)
    (d / "filtered_feature_bc_matrix.h5").write_bytes(_damaged(H5, cut, flips))
    _slide_outcome(lambda: read_visium(d, slide_id="V1"))


def test_h5_seed_is_valid(tmp_path):
    for rel, content in VISIUM_FILES.items():
        if rel.startswith("spatial/"):
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_bytes(content)
    (tmp_path / "filtered_feature_bc_matrix.h5").write_bytes(H5)
    a = read_visium(tmp_path, slide_id="V1")
    assert a.n_obs == 16 and a.n_vars == 3


@pytest.mark.parametrize("name", ["S1.tsv.gz", "S1_selection.tsv", "S1_labels.tsv", "S1.jpg"])
def test_fuzz_seeds_are_valid(name, tmp_path_factory):
    """The unmutated seeds read (so the fuzzers start from valid files)."""
    d = _legacy_dir(tmp_path_factory)
    role = {"S1.tsv.gz": "counts", "S1_selection.tsv": "spots", "S1_labels.tsv": "labels", "S1.jpg": "image"}[name]
    adata = _read_with(d, **{role: LEGACY[name]})()
    assert adata.n_obs == 16


# ------------------------------------------------------------------------------------------------ h5ad
_NUMBERS = st.floats(allow_nan=True, allow_infinity=True, width=32) | st.integers(-5, 50)
_UNS_VALUES = st.one_of(st.text(max_size=8), st.integers(-3, 10 ** 12), st.floats(allow_nan=True),
                        st.booleans(), st.lists(st.integers(0, 9), max_size=3),
                        st.dictionaries(st.text(min_size=1, max_size=5), st.integers(0, 9), max_size=2))
_SENCA_KEYS = ["slide_id", "patient_id", "platform", "grid", "image_path", "spot_diameter_px", "scalefactors",
               "source_files", "join", "labels_join", "n_zero_spots_dropped"]


@st.composite
def _adata(draw):
    """A small AnnData with drawn counts, coordinates and stored ``uns["senca"]`` (any of them wrong)."""
    import anndata
    import numpy as np
    import scipy.sparse as sp

    n, g = draw(st.integers(0, 6)), draw(st.integers(0, 4))
    values = np.array(draw(st.lists(_NUMBERS, min_size=n * g, max_size=n * g)), dtype=np.float64).reshape(n, g)
    kind = draw(st.sampled_from(["csr", "dense", "int", "bool"]))
    X = {"csr": lambda v: sp.csr_matrix(v.astype(np.float32)), "dense": lambda v: v.astype(np.float32),
         "int": lambda v: np.clip(np.nan_to_num(v, nan=0), -9, 10 ** 6).astype(np.int64),
         "bool": lambda v: v > 0}[kind](values)
    adata = anndata.AnnData(X=X)
    shape = draw(st.sampled_from([None, (n, 2), (n, 1), (n, 3)]))
    if shape is not None:
        xy = np.array(draw(st.lists(_NUMBERS, min_size=shape[0] * shape[1], max_size=shape[0] * shape[1])),
                      dtype=np.float64).reshape(shape)
        adata.obsm["spatial"] = xy
    if draw(st.booleans()):
        adata.uns["senca"] = {k: draw(_UNS_VALUES) for k in draw(st.lists(st.sampled_from(_SENCA_KEYS),
                                                                            max_size=3, unique=True))}
    return adata


@settings(FUZZ, max_examples=80)
@given(adata=_adata())
def test_h5ad_contents(adata, tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "fuzz.h5ad"
    try:
        adata.write_h5ad(path)
    except Exception:  # noqa: BLE001 - anndata cannot store this: nothing to read
        return
    from senca_core.io import read_h5ad

    _slide_outcome(lambda: read_h5ad(path, slide_id="H1"))


def _h5ad_bytes() -> bytes:
    import tempfile

    import anndata
    import numpy as np
    import scipy.sparse as sp

    a = anndata.AnnData(X=sp.csr_matrix(np.arange(1, 49, dtype=np.float32).reshape(16, 3)))
    a.obsm["spatial"] = np.stack(np.meshgrid(np.arange(4.0), np.arange(4.0)), -1).reshape(16, 2) * 100
    a.uns["senca"] = {"slide_id": "H1", "grid": "square", "n_zero_spots_dropped": 0}
    with tempfile.TemporaryDirectory() as tmp:
        a.write_h5ad(Path(tmp) / "x.h5ad")
        return (Path(tmp) / "x.h5ad").read_bytes()


H5AD = _h5ad_bytes()


@settings(FUZZ, max_examples=60)
@given(cut=st.integers(0, len(H5AD) - 1), flips=st.lists(st.tuples(st.integers(0, len(H5AD) - 1),
                                                                    st.integers(1, 255)), max_size=2))
def test_h5ad_bytes(cut, flips, tmp_path_factory):
    from senca_core.io import read_h5ad

    path = tmp_path_factory.getbasetemp() / "fuzz_bytes.h5ad"
    path.write_bytes(_damaged(H5AD, cut, flips))
    _slide_outcome(lambda: read_h5ad(path, slide_id="H1"))
