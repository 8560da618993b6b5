"""Hostile inputs: every file fedsynth reads is bounded and fails with a clear reason.

Each hostile file is built here, small, in tmp_path: headers that announce far more pixels
than the bytes behind them, npz members that lie about their shape or carry a pickle,
corrupt zip members, YAML alias bombs, non-finite config numbers, classifier headers with
a NaN threshold, labels.csv rows that leave the folder. A file is either used or refused
with the documented error (a skip with its reason in the ingestion report, DataError,
ConfigError, UploadError); nothing else escapes, nothing decodes gigabytes.
"""

from __future__ import annotations

import io
import json
import math
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, features

from fedsynth.config import (
    MAX_CONFIG_BYTES,
    RunConfig,
    load_config,
    load_site_config,
    parse_overrides,
)
from fedsynth.data.errors import MAX_PIXELS, TooManyPixels, UnreadableImage
from fedsynth.data.ingest import IngestReport, load_source, read_image_file
from fedsynth.errors import ConfigError, DataError
from tests.test_ingest import gray8, ramp12, write_dicom, write_png

FUZZ = settings(max_examples=60, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def said(result) -> str:
    """A CLI run's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def skipped(report: IngestReport) -> dict[str, str]:
    return {Path(s.path).name: s.reason for s in report.skipped}


def folder_with(tmp_path: Path, hostile: dict[str, bytes]) -> Path:
    """A class folder holding one good PNG per class and the hostile files (all NORMAL/)."""
    root = tmp_path / "site"
    write_png(root / "NORMAL" / "good0.png", gray8(1))
    write_png(root / "PNEUMONIA" / "good1.png", gray8(2))
    for name, data in hostile.items():
        (root / "NORMAL" / name).write_bytes(data)
    return root


def assert_skipped_not_aborted(root: Path, name: str, needle: str, **kw) -> str:
    ds, rep = load_source(root, 16, **kw)
    assert sorted(Path(s).name for s in ds.sources) == ["good0.png", "good1.png"]
    reasons = skipped(rep)
    assert needle in reasons[name], reasons
    assert rep.n_found == rep.n_loaded + len(rep.skipped)
    return reasons[name]


# ---- hostile image files ------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int, bit_depth: int = 8) -> bytes:
    """A PNG written by hand: its IHDR claims width x height, its IDAT holds 1000 zero bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 1000))
            + _chunk(b"IEND", b""))


def _encode(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(_encode(gray8(3, (16, 16)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def bmp_claiming(width: int, height: int) -> bytes:
    data = bytearray(_encode(gray8(4, (16, 16)), "BMP"))
    struct.pack_into("<ii", data, 18, width, height)
    return bytes(data)


def tiff_claiming(width: int, height: int) -> bytes:
    data = bytearray(_encode(gray8(5, (16, 16)), "TIFF"))
    assert data[:4] == b"II*\0"
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack_from("<HH", data, entry)
        if tag in (256, 257):
            value = width if tag == 256 else height
            if kind == 3:  # SHORT: PIL wrote 16 as a short; make it a LONG to hold a large value
                struct.pack_into("<HHII", data, entry, tag, 4, 1, value)
            else:
                struct.pack_into("<I", data, entry + 8, value)
    return bytes(data)


@pytest.mark.parametrize(
    ("name", "data", "needle"),
    [
        ("ihdr-100000.png", png_claiming(100_000, 100_000), "far too many pixels"),  # Pillow's own error
        ("ihdr-100000-16bit.png", png_claiming(100_000, 100_000, 16), "far too many pixels"),
        ("ihdr-10000.png", png_claiming(10_000, 10_000), "megapixels"),  # Pillow's warning range
        ("ihdr-9000.png", png_claiming(9_000, 9_000), "9000 x 9000 pixels"),  # below Pillow's limits
        ("ihdr-1x100000000.png", png_claiming(1, 100_000_000), "megapixels"),
        ("sof-65000.jpg", jpeg_claiming(65_000, 65_000), "far too many pixels"),
        ("sof-9000.jpg", jpeg_claiming(9_000, 9_000), "9000 x 9000 pixels"),
        ("header-20000.bmp", bmp_claiming(20_000, 20_000), "far too many pixels"),
        ("header-9000.bmp", bmp_claiming(9_000, 9_000), "9000 x 9000 pixels"),
        ("ifd-9000.tif", tiff_claiming(9_000, 9_000), "9000 x 9000 pixels"),
        ("ifd-100000.tif", tiff_claiming(100_000, 100_000), "far too many pixels"),
    ],
)
def test_image_header_over_the_pixel_limit_is_a_skip_not_an_abort(tmp_path, name, data, needle):
    root = folder_with(tmp_path, {name: data})
    reason = assert_skipped_not_aborted(root, name, needle)
    assert f"at most {MAX_PIXELS // 1_000_000} megapixels" in reason
    with pytest.raises(TooManyPixels):
        read_image_file(root / "NORMAL" / name)


def test_the_pixel_limit_can_be_overridden(tmp_path):
    path = write_png(tmp_path / "a.png", gray8(1, (40, 40)))
    assert read_image_file(path).shape == (40, 40)
    with pytest.raises(TooManyPixels, match="40 x 40 pixels"):
        read_image_file(path, max_pixels=1000)
    dcm = write_dicom(tmp_path / "a.dcm", ramp12(), bits_stored=12)
    with pytest.raises(TooManyPixels, match="64 x 64 pixels"):
        read_image_file(dcm, max_pixels=4000)
    with pytest.raises(DataError, match="at most 1000 pixels are accepted"):
        load_source(tmp_path, 16, labeled=False, max_pixels=1000)


def test_12_bit_data_in_a_16_bit_png_is_scaled_by_4095(tmp_path):
    arr = np.zeros((16, 16), dtype=np.uint16)
    arr[:8], arr[8:] = 1000, 4000  # a 12-bit detector's values: the maximum is below 4096
    path = write_png(tmp_path / "NORMAL" / "twelve.png", arr)
    with Image.open(path) as check:
        assert check.mode == "I;16"
    img = read_image_file(path)
    np.testing.assert_allclose(img[:8], 1000 / 4095, atol=1e-6)
    np.testing.assert_allclose(img[8:], 4000 / 4095, atol=1e-6)
    arr[0, 0] = 4096  # one value above 12 bits: the image is 16-bit data
    np.testing.assert_allclose(read_image_file(write_png(tmp_path / "sixteen.png", arr))[8:], 4000 / 65535,
                               atol=1e-6)


def test_float_tiff_with_nan_is_skipped(tmp_path):
    arr = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    arr[3, 3] = np.nan
    path = tmp_path / "nan.tif"
    Image.fromarray(arr, mode="F").save(path)
    with pytest.raises(UnreadableImage, match="non-finite"):
        read_image_file(path)


# ---- hostile DICOM ------------------------------------------------------------------------------


def _rewrite(path: Path, **header) -> Path:
    import pydicom

    ds = pydicom.dcmread(path)
    for key, value in header.items():
        setattr(ds, key, value)
    ds.save_as(path)
    return path


def rle_dicom(path: Path, rows: int, columns: int) -> Path:
    """An RLE-compressed 32 x 32 DICOM whose header then claims rows x columns."""
    import pydicom
    from pydicom.uid import RLELossless

    write_dicom(path, gray8(6, (32, 32)))
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    ds.Rows, ds.Columns = rows, columns
    ds.save_as(path)
    return path


def j2k_dicom(path: Path, rows: int, columns: int, codestream_size: tuple[int, int] | None = None) -> Path:
    """A JPEG 2000 DICOM of a 32 x 32 image; the header claims rows x columns, the codestream's
    own SIZ marker ``codestream_size`` (Pillow decodes by the latter)."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    code = bytearray(_encode(gray8(7, (32, 32)), "JPEG2000", no_jp2=True, irreversible=False))
    if codestream_size is not None:
        struct.pack_into(">II", code, code.index(b"\xff\x51") + 6, *codestream_size)
    write_dicom(path, gray8(7, (32, 32)))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([bytes(code)])
    ds["PixelData"].VR = "OB"
    ds.Rows, ds.Columns = rows, columns
    ds.save_as(path, enforce_file_format=True)
    return path


def set_number_of_frames(path: Path, value: bytes) -> Path:
    """Write NumberOfFrames as raw bytes (pydicom refuses to write a malformed IS)."""
    raw = path.read_bytes()
    tag = b"\x28\x00\x08\x00IS"
    i = raw.index(tag)
    old = struct.unpack_from("<H", raw, i + 6)[0]
    value += b" " * (len(value) % 2)
    path.write_bytes(raw[:i] + tag + struct.pack("<H", len(value)) + value + raw[i + 8 + old:])
    return path


needs_j2k = pytest.mark.skipif(not features.check("jpg_2000"), reason="Pillow without OpenJPEG")


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: rle_dicom(p, 8200, 8200), "DICOM is 8200 x 8200 pixels"),
        (lambda p: rle_dicom(p, 65535, 65535), "DICOM is 65535 x 65535 pixels"),
        pytest.param(lambda p: j2k_dicom(p, 8200, 8200), "DICOM is 8200 x 8200 pixels", marks=needs_j2k),
        pytest.param(lambda p: j2k_dicom(p, 32, 32, (20_000, 20_000)), "compressed frame has far too many",
                     marks=needs_j2k),
        pytest.param(lambda p: j2k_dicom(p, 32, 32, (10_000, 10_000)), "compressed frame has far too many",
                     marks=needs_j2k),  # Pillow's warning range: raised, not just printed
        (lambda p: _rewrite(write_dicom(p, ramp12(), bits_stored=12), Rows=60000, Columns=60000),
         "DICOM is 60000 x 60000 pixels"),
        (lambda p: set_number_of_frames(write_dicom(p, ramp12(), bits_stored=12, frames=1), b"99999999999"),
         "99999999999 frames"),
    ],
    ids=["rle-8200", "rle-65535", "j2k-8200", "j2k-codestream-20000", "j2k-codestream-10000",
         "native-60000", "frames-huge"],
)
def test_dicom_over_the_pixel_limit_is_refused_before_decoding(tmp_path, make, needle):
    name = "big.dcm"
    root = folder_with(tmp_path, {})
    path = make(root / "NORMAL" / name)
    assert path.stat().st_size < 20_000  # a tiny file announcing gigabytes
    reason = assert_skipped_not_aborted(root, name, needle)
    assert "at most 64 megapixels" in reason


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("value", [b"abc", b"-3", b"0", b"1.5", b"1\\2", b"1e9x", b"\xff\xfe"])
def test_dicom_malformed_number_of_frames_is_a_skip(tmp_path, value):
    root = folder_with(tmp_path, {})
    set_number_of_frames(write_dicom(root / "NORMAL" / "frames.dcm", ramp12(), bits_stored=12, frames=1), value)
    assert_skipped_not_aborted(root, "frames.dcm", "NumberOfFrames")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_dicom_empty_number_of_frames_reads_as_one(tmp_path):
    path = set_number_of_frames(write_dicom(tmp_path / "f.dcm", ramp12(), bits_stored=12, frames=1), b"")
    assert read_image_file(path).shape == (64, 64)


def test_deflated_dicom_that_inflates_past_the_bound_is_refused(tmp_path):
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    path = write_dicom(tmp_path / "deflated.dcm", ramp12(32), bits_stored=12)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.EncapsulatedDocument = bytes(20_000_000)  # 20 MB of zeros deflate to 20 KB
    ds.save_as(path)
    assert path.stat().st_size < 50_000
    assert read_image_file(path).shape == (32, 32)  # within the default bound it reads
    with pytest.raises(UnreadableImage, match="inflates to more than"):
        read_image_file(path, max_pixels=1000)  # bound: 4 bytes a pixel + 16 MiB


def test_scoring_upload_refuses_a_dicom_bomb_with_413(tmp_path):
    from fedsynth.classifier.models import build_classifier
    from fedsynth.classifier.train import Classifier
    from fedsynth.webapp.scoring import Scorer, UploadError

    scorer = Scorer(Classifier(build_classifier("small-cnn", 16), "small-cnn", 16, 0.5))
    bomb = rle_dicom(tmp_path / "bomb.dcm", 8200, 8200)
    with pytest.raises(UploadError) as info:
        scorer.score_file(bomb)
    assert info.value.status == 413 and "8200 x 8200" in str(info.value)
    png = tmp_path / "bomb.png"
    png.write_bytes(png_claiming(100_000, 100_000))
    with pytest.raises(UploadError) as info:
        scorer.score_file(png)
    assert info.value.status == 413
    ok = write_dicom(tmp_path / "ok.dcm", ramp12(), bits_stored=12)
    assert 0 <= scorer.score_file(ok).probability <= 1


# ---- hostile npz --------------------------------------------------------------------------------


def npy(header: dict, data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + data


def zip_members(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def labels_npy(n: int = 2) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.arange(n) % 2)
    return buf.getvalue()


def good_bundle(path: Path, n: int = 4, compressed: bool = False) -> Path:
    save = np.savez_compressed if compressed else np.savez
    save(path, images=np.random.default_rng(0).integers(0, 256, (n, 64, 64), dtype=np.uint8),
         labels=np.arange(n) % 2, split=np.array(["train", "test"] * (n // 2)))
    return path


def flip_in_member(path: Path, member: str, where: float) -> Path:
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + int(where * (info.compress_size - 1))] ^= 0xFF
    path.write_bytes(bytes(raw))
    return path


def _bomb_member() -> bytes:
    return npy({"descr": "|u1", "fortran_order": False, "shape": (2, 16, 16)}, bytes(512 + 20_000_000))


NPZ_CASES = {
    "object-array": (lambda p: np.savez(p, images=np.array([{"x": 1}, None], dtype=object), labels=np.array([0, 1])),
                     "'images' holds Python objects"),
    "pickle-labels": (lambda p: np.savez(p, images=np.zeros((2, 16, 16), np.uint8),
                                         labels=np.array([0, "1"], dtype=object)), "'labels' holds Python objects"),
    "header-391-GiB": (lambda p: zip_members(p, {"images.npy": npy({"descr": "|u1", "fortran_order": False,
                                                                     "shape": (400_000, 1024, 1024)}),
                                                 "labels.npy": labels_npy()}), "391 GiB"),
    "header-huge-labels": (lambda p: zip_members(p, {"images.npy": npy({"descr": "|u1", "fortran_order": False,
                                                                         "shape": (2, 16, 16)}, bytes(512)),
                                                     "labels.npy": npy({"descr": "<i8", "fortran_order": False,
                                                                        "shape": (10**12,)})}), "GiB"),
    "header-image-400MP": (lambda p: zip_members(p, {"images.npy": npy({"descr": "|u1", "fortran_order": False,
                                                                         "shape": (1, 20_000, 20_000)}),
                                                     "labels.npy": labels_npy(1)}), "megapixels each"),
    "bad-crc-stored": (lambda p: flip_in_member(good_bundle(p), "images.npy", 0.9), "Bad CRC-32"),
    "bad-crc-labels": (lambda p: flip_in_member(good_bundle(p), "labels.npy", 0.99), "'labels'"),
    "corrupt-deflate": (lambda p: flip_in_member(good_bundle(p, compressed=True), "images.npy", 0.5), "'images'"),
    "truncated-zip": (lambda p: p.write_bytes(good_bundle(p).read_bytes()[:3000]), "cannot read npz"),
    "not-a-zip": (lambda p: p.write_bytes(b"PK\x03\x04" + bytes(200)), "cannot read npz"),
    "structured-dtype": (lambda p: np.savez(p, images=np.zeros(2, dtype=[("a", "u1"), ("b", "f4")]),
                                            labels=np.array([0, 1])), "unsupported dtype"),
    "complex-images": (lambda p: np.savez(p, images=np.zeros((2, 16, 16), np.complex64), labels=np.array([0, 1])),
                       "unsupported dtype"),
    "npy-version-9": (lambda p: zip_members(p, {"images.npy": b"\x93NUMPY\x09\x00" + bytes(100),
                                                "labels.npy": labels_npy()}), "'images'"),
    "not-npy-data": (lambda p: zip_members(p, {"images.npy": b"just some bytes", "labels.npy": labels_npy()}),
                     "'images' is not a readable .npy array"),
    "header-longer-than-data": (lambda p: zip_members(p, {"images.npy": npy({"descr": "|u1", "fortran_order": False,
                                                                               "shape": (2, 16, 16)}, bytes(100)),
                                                          "labels.npy": labels_npy()}), "'images' announces shape"),
    "data-longer-than-header": (lambda p: zip_members(p, {"images.npy": _bomb_member(), "labels.npy": labels_npy()},
                                                      zipfile.ZIP_DEFLATED), "data continues after the array"),
    "bad-header-literal": (lambda p: zip_members(p, {"images.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': __im}  \n",
                                                     "labels.npy": labels_npy()}), "'images'"),
    "unknown-split": (lambda p: np.savez(p, images=np.zeros((3, 16, 16), np.uint8), labels=np.array([0, 1, 0]),
                                         split=np.array(["train", "tset", "validation"])), "'tset'"),
    "numeric-split": (lambda p: np.savez(p, images=np.zeros((2, 16, 16), np.uint8), labels=np.array([0, 1]),
                                         split=np.array([0, 1])), "'split' has unknown value"),
    "bytes-split-not-text": (lambda p: np.savez(p, images=np.zeros((2, 16, 16), np.uint8), labels=np.array([0, 1]),
                                                split=np.array([b"\xff\xfe", b"train"])), "'split' is not text"),
    "string-labels": (lambda p: np.savez(p, images=np.zeros((2, 16, 16), np.uint8),
                                         labels=np.array(["normal", "pneumonia"])), "'labels' must be numbers"),
    "medmnist-missing-labels": (lambda p: np.savez(p, train_images=np.zeros((2, 28, 28), np.uint8),
                                                   test_images=np.zeros((2, 28, 28), np.uint8),
                                                   train_labels=np.array([0, 1])), "'test_labels' is missing"),
    "medmnist-mismatched-parts": (lambda p: np.savez(p, train_images=np.zeros((2, 28, 28), np.uint8),
                                                     test_images=np.zeros((2, 64, 64), np.uint8),
                                                     train_labels=np.array([0, 1]), test_labels=np.array([1, 0])),
                                  "do not fit together"),
}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("case", sorted(NPZ_CASES))
def test_hostile_npz_is_a_clear_data_error(tmp_path, case):
    make, needle = NPZ_CASES[case]
    path = tmp_path / "bundle.npz"
    make(path)
    with pytest.raises(DataError) as info:
        load_source(path, 16)
    message = str(info.value)
    assert str(path) in message and needle in message, message


def test_npz_size_limit_can_be_overridden(tmp_path):
    path = good_bundle(tmp_path / "b.npz")
    assert len(load_source(path, 16)[0]) == 4
    with pytest.raises(DataError, match="at most"):
        load_source(path, 16, max_npz_bytes=10_000)
    with pytest.raises(DataError, match="megapixels each|pixels each"):
        load_source(path, 16, max_pixels=1000)


def test_npz_split_aliases_are_normalised(tmp_path):
    path = tmp_path / "b.npz"
    np.savez(path, images=np.zeros((4, 16, 16), np.uint8), labels=np.array([0, 1, 0, 1]),
             split=np.array(["Training", " test ", "TESTING", "val"]))
    ds, _ = load_source(path, 16)
    assert list(ds.split) == ["train", "test", "test", "val"]


# ---- fuzzing the readers --------------------------------------------------------------------------


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for pos, value in edits:
        out[pos % len(out)] = value
    return bytes(out[:cut] if cut else out)


EDITS = st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), min_size=1, max_size=6)
CUTS = st.none() | st.integers(1, 5000)


@pytest.fixture(scope="module")
def npz_seed(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("seed") / "seed.npz"
    np.savez(path, images=np.random.default_rng(1).integers(0, 256, (3, 16, 16), dtype=np.uint8),
             labels=np.array([0, 1, 0]), split=np.array(["train", "test", "train"]), patient=np.array(["a", "b", "c"]))
    return path.read_bytes()


@FUZZ
@given(edits=EDITS, cut=CUTS)
@pytest.mark.slow  # over 0.6 s: outside the quick subset
def test_fuzzed_npz_loads_or_raises_data_error(tmp_path, npz_seed, edits, cut):
    path = tmp_path / "fuzz.npz"
    path.write_bytes(_mutate(npz_seed, edits, cut))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds, rep = load_source(path, 16)
        except DataError as err:
            assert str(path) in str(err) or "no usable image" in str(err)
            return
    assert ds.images.dtype == np.float32 and np.isfinite(ds.images).all()


@pytest.fixture(scope="module")
def image_seeds(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("img")
    seeds = {".png": _encode(gray8(8, (24, 24)), "PNG"), ".jpg": _encode(gray8(8, (24, 24)), "JPEG"),
             ".bmp": _encode(gray8(8, (24, 24)), "BMP"), ".tif": _encode(gray8(8, (24, 24)), "TIFF"),
             ".png16": _encode(ramp12(24), "PNG")}
    seeds[".dcm"] = write_dicom(folder / "seed.dcm", ramp12(24), bits_stored=12, window=(2048, 1024)).read_bytes()
    seeds[".rle.dcm"] = rle_dicom(folder / "rle.dcm", 32, 32).read_bytes()
    return seeds


@FUZZ
@given(kind=st.sampled_from([".png", ".jpg", ".bmp", ".tif", ".png16", ".dcm", ".rle.dcm"]), edits=EDITS, cut=CUTS)
def test_fuzzed_images_load_or_raise_unreadable_image(tmp_path, image_seeds, kind, edits, cut):
    suffix = {".png16": ".png", ".rle.dcm": ".dcm"}.get(kind, kind)
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(_mutate(image_seeds[kind], edits, cut))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            img = read_image_file(path)
        except UnreadableImage as err:
            assert str(err)
            return
    assert img.ndim == 2 and img.dtype == np.float32 and img.size <= MAX_PIXELS
    assert np.isfinite(img).all() and img.min() >= 0 and img.max() <= 1


# ---- labels.csv ---------------------------------------------------------------------------------


def test_labels_csv_rows_leaving_the_folder_are_skipped(tmp_path):
    outside = tmp_path / "elsewhere"
    secret = write_png(outside / "other-patient.png", gray8(9))
    root = tmp_path / "data" / "site"
    write_png(root / "a.png", gray8(1))
    write_png(root / "b.png", gray8(2))
    (root / "inside-link.png").symlink_to(root / "b.png")  # a symlink that stays inside is fine
    (root / "escape.png").symlink_to(secret)
    (root / "escdir").symlink_to(outside, target_is_directory=True)
    rows = ["a.png,0", "../../elsewhere/other-patient.png,1", f"{secret},1", "/etc/passwd,0", "escape.png,1",
            "escdir/other-patient.png,0", "./b.png,1", f"{root / 'b.png'},1", "inside-link.png,0",
            "a\0b.png,1"]
    (root / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    ds, rep = load_source(root, 16)
    assert [Path(s).name for s in ds.sources] == ["a.png", "b.png", "b.png", "inside-link.png"]
    reasons = [s.reason for s in rep.skipped]
    assert len(reasons) == 6 and all("outside the dataset folder" in r or "resolved" in r for r in reasons)
    assert sum("absolute path" in r for r in reasons) == 2  # the secret and /etc/passwd
    assert rep.n_found == rep.n_loaded + len(rep.skipped)


def test_labels_csv_unknown_split_is_a_skipped_row(tmp_path):
    root = tmp_path / "site"
    for name in ("a.png", "b.png", "c.png", "d.png"):
        write_png(root / name, gray8(len(name) + ord(name[0])))
    (root / "labels.csv").write_text("path,label,split\na.png,0,train\nb.png,1,tset\nc.png,1,Testing\nd.png,0,\n")
    ds, rep = load_source(root, 16)
    assert [Path(s).name for s in ds.sources] == ["a.png", "c.png", "d.png"]
    assert list(ds.split) == ["train", "test", "train"]  # an empty cell: no split given
    assert "unknown split 'tset'" in skipped(rep)["b.png"]


def test_labels_csv_with_a_giant_field_is_a_data_error(tmp_path):
    root = tmp_path / "site"
    write_png(root / "a.png", gray8(1))
    (root / "labels.csv").write_text("path,label\n\"" + "x" * 200_000 + "\",0\n")
    with pytest.raises(DataError, match="labels.csv: not a readable CSV"):
        load_source(root, 16)


# ---- YAML and config numbers --------------------------------------------------------------------


def laughs(levels: int = 9, top: str = "run:\n  name: *l8\n") -> str:
    text = 'l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for i in range(1, levels):
        text += f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]\n"
    return text + top


YAML_CASES = {
    "billion-laughs": (laughs(), "anchors"),
    "billion-laughs-in-a-field": ("x:\n" + "".join("  " + line + "\n" for line in laughs().splitlines()[:-2])
                                  + "run:\n  name: *l7\n", "anchors"),
    "alias-without-anchor": ("run:\n  name: *nowhere\n", "not valid YAML"),
    "anchor-only": ("run: &r\n  seed: 3\n", "anchors (&r)"),
    "merge-key": ("base: &b {seed: 1}\nrun:\n  <<: *b\n", "anchors (&b)"),
    "python-object": ("run: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
    "deep-nesting": ("run: " + "[" * 20_000 + "]" * 20_000 + "\n", "nested too deeply"),
    "huge-integer": ("run:\n  seed: " + "9" * 6000 + "\n", "not a usable config"),
    "not-utf8": ("run:\n  name: caf\udce9\n", "not UTF-8"),
}


@pytest.mark.parametrize("case", sorted(YAML_CASES))
@pytest.mark.parametrize("kind", ["run", "site"])
@pytest.mark.slow  # over 1 s: outside the quick subset
def test_hostile_yaml_is_a_config_error_naming_the_file(tmp_path, case, kind):
    text, needle = YAML_CASES[case]
    path = tmp_path / f"{kind}.yaml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ConfigError) as info:
        (load_config if kind == "run" else load_site_config)(path)
    assert str(path) in str(info.value) and needle in str(info.value), str(info.value)


@pytest.mark.parametrize("kind", ["run", "site"])
def test_config_file_over_the_size_limit_is_refused(tmp_path, kind):
    path = tmp_path / "big.yaml"
    path.write_text("run:\n  name: demo\n" + "# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    with pytest.raises(ConfigError, match="larger than 1024 KiB") as info:
        (load_config if kind == "run" else load_site_config)(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("value", ["&a 3", "*a", "[&a 1, *a]", "!!python/name:os.system", "[" * 5000, "9" * 5000])
@pytest.mark.slow  # over 0.6 s: outside the quick subset
def test_override_values_refuse_anchors_aliases_and_bombs(value):
    with pytest.raises(ConfigError, match="override 'run.seed="):
        parse_overrides([f"run.seed={value}"])


BAD_NUMBERS = [
    ("privacy.epsilon", ".inf"), ("privacy.epsilon", "-.inf"), ("privacy.epsilon", ".nan"),
    ("privacy.epsilon", "1e308"), ("privacy.epsilon", "1001"), ("sites.budget.epsilon", ".inf"),
    ("sites.budget.epsilon", "1e308"), ("alignment.epsilon", "1e9"), ("privacy.max_grad_norm", ".nan"),
    ("federation.site_timeout_s", ".inf"), ("federation.site_timeout_s", "1e12"),
    ("federation.connect_timeout_s", "1e9"), ("federation.num_sites", "1000000"), ("generator.epochs", "1000000000"),
    ("generator.lr_generator", ".inf"), ("generator.batch_size", "100000000"), ("release.n_per_class", "1000000000"),
    ("evaluation.bootstrap", "1000000000"), ("evaluation.histogram_bins", "100000000"), ("classifier.lr", ".nan"),
    ("classifier.epochs", "10000000"), ("federation.rounds", "1000000000"), ("data.phantom.n_images", "10000000"),
    ("run.seed", str(10**30)), ("federation.dirichlet_alpha", ".inf"), ("federation.cpus_per_site", ".nan"),
    ("federation.secure_aggregation.clipping_range", ".inf"), ("federation.client_dp.noise_multiplier", ".nan"),
    ("sites.policy.max_epsilon", ".inf"),
]


@pytest.mark.parametrize(("field", "value"), BAD_NUMBERS)
def test_non_finite_or_absurd_numbers_are_config_errors(field, value):
    overrides = [f"{field}={value}"]
    if field.startswith("federation.secure_aggregation"):
        overrides += ["run.mode=federated"]
    if field.startswith("federation.client_dp"):
        overrides += ["run.mode=federated", "federation.client_dp.clipping_norm=1.0"]
    with pytest.raises(ConfigError) as info:
        load_config(overrides=overrides)
    assert field in str(info.value), str(info.value)


def test_site_config_numbers_must_be_finite(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text("name: a\ndata_path: x\nstate_dir: y\nbudget:\n  epsilon: .inf\n")
    with pytest.raises(ConfigError, match="budget.epsilon"):
        load_site_config(path)


@settings(max_examples=80, deadline=None, database=None, derandomize=True)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_privacy_epsilon_accepted_iff_finite_and_in_range(x):
    try:
        cfg = RunConfig.model_validate({"privacy": {"epsilon": x}})
    except Exception as err:  # pydantic's ValidationError, nothing else
        assert type(err).__name__ == "ValidationError"
        assert not (math.isfinite(x) and 0 < x <= 1000)
        return
    assert math.isfinite(x) and 0 < x <= 1000 and cfg.privacy.epsilon == x


def test_defaults_and_shipped_configs_still_load():
    root = Path(__file__).resolve().parents[1]
    assert load_config().to_dict() == RunConfig().to_dict()
    for path in sorted((root / "configs").glob("*.yaml")):
        load_config(path)
    for path in sorted((root / "configs" / "deployment").glob("site-*.yaml")):
        load_site_config(path)


# ---- classifier files and predict ---------------------------------------------------------------


def classifier_file(path: Path, **header_changes) -> Path:
    from safetensors.torch import save_file

    from fedsynth.classifier.models import build_classifier
    from fedsynth.classifier.train import Classifier

    clf = Classifier(build_classifier("small-cnn", 16), "small-cnn", 16, 0.5)
    header = {**clf.header(), **header_changes}
    for key in [k for k, v in header_changes.items() if v is ...]:
        del header[key]
    save_file(clf.state_dict(), str(path), metadata={"fedsynth_classifier": json.dumps(header)})
    return path


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"threshold": float("nan")}, "threshold nan"),
        ({"threshold": float("inf")}, "threshold inf"),
        ({"threshold": -0.1}, "threshold -0.1"),
        ({"threshold": 1.5}, "threshold 1.5"),
        ({"threshold": "0.5"}, "threshold '0.5'"),
        ({"threshold": True}, "threshold True"),
        ({"threshold": ...}, "lacks threshold"),
        ({"arch": "vit-huge"}, "unknown arch"),
        ({"arch": "resnet18"}, "weights do not fit"),
        ({"resolution": 48}, "resolution 48"),
        ({"resolution": 10**9}, "resolution"),
        ({"dp_compatible": "no"}, "dp_compatible"),
        ({"width": 2}, "width 2 is not an integer"),
        ({"width": "32"}, "width '32' is not an integer"),
        ({"width": True}, "width True is not an integer"),
        ({"width": 10**6}, "width 1000000 is not an integer"),
        ({"width": 16}, "weights do not fit"),  # the weights are a width-32 network's
    ],
)
def test_bad_classifier_header_is_refused(tmp_path, changes, needle):
    from fedsynth.classifier.predict import load_run_classifier

    path = classifier_file(tmp_path / "classifier.safetensors", **changes)
    with pytest.raises(DataError) as info:
        load_run_classifier(path)
    assert str(path) in str(info.value) and needle in str(info.value), str(info.value)


@pytest.mark.parametrize("data", [b"", b"garbage", struct.pack("<Q", 2**40) + b"{}", struct.pack("<Q", 2) + b"[]"])
def test_unreadable_classifier_file_is_a_data_error(tmp_path, data):
    from fedsynth.classifier.predict import load_run_classifier

    path = tmp_path / "classifier.safetensors"
    path.write_bytes(data)
    with pytest.raises(DataError, match="classifier"):
        load_run_classifier(path)


@settings(max_examples=60, deadline=None, database=None, derandomize=True)
@given(header=st.fixed_dictionaries({
    "arch": st.sampled_from(["small-cnn", "small_cnn", "", "x" * 100]) | st.integers(),
    "resolution": st.sampled_from([16, 32, 17, 0, -16, 2**70]) | st.floats() | st.text(max_size=3) | st.booleans(),
    "threshold": st.floats() | st.integers(-2, 2) | st.text(max_size=3) | st.none(),
}))
def test_any_classifier_header_builds_or_raises_value_error(header):
    from fedsynth.classifier.models import build_classifier
    from fedsynth.classifier.train import Classifier

    state = {k: v for k, v in build_classifier("small-cnn", 16).state_dict().items()}
    try:
        clf = Classifier.from_state(header, state)
    except ValueError as err:
        assert "classifier" in str(err)
        return
    assert clf.arch == "small-cnn" and clf.resolution in (16, 32) and 0 <= clf.threshold <= 1


def test_predict_cli_refuses_a_nan_threshold_and_a_bad_out(tmp_path):
    from typer.testing import CliRunner

    from fedsynth.cli import app

    write_png(tmp_path / "in" / "a.png", gray8(1))
    bad = classifier_file(tmp_path / "nan.safetensors", threshold=float("nan"))
    good = classifier_file(tmp_path / "good.safetensors")
    runner = CliRunner()
    result = runner.invoke(app, ["predict", str(bad), str(tmp_path / "in"), "--out", str(tmp_path / "s.csv")])
    assert result.exit_code == 2 and "threshold nan" in said(result) and "Traceback" not in said(result)
    assert not (tmp_path / "s.csv").exists()
    (tmp_path / "adir").mkdir()
    result = runner.invoke(app, ["predict", str(good), str(tmp_path / "in"), "--out", str(tmp_path / "adir")])
    assert result.exit_code == 2 and "is a directory" in said(result)
    (tmp_path / "afile").write_text("x")
    result = runner.invoke(app, ["predict", str(good), str(tmp_path / "in"), "--out",
                                 str(tmp_path / "afile" / "s.csv")])
    assert result.exit_code == 2 and "cannot create its folder" in said(result)
    out = tmp_path / "new" / "deeper" / "scores.csv"
    result = runner.invoke(app, ["predict", str(good), str(tmp_path / "in"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text().count("\n") == 2


def test_predict_keeps_csv_order_with_empty_rows(tmp_path):
    from fedsynth.classifier.predict import predict
    from fedsynth.classifier.train import Classifier

    root = tmp_path / "inbox"
    for name in ("a.png", "b.png", "c.png"):
        write_png(root / name, gray8(ord(name[0])))
    (root / "labels.csv").write_text("path\na.png\n\n,\n   \nb.png\n../x.png\nc.png\n")
    clf = Classifier.load(classifier_file(tmp_path / "c.safetensors"))
    rows, rep = predict(clf, root)
    assert [r.index for r in rows] == list(range(6))
    assert [Path(r.source).name if r.status == "ok" else r.status for r in rows] == [
        "a.png", "skipped: empty path", "skipped: empty path", "b.png", rows[4].status, "c.png"]
    assert "outside the dataset folder" in rows[4].status


def test_data_ingest_cli_reports_hostile_files_and_bad_out(tmp_path):
    from typer.testing import CliRunner

    from fedsynth.cli import app

    root = folder_with(tmp_path, {"bomb.png": png_claiming(100_000, 100_000)})
    rle_dicom(root / "NORMAL" / "bomb.dcm", 8200, 8200)
    runner = CliRunner()
    out = tmp_path / "out" / "site.npz"
    result = runner.invoke(app, ["data", "ingest", str(root), "--out", str(out), "-r", "16"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_suffix(".ingest.json").read_text())
    assert {Path(s["path"]).name for s in report["skipped"]} == {"bomb.png", "bomb.dcm"}
    assert all("megapixels are accepted" in s["reason"] for s in report["skipped"])
    result = runner.invoke(app, ["data", "ingest", str(root), "--out", str(tmp_path), "-r", "16"])
    assert result.exit_code == 2 and "is a directory" in said(result)
    result = runner.invoke(app, ["data", "ingest", str(root), "--out", str(tmp_path / "x.npz"), "-r", "16",
                                 "--max-megapixels", "0.0001"])
    assert result.exit_code == 2 and "no usable image" in said(result)
