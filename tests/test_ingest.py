"""Ingestion: npz bundles, image folders, DICOM, prediction inputs, real RSNA DICOMs.

Every input is written by the test itself (no network, nothing copied from ../shared).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedsynth.data.dataset import ImageSet, save_npz
from fedsynth.data.ingest import IngestReport, load_source, parse_label
from fedsynth.errors import DataError
from tests.conftest import assert_images

RNG_SEED = 1234
ATOL = 1e-6


# ---- helpers --------------------------------------------------------------------------------


def rng(seed: int = RNG_SEED) -> np.random.Generator:
    return np.random.default_rng(seed)


def save_npz_bundle(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def write_png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr, mode=mode) if mode else Image.fromarray(arr)
    img.save(path, format="PNG")
    return path


def gray8(seed: int, size: tuple[int, int] = (16, 16)) -> np.ndarray:
    return rng(seed).integers(0, 256, size=size, dtype=np.uint8)


def assert_report_consistent(report: IngestReport) -> None:
    """Every examined input is either loaded or listed as skipped."""
    assert report.n_found == report.n_loaded + len(report.skipped)


def skipped_names(report: IngestReport) -> dict[str, str]:
    return {Path(s.path).name: s.reason for s in report.skipped}


# ---- DICOM writer ---------------------------------------------------------------------------

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
UID_ROOT = "1.2.826.0.1.3680043.8.498."
LEAK_STRINGS = ("ZZLEAKPATIENTNAME", "ZZLEAKPATIENTID987", "ZZLEAK INSTITUTION OF TESTING")


def write_dicom(
    path: Path,
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    signed: bool = False,
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    frames: int | None = None,
    identity: bool = False,
    uid_suffix: int = 1,
) -> Path:
    """Write an uncompressed Explicit VR Little Endian DICOM with pydicom 3."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = f"{UID_ROOT}{uid_suffix}"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = f"{UID_ROOT}{uid_suffix}.1"
    ds.SeriesInstanceUID = f"{UID_ROOT}{uid_suffix}.2"
    ds.Modality = "CR"
    if identity:
        ds.PatientName = LEAK_STRINGS[0]
        ds.PatientID = LEAK_STRINGS[1]
        ds.InstitutionName = LEAK_STRINGS[2]
    if pixels is not None:
        rgb = pixels.ndim == 3 and pixels.shape[-1] == 3 and frames is None
        itemsize = pixels.dtype.itemsize
        ds.Rows, ds.Columns = pixels.shape[-3:-1] if rgb else pixels.shape[-2:]
        ds.SamplesPerPixel = 3 if rgb else 1
        if rgb:
            ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = "RGB" if rgb else photometric
        ds.BitsAllocated = 8 * itemsize
        ds.BitsStored = bits_stored or 8 * itemsize
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if signed else 0
        if frames is not None:
            ds.NumberOfFrames = frames
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    else:
        ds.PhotometricInterpretation = photometric
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.RescaleType = "US"
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp12(size: int = 64) -> np.ndarray:
    """12-bit stored values increasing along the columns: column c holds c * 64 (0..4032)."""
    return np.tile((np.arange(size) * 64).astype(np.uint16), (size, 1))


# =============================================================================================
# npz bundles
# =============================================================================================


def test_npz_uint8_exact_at_native_resolution(tmp_path):
    imgs = rng().integers(0, 256, size=(6, 16, 16), dtype=np.uint8)
    labels = np.array([0, 1, 1, 0, 1, 1])
    src = save_npz_bundle(tmp_path / "b.npz", images=imgs, labels=labels)
    ds, rep = load_source(src, 16)
    assert isinstance(ds, ImageSet)
    assert_images(ds.images, 6, 16)
    np.testing.assert_allclose(ds.images, imgs / 255.0, atol=ATOL)
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.patient is None and ds.split is None
    assert rep.n_found == 6 and rep.n_loaded == 6 and rep.skipped == []
    assert rep.class_counts == {"normal": 2, "pneumonia": 4}
    assert ds.origin == str(src)


def test_npz_uint16_scaled_by_65535(tmp_path):
    imgs = np.zeros((2, 16, 16), dtype=np.uint16)
    imgs[0] = 40000  # the bundle's maximum: a max-normalising loader would make this 1.0
    imgs[1] = 1000
    src = save_npz_bundle(tmp_path / "b.npz", images=imgs, labels=np.array([0, 1]))
    ds, _ = load_source(src, 16)
    np.testing.assert_allclose(ds.images[0], 40000 / 65535, atol=ATOL)
    np.testing.assert_allclose(ds.images[1], 1000 / 65535, atol=ATOL)


def test_npz_float_in_unit_interval_kept(tmp_path):
    imgs = rng().random((3, 16, 16)).astype(np.float64)
    imgs[0, 0, 0], imgs[1, 0, 0] = 0.0, 1.0  # the closed bounds are allowed
    src = save_npz_bundle(tmp_path / "b.npz", images=imgs, labels=np.array([1, 0, 1]))
    ds, _ = load_source(src, 16)
    assert ds.images.dtype == np.float32
    np.testing.assert_allclose(ds.images, imgs, atol=ATOL)


@pytest.mark.parametrize("layout", ["NHW1", "N1HW"])
def test_npz_channel_axis_layouts_match_plain(tmp_path, layout):
    imgs = rng().integers(0, 256, size=(4, 20, 20), dtype=np.uint8)
    labels = np.array([0, 1, 0, 1])
    shaped = imgs[..., None] if layout == "NHW1" else imgs[:, None]
    plain, _ = load_source(save_npz_bundle(tmp_path / "p.npz", images=imgs, labels=labels), 12)
    other, rep = load_source(save_npz_bundle(tmp_path / "o.npz", images=shaped, labels=labels), 12)
    assert_images(other.images, 4, 12)
    np.testing.assert_array_equal(other.images, plain.images)
    assert rep.n_loaded == 4


def test_npz_labels_column_vector(tmp_path):
    imgs = rng().integers(0, 256, size=(3, 16, 16), dtype=np.uint8)
    src = save_npz_bundle(tmp_path / "b.npz", images=imgs, labels=np.array([[1], [0], [1]], dtype=np.uint8))
    ds, rep = load_source(src, 16)
    assert ds.labels.shape == (3,)
    np.testing.assert_array_equal(ds.labels, [1, 0, 1])
    assert rep.class_counts == {"normal": 1, "pneumonia": 2}


def test_npz_split_and_patient_carried(tmp_path):
    imgs = rng().integers(0, 256, size=(4, 16, 16), dtype=np.uint8)
    src = save_npz_bundle(
        tmp_path / "b.npz",
        images=imgs,
        labels=np.array([0, 1, 0, 1]),
        split=np.array(["TRAIN", "train", "Test", "val"]),
        patient=np.array(["p1", "p1", "p2", "p3"]),
    )
    ds, _ = load_source(src, 16)
    assert list(ds.split) == ["train", "train", "test", "val"]
    assert list(ds.patient) == ["p1", "p1", "p2", "p3"]
    assert list(ds.sources) == ["b.npz[0]", "b.npz[1]", "b.npz[2]", "b.npz[3]"]


def test_npz_metadata_columns_carried_through_skips_subset_concat_and_save(tmp_path):
    from fedsynth.data.dataset import concat

    imgs = rng().random((4, 16, 16)).astype(np.float32)
    imgs[1, 0, 0] = np.nan  # skipped: the columns stay aligned with the images kept
    src = save_npz_bundle(
        tmp_path / "b.npz", images=imgs, labels=np.array([0, 1, 0, 1]),
        sex=np.array(["F", "M", "F", "M"]), age=np.array([5, 40.5, 70, np.nan]),
        view=np.array([b"PA", b"AP", b"AP", b"PA"]), other=np.array([1, 2, 3, 4]),
    )
    ds, rep = load_source(src, 16)
    assert len(ds) == 3 and len(rep.skipped) == 1
    assert set(ds.meta) == {"sex", "age", "view"}  # other arrays are not metadata
    assert list(ds.meta["sex"]) == ["F", "F", "M"] and list(ds.meta["view"]) == ["PA", "AP", "PA"]
    np.testing.assert_array_equal(ds.meta["age"], [5, 70, np.nan])
    part = ds.subset(np.array([2, 0]))
    assert list(part.meta["sex"]) == ["M", "F"]
    both = concat([part, ds.subset(np.array([1]))])
    assert list(both.meta["view"]) == ["PA", "PA", "AP"]
    plain = ImageSet(images=ds.images[:1], labels=ds.labels[:1])
    assert concat([plain, part]).meta == {}  # a column survives only where every part has it
    save_npz(ds, str(tmp_path / "again.npz"))
    again, _ = load_source(tmp_path / "again.npz", 16)
    assert list(again.meta["sex"]) == ["F", "F", "M"] and np.isnan(again.meta["age"][2])
    with pytest.raises(DataError, match="metadata column 'sex'"):
        ImageSet(images=ds.images, labels=ds.labels, meta={"sex": np.array(["F"])})


@pytest.mark.parametrize("arrays, needle", [
    ({"age": np.array([object(), 3, 4], dtype=object)}, "'age' holds Python objects"),
    ({"sex": np.array(["F", "M"])}, "'sex' has 2 entries for 3 images"),
    ({"view": np.array([["PA"], ["AP"], ["PA"]])}, "'view' must be a 1-D array"),
    ({"source": np.zeros(3, dtype=[("a", "i4")])}, "'source' has unsupported dtype"),
])
def test_npz_metadata_columns_are_checked_like_every_array(tmp_path, arrays, needle):
    src = save_npz_bundle(tmp_path / "b.npz", images=np.zeros((3, 16, 16), np.uint8), labels=np.array([0, 1, 0]),
                          **arrays)
    with pytest.raises(DataError, match=re.escape(needle)):
        load_source(src, 16)


def test_labels_csv_metadata_columns(tmp_path):
    root = tmp_path / "site"
    for i, name in enumerate(("a.png", "b.png", "c.png")):
        write_png(root / name, gray8(i))
    (root / "labels.csv").write_text("path,label,Sex,age,view\na.png,0,F,34,PA\nb.png,1,,70, AP \n"
                                     "missing.png,0,M,1,PA\nc.png,1,M,,AP\n")
    ds, rep = load_source(root, 16)
    assert len(ds) == 3 and [Path(s.path).name for s in rep.skipped] == ["missing.png"]
    assert set(ds.meta) == {"sex", "age", "view"}  # headers matched case-insensitively; no source column
    assert list(ds.meta["sex"]) == ["F", "", "M"] and list(ds.meta["age"]) == ["34", "70", ""]
    assert list(ds.meta["view"]) == ["PA", "AP", "AP"]
    write_png(tmp_path / "tree" / "NORMAL" / "n.png", gray8(5))
    write_png(tmp_path / "tree" / "PNEUMONIA" / "p.png", gray8(6))
    assert load_source(tmp_path / "tree", 16)[0].meta == {}


def test_npz_medmnist_format(tmp_path):
    r = rng()
    parts = {"train": 5, "val": 3, "test": 2}
    arrays, expected_labels = {}, []
    for i, (name, n) in enumerate(parts.items()):
        arrays[f"{name}_images"] = np.full((n, 28, 28), 10 * (i + 1), dtype=np.uint8)
        lab = r.integers(0, 2, size=(n, 1), dtype=np.uint8)
        arrays[f"{name}_labels"] = lab
        expected_labels.extend(lab[:, 0].tolist())
    src = save_npz_bundle(tmp_path / "pneumoniamnist.npz", **arrays)
    ds, rep = load_source(src, 28)
    assert_images(ds.images, 10, 28)
    assert list(ds.split) == ["train"] * 5 + ["val"] * 3 + ["test"] * 2
    np.testing.assert_array_equal(ds.labels, expected_labels)
    # images keep the train, val, test order
    np.testing.assert_allclose(ds.images[:, 0, 0], [10 / 255] * 5 + [20 / 255] * 3 + [30 / 255] * 2, atol=ATOL)
    assert rep.n_loaded == 10
    assert rep.class_counts["pneumonia"] == int(np.sum(expected_labels))


def test_npz_medmnist_without_val(tmp_path):
    src = save_npz_bundle(
        tmp_path / "m.npz",
        train_images=np.zeros((3, 28, 28), np.uint8),
        train_labels=np.array([[0], [1], [1]], np.uint8),
        test_images=np.ones((2, 28, 28), np.uint8),
        test_labels=np.array([[1], [0]], np.uint8),
    )
    ds, _ = load_source(src, 28)
    assert list(ds.split) == ["train"] * 3 + ["test"] * 2
    np.testing.assert_array_equal(ds.labels, [0, 1, 1, 1, 0])


@pytest.mark.parametrize(
    ("arrays", "needle"),
    [
        ({"images": np.zeros((3, 16, 16), np.uint8), "labels": np.array([0, 2, 1])}, "labels"),
        ({"images": np.zeros((3, 16, 16), np.uint8), "labels": np.array([0, -1, 1])}, "labels"),
        ({"images": np.zeros((3, 16, 16), np.uint8), "labels": np.array([0, 1])}, "labels"),
        ({"images": np.full((2, 16, 16), 1.5), "labels": np.array([0, 1])}, "images"),
        ({"images": np.full((2, 16, 16), -0.25), "labels": np.array([0, 1])}, "images"),
        ({"images": np.zeros((2, 16, 16), np.int32), "labels": np.array([0, 1])}, "images"),
        ({"images": np.zeros((2, 16), np.uint8), "labels": np.array([0, 1])}, "images"),
        ({"pixels": np.zeros((2, 16, 16), np.uint8), "labels": np.array([0, 1])}, "images"),
        ({"images": np.zeros((2, 16, 16), np.uint8)}, "labels"),
        (
            {"images": np.zeros((2, 16, 16), np.uint8), "labels": np.array([0, 1]), "split": np.array(["train"])},
            "split",
        ),
        (
            {"images": np.zeros((2, 16, 16), np.uint8), "labels": np.array([0, 1]), "patient": np.array(["a"] * 3)},
            "patient",
        ),
    ],
    ids=[
        "label-2",
        "label-negative",
        "label-count",
        "float-above-1",
        "float-below-0",
        "int32-dtype",
        "2d-images",
        "no-images",
        "no-labels",
        "split-count",
        "patient-count",
    ],
)
def test_npz_errors_name_the_array(tmp_path, arrays, needle):
    src = save_npz_bundle(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError) as info:
        load_source(src, 16)
    assert f"'{needle}'" in str(info.value)


def test_npz_without_labels_is_fine_for_prediction(tmp_path):
    imgs = rng().integers(0, 256, size=(3, 16, 16), dtype=np.uint8)
    src = save_npz_bundle(tmp_path / "b.npz", images=imgs)
    ds, rep = load_source(src, 16, labeled=False)
    np.testing.assert_array_equal(ds.labels, [0, 0, 0])
    np.testing.assert_allclose(ds.images, imgs / 255.0, atol=ATOL)
    assert rep.n_loaded == 3


def test_npz_unreadable_bundle(tmp_path):
    src = tmp_path / "junk.npz"
    src.write_bytes(rng().integers(0, 256, size=500, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match="cannot read npz"):
        load_source(src, 16)


def test_missing_source(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_source(tmp_path / "nowhere", 16)


@pytest.mark.parametrize("axis", ["tall", "wide"])
def test_npz_non_square_centre_cropped(tmp_path, axis):
    # 40x20: the centre 20x20 (rows 10..29) is constant; the edges are black and white noise.
    img = np.zeros((40, 20), dtype=np.uint8)
    img[:10] = 0
    img[30:] = 255
    img[10:30] = 179
    if axis == "wide":
        img = img.T.copy()
    imgs = np.stack([img, img])
    src = save_npz_bundle(tmp_path / "b.npz", images=imgs, labels=np.array([0, 1]))
    for res in (8, 20, 32):
        ds, _ = load_source(src, res)
        assert_images(ds.images, 2, res)
        np.testing.assert_allclose(ds.images, 179 / 255, atol=1e-5)


def test_npz_resize_changes_resolution_and_keeps_mean(tmp_path):
    yy, xx = np.mgrid[0:64, 0:64]
    smooth = ((xx + yy) / 126.0 * 255).astype(np.uint8)
    src = save_npz_bundle(tmp_path / "b.npz", images=smooth[None], labels=np.array([1]))
    ds, _ = load_source(src, 16)
    assert_images(ds.images, 1, 16)
    assert abs(float(ds.images.mean()) - float(smooth.mean() / 255)) < 0.01
    # the gradient survives: top-left dark, bottom-right bright
    assert ds.images[0, 0, 0] < 0.1 and ds.images[0, -1, -1] > 0.9


def test_npz_nan_images_skipped_and_reported(tmp_path):
    imgs = rng().random((4, 16, 16))
    imgs[1, 3, 3] = np.nan
    imgs[3, 0, 0] = np.inf
    src = save_npz_bundle(
        tmp_path / "b.npz", images=imgs, labels=np.array([0, 1, 1, 0]), patient=np.array(["a", "b", "c", "d"])
    )
    ds, rep = load_source(src, 16)
    assert_images(ds.images, 2, 16)
    np.testing.assert_allclose(ds.images, imgs[[0, 2]], atol=ATOL)
    np.testing.assert_array_equal(ds.labels, [0, 1])
    assert list(ds.patient) == ["a", "c"]
    assert [s.position for s in rep.skipped] == [1, 3]
    assert all("non-finite" in s.reason for s in rep.skipped)
    assert rep.skipped[0].path.endswith("b.npz[1]")
    assert rep.n_found == 4 and rep.n_loaded == 2
    assert rep.class_counts == {"normal": 1, "pneumonia": 1}
    assert "2 of 4 images loaded" in rep.summary() and "2 skipped" in rep.summary()


def test_npz_all_nan_is_no_usable_image(tmp_path):
    src = save_npz_bundle(tmp_path / "b.npz", images=np.full((2, 16, 16), np.nan), labels=np.array([0, 1]))
    with pytest.raises(DataError, match="no usable image"):
        load_source(src, 16)


# =============================================================================================
# folders of PNG / JPEG
# =============================================================================================


def test_class_folders_any_case_any_depth(tmp_path):
    root = tmp_path / "site"
    a = write_png(root / "train" / "NORMAL" / "a.png", gray8(1))
    b = write_png(root / "train" / "Pneumonia" / "b.png", gray8(2))
    c = write_png(root / "test" / "normal" / "c.png", gray8(3))
    d = root / "batch2" / "deep" / "PNEUMONIA" / "d.jpg"
    d.parent.mkdir(parents=True)
    Image.fromarray(gray8(4)).save(d, format="JPEG", quality=95)
    e = write_png(root / "val" / "x" / "pneumonia" / "e.png", gray8(5))
    (root / "train" / "NORMAL" / ".DS_Store").write_bytes(b"\0\1junk")  # hidden: ignored silently

    ds, rep = load_source(root, 16)
    assert_images(ds.images, 5, 16)
    by_source = {Path(s).name: i for i, s in enumerate(ds.sources)}
    assert set(by_source) == {"a.png", "b.png", "c.png", "d.jpg", "e.png"}
    labels = {name: int(ds.labels[i]) for name, i in by_source.items()}
    assert labels == {"a.png": 0, "b.png": 1, "c.png": 0, "d.jpg": 1, "e.png": 1}
    splits = {name: ds.split[i] for name, i in by_source.items()}
    assert splits == {"a.png": "train", "b.png": "train", "c.png": "test", "d.jpg": "train", "e.png": "val"}
    np.testing.assert_allclose(ds.images[by_source["a.png"]], gray8(1) / 255.0, atol=ATOL)
    np.testing.assert_allclose(ds.images[by_source["c.png"]], gray8(3) / 255.0, atol=ATOL)
    # JPEG is lossy but close
    assert np.abs(ds.images[by_source["d.jpg"]] - gray8(4) / 255.0).mean() < 0.1
    assert rep.n_loaded == 5 and rep.skipped == []
    assert rep.class_counts == {"normal": 2, "pneumonia": 3}
    assert ds.patient is None
    for p in (a, b, c, e):
        assert str(p) in set(ds.sources)


def test_nearest_class_folder_wins(tmp_path):
    root = tmp_path / "site"
    write_png(root / "NORMAL" / "PNEUMONIA" / "x.png", gray8(1))
    write_png(root / "PNEUMONIA" / "NORMAL" / "y.png", gray8(2))
    ds, _ = load_source(root, 16)
    labels = {Path(s).name: int(lab) for s, lab in zip(ds.sources, ds.labels, strict=True)}
    assert labels == {"x.png": 1, "y.png": 0}


def test_no_split_folders_means_no_split(tmp_path):
    root = tmp_path / "site"
    write_png(root / "NORMAL" / "a.png", gray8(1))
    write_png(root / "PNEUMONIA" / "b.png", gray8(2))
    ds, rep = load_source(root, 16)
    assert ds.split is None
    assert rep.class_counts == {"normal": 1, "pneumonia": 1}


def _write_csv(path: Path, text: str, encoding: str = "utf-8") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)


def test_labels_csv_path_label_numbers_and_names(tmp_path):
    root = tmp_path / "site"
    for i, name in enumerate(["a.png", "b.png", "sub/c.png", "d.png", "e.png"]):
        write_png(root / name, gray8(10 + i))
    _write_csv(
        root / "labels.csv",
        "path,label\na.png,0\nb.png,1\nsub/c.png,PNEUMONIA\nd.png,Normal\ne.png,1.0\n",
    )
    ds, rep = load_source(root, 16)
    assert [Path(s).name for s in ds.sources] == ["a.png", "b.png", "c.png", "d.png", "e.png"]
    np.testing.assert_array_equal(ds.labels, [0, 1, 1, 0, 1])
    np.testing.assert_allclose(ds.images[2], gray8(12) / 255.0, atol=ATOL)
    assert ds.patient is None and ds.split is None
    assert rep.class_counts == {"normal": 2, "pneumonia": 3}
    assert rep.n_loaded == 5 and rep.skipped == []


def test_labels_csv_aliases_patient_and_split(tmp_path):
    root = tmp_path / "site"
    for name in ("a.png", "b.png", "c.png"):
        write_png(root / name, gray8(len(name) + ord(name[0])))
    _write_csv(
        root / "labels.csv",
        "File,Target,Patient,Split\na.png,normal,P1,train\nb.png,pneumonia,P1,TRAIN\nc.png,1,P2,test\n",
    )
    ds, rep = load_source(root, 16)
    np.testing.assert_array_equal(ds.labels, [0, 1, 1])
    assert list(ds.patient) == ["P1", "P1", "P2"]
    assert list(ds.split) == ["train", "train", "test"]
    assert rep.class_counts == {"normal": 1, "pneumonia": 2}


def test_labels_csv_with_excel_bom(tmp_path):
    """Excel's 'CSV UTF-8' starts the file with a byte-order mark."""
    root = tmp_path / "site"
    write_png(root / "a.png", gray8(1))
    write_png(root / "b.png", gray8(2))
    _write_csv(root / "labels.csv", "path,label\na.png,0\nb.png,1\n", encoding="utf-8-sig")
    ds, _ = load_source(root, 16)
    np.testing.assert_array_equal(ds.labels, [0, 1])


def test_labels_csv_not_utf8_is_a_data_error(tmp_path):
    root = tmp_path / "site"
    write_png(root / "a.png", gray8(1))
    (root / "labels.csv").write_bytes("path,label,patient\na.png,0,M\u00fcller\n".encode("latin-1"))
    with pytest.raises(DataError, match="UTF-8"):
        load_source(root, 16)


def test_labels_csv_missing_columns(tmp_path):
    root = tmp_path / "site"
    write_png(root / "a.png", gray8(1))
    _write_csv(root / "labels.csv", "image,diagnosis\na.png,0\n")
    with pytest.raises(DataError, match="needs columns 'path' and 'label'"):
        load_source(root, 16)


def test_labels_csv_without_label_column_ok_for_prediction(tmp_path):
    root = tmp_path / "site"
    write_png(root / "a.png", gray8(1))
    write_png(root / "b.png", gray8(2))
    _write_csv(root / "labels.csv", "path\nb.png\na.png\n")
    ds, rep = load_source(root, 16, labeled=False)
    assert [Path(s).name for s in ds.sources] == ["b.png", "a.png"]  # csv order kept
    np.testing.assert_allclose(ds.images[0], gray8(2) / 255.0, atol=ATOL)
    np.testing.assert_array_equal(ds.labels, [0, 0])
    assert rep.n_loaded == 2


def test_labels_csv_bad_rows_skipped_rest_loaded(tmp_path):
    root = tmp_path / "site"
    write_png(root / "good0.png", gray8(1))
    write_png(root / "good1.png", gray8(2))
    write_png(root / "maybe.png", gray8(3))
    write_png(root / "blank.png", gray8(4))
    (root / "broken.png").write_bytes(rng(7).integers(0, 256, 300, dtype=np.uint8).tobytes())
    _write_csv(
        root / "labels.csv",
        "path,label\n"
        "good0.png,0\n"
        "maybe.png,covid\n"  # unknown label
        "gone.png,1\n"  # missing file
        ",1\n"  # empty path
        "blank.png,\n"  # empty label
        "broken.png,1\n"  # corrupt image
        "good1.png,pneumonia\n",
    )
    ds, rep = load_source(root, 16)
    assert [Path(s).name for s in ds.sources] == ["good0.png", "good1.png"]
    np.testing.assert_array_equal(ds.labels, [0, 1])
    reasons = skipped_names(rep)
    assert "covid" in reasons["maybe.png"]
    assert "not found" in reasons["gone.png"]
    assert "corrupt" in reasons["broken.png"]
    assert "is not one of" in reasons["blank.png"]
    assert any("empty path" in s.reason for s in rep.skipped)
    assert len(rep.skipped) == 5
    assert rep.n_loaded == 2
    assert rep.class_counts == {"normal": 1, "pneumonia": 1}
    assert_report_consistent(rep)


def test_every_bad_file_skipped_with_reason(tmp_path):
    root = tmp_path / "site"
    normal, pneu = root / "NORMAL", root / "PNEUMONIA"
    write_png(normal / "ok1.png", gray8(1))
    write_png(pneu / "ok2.png", gray8(2))
    # corrupt PNG: random bytes
    (normal / "corrupt.png").write_bytes(rng(3).integers(0, 256, 400, dtype=np.uint8).tobytes())
    # truncated JPEG: a real JPEG cut in half
    buf = io.BytesIO()
    Image.fromarray(gray8(4, (64, 64))).save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    (pneu / "truncated.jpg").write_bytes(data[: len(data) // 2])
    # not an image
    (normal / "notes.txt").write_text("patient was fine")
    # multi-frame TIFF
    frames = [Image.fromarray(gray8(s)) for s in (5, 6)]
    frames[0].save(pneu / "stack.tif", save_all=True, append_images=frames[1:])
    # multi-frame GIF
    gif = [Image.fromarray(gray8(s)).convert("P") for s in (7, 8)]
    gif[0].save(normal / "anim.gif", save_all=True, append_images=gif[1:])
    # too small to be a radiograph
    write_png(normal / "tiny.png", gray8(9, (4, 4)))
    # not under a class folder
    write_png(root / "unsorted" / "loose.png", gray8(10))
    write_png(root / "top.png", gray8(11))

    ds, rep = load_source(root, 16)
    assert_images(ds.images, 2, 16)
    assert sorted(Path(s).name for s in ds.sources) == ["ok1.png", "ok2.png"]
    reasons = skipped_names(rep)
    assert set(reasons) == {
        "corrupt.png",
        "truncated.jpg",
        "notes.txt",
        "stack.tif",
        "anim.gif",
        "tiny.png",
        "loose.png",
        "top.png",
    }
    assert "corrupt" in reasons["corrupt.png"]
    assert "truncated" in reasons["truncated.jpg"]
    assert "not an image" in reasons["notes.txt"]
    assert "multi-frame" in reasons["stack.tif"]
    assert "shape" in reasons["tiny.png"]
    assert "no label" in reasons["loose.png"] and "no label" in reasons["top.png"]
    assert all(s.reason for s in rep.skipped)
    assert rep.n_loaded == 2 and rep.n_found == 10
    assert rep.class_counts == {"normal": 1, "pneumonia": 1}
    assert_report_consistent(rep)
    # the report round-trips through JSON with every skipped file
    out = tmp_path / "report.json"
    rep.write(out)
    written = json.loads(out.read_text())
    assert {Path(s["path"]).name for s in written["skipped"]} == set(reasons)


def test_zero_usable_images_is_an_error(tmp_path):
    root = tmp_path / "site"
    (root / "NORMAL").mkdir(parents=True)
    (root / "NORMAL" / "a.png").write_bytes(b"not a png at all")
    (root / "PNEUMONIA").mkdir()
    (root / "PNEUMONIA" / "b.txt").write_text("hello")
    with pytest.raises(DataError) as info:
        load_source(root, 16)
    msg = str(info.value)
    assert "no usable image" in msg
    assert "2 files examined" in msg
    assert "not an image" in msg  # reasons are included


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no usable image"):
        load_source(tmp_path / "empty", 16)


def test_png_16bit_scaled_by_65535(tmp_path):
    root = tmp_path / "site"
    arr = np.zeros((16, 16), dtype=np.uint16)
    arr[:8] = 30000
    arr[8:] = 50000  # the image's maximum: a max-normalising reader would make this 1.0
    path = write_png(root / "NORMAL" / "deep.png", arr)
    with Image.open(path) as check:
        assert check.mode == "I;16"  # the case under test
    ds, _ = load_source(root, 16)
    np.testing.assert_allclose(ds.images[0, :8], 30000 / 65535, atol=1e-6)
    np.testing.assert_allclose(ds.images[0, 8:], 50000 / 65535, atol=1e-6)


def test_png_rgb_converted_to_grayscale(tmp_path):
    root = tmp_path / "site"
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[:, :8] = (255, 0, 0)
    rgb[:, 8:] = (0, 0, 255)
    write_png(root / "PNEUMONIA" / "rgb.png", rgb)
    gray = np.stack([gray8(3)] * 3, axis=-1)  # grey stored as RGB keeps its values
    write_png(root / "PNEUMONIA" / "rgbgrey.png", gray)
    ds, _ = load_source(root, 16)
    assert_images(ds.images, 2, 16)
    red, blue = ds.images[0, :, :8], ds.images[0, :, 8:]
    np.testing.assert_allclose(red, 76 / 255, atol=1.5 / 255)  # ITU-R 601 luma: 0.299 * 255
    np.testing.assert_allclose(blue, 29 / 255, atol=1.5 / 255)  # 0.114 * 255
    np.testing.assert_allclose(ds.images[1], gray8(3) / 255.0, atol=ATOL)


def test_float_tiff_min_max_normalised(tmp_path):
    root = tmp_path / "site"
    arr = np.linspace(10.0, 20.0, 256, dtype=np.float32).reshape(16, 16)
    path = root / "NORMAL" / "f.tif"
    path.parent.mkdir(parents=True)
    Image.fromarray(arr, mode="F").save(path)
    ds, _ = load_source(root, 16)
    np.testing.assert_allclose(ds.images[0], (arr - 10) / 10, atol=1e-5)


def test_png_non_square_centre_cropped(tmp_path):
    root = tmp_path / "site"
    img = np.zeros((40, 20), dtype=np.uint8)
    img[30:] = 255
    img[10:30] = 100
    write_png(root / "NORMAL" / "tall.png", img)
    write_png(root / "PNEUMONIA" / "wide.png", img.T.copy())
    ds, _ = load_source(root, 12)
    assert_images(ds.images, 2, 12)
    np.testing.assert_allclose(ds.images, 100 / 255, atol=1e-5)


def test_folder_output_resized(tmp_path):
    root = tmp_path / "site"
    for i in range(3):
        write_png(root / "NORMAL" / f"n{i}.png", gray8(i, (50, 50)))
        write_png(root / "PNEUMONIA" / f"p{i}.png", gray8(10 + i, (37, 61)))
    ds, rep = load_source(root, 24)
    assert_images(ds.images, 6, 24)
    assert rep.n_loaded == 6
    assert rep.class_counts == {"normal": 3, "pneumonia": 3}
    assert ds.images.std() > 0.01  # not blank


# =============================================================================================
# DICOM
# =============================================================================================


def load_one(path: Path, resolution: int = 64) -> np.ndarray:
    ds, rep = load_source(path, resolution, labeled=False)
    assert rep.skipped == []
    return ds.images[0]


def test_dicom_monochrome2_linear_min_max(tmp_path):
    pixels = (ramp12() + 100).astype(np.uint16)  # 100..4132, 12 bits stored
    path = write_dicom(tmp_path / "a.dcm", pixels, bits_stored=13)
    img = load_one(path)
    assert img.dtype == np.float32 and img.shape == (64, 64)
    expected = (pixels.astype(np.float64) - 100) / (4132 - 100)
    np.testing.assert_allclose(img, expected, atol=1e-6)
    assert img[:, 0].max() == 0.0 and img[:, -1].min() == 1.0


def test_dicom_monochrome1_inverts(tmp_path):
    pixels = ramp12()
    mono2 = load_one(write_dicom(tmp_path / "m2.dcm", pixels, bits_stored=12))
    mono1 = load_one(write_dicom(tmp_path / "m1.dcm", pixels, bits_stored=12, photometric="MONOCHROME1"))
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    assert mono2[0, 0] == 0.0 and mono1[0, 0] == 1.0


def test_dicom_16bit_stored_values_bits_stored_12(tmp_path):
    pixels = np.zeros((32, 32), dtype=np.uint16)
    pixels[:, 16:] = 4095
    pixels[:16, :16] = 1365
    img = load_one(write_dicom(tmp_path / "a.dcm", pixels, bits_stored=12), 32)
    np.testing.assert_allclose(img[:16, :16], 1365 / 4095, atol=1e-6)
    np.testing.assert_allclose(img[16:, :16], 0.0, atol=1e-6)
    np.testing.assert_allclose(img[:, 16:], 1.0, atol=1e-6)


def test_dicom_signed_pixels(tmp_path):
    pixels = np.tile(np.arange(-32, 32, dtype=np.int16) * 10, (64, 1))
    img = load_one(write_dicom(tmp_path / "s.dcm", pixels, bits_stored=16, signed=True))
    np.testing.assert_allclose(img, (pixels + 320) / 630.0, atol=1e-6)


def test_dicom_voi_window(tmp_path):
    pixels = ramp12()  # column c = 64 c
    center, width = 2048, 1024  # window covers 1536..2560
    plain = load_one(write_dicom(tmp_path / "plain.dcm", pixels, bits_stored=12))
    win = load_one(write_dicom(tmp_path / "win.dcm", pixels, bits_stored=12, window=(center, width)))
    values = pixels[0]
    below, above = values < center - width / 2, values > center + width / 2
    inside = ~below & ~above
    assert below.any() and above.any() and inside.sum() > 5
    np.testing.assert_allclose(win[:, below], 0.0, atol=1e-6)
    np.testing.assert_allclose(win[:, above], 1.0, atol=1e-6)
    row = win[0, inside]
    assert np.all(np.diff(row) > 0)  # linear ramp inside the window
    mid = int(np.argmin(np.abs(values - center)))
    assert abs(win[0, mid] - 0.5) < 0.02
    # without the window the same pixels span the whole range linearly
    assert plain[0, 10] > 0.1 and plain[0, 50] < 0.9
    assert not np.allclose(plain, win)


def test_dicom_voi_window_keeps_its_contrast(tmp_path):
    """Pixels all inside the window are not re-stretched to the image's own min and max."""
    pixels = np.tile(np.linspace(1800, 2300, 64).astype(np.uint16), (64, 1))
    center, width = 2048, 1024
    img = load_one(write_dicom(tmp_path / "w.dcm", pixels, bits_stored=12, window=(center, width)))
    # LINEAR VOI (PS3.3 C.11.2.1.2.1): ((x - (c - 0.5)) / (w - 1) + 0.5)
    expected = (pixels - (center - 0.5)) / (width - 1) + 0.5
    np.testing.assert_allclose(img, expected, atol=1e-3)
    assert 0.2 < img.min() < 0.3 and 0.7 < img.max() < 0.8


def test_dicom_voi_window_monochrome1_inverts(tmp_path):
    pixels = ramp12()
    w = (2048, 1024)
    m2 = load_one(write_dicom(tmp_path / "m2.dcm", pixels, bits_stored=12, window=w))
    m1 = load_one(write_dicom(tmp_path / "m1.dcm", pixels, bits_stored=12, window=w, photometric="MONOCHROME1"))
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
    assert m1[0, 0] == 1.0 and m1[0, -1] == 0.0


def test_dicom_rescale_applied_before_window(tmp_path):
    # rescaled value = 2 * stored - 1024; window [-500, 500] in rescaled units
    # <=> stored 262..762. A loader that windowed stored values would make all of these 1.
    pixels = np.tile(np.linspace(0, 1200, 64).astype(np.uint16), (64, 1))
    img = load_one(write_dicom(tmp_path / "r.dcm", pixels, bits_stored=12, rescale=(2.0, -1024.0), window=(0, 1000)))
    stored = pixels[0].astype(np.float64)
    rescaled = 2 * stored - 1024
    np.testing.assert_allclose(img[0, rescaled < -501], 0.0, atol=1e-6)
    np.testing.assert_allclose(img[0, rescaled > 501], 1.0, atol=1e-6)
    inside = (rescaled > -499) & (rescaled < 499)
    assert inside.sum() > 10
    assert np.all((img[0, inside] > 0) & (img[0, inside] < 1))
    np.testing.assert_allclose(img[0, inside], (rescaled[inside] + 500) / 1000, atol=2e-3)


def test_dicom_rescale_without_window_is_linear(tmp_path):
    pixels = ramp12()
    plain = load_one(write_dicom(tmp_path / "p.dcm", pixels, bits_stored=12))
    resc = load_one(write_dicom(tmp_path / "r.dcm", pixels, bits_stored=12, rescale=(3.0, -500.0)))
    np.testing.assert_allclose(resc, plain, atol=1e-6)


def test_dicom_bad_files_skipped(tmp_path):
    root = tmp_path / "site" / "NORMAL"
    write_dicom(root / "good.dcm", ramp12(), bits_stored=12, uid_suffix=1)
    write_dicom(root / "nopixels.dcm", None, uid_suffix=2)
    two = np.stack([ramp12(), ramp12()[::-1]])
    write_dicom(root / "multi.dcm", two, bits_stored=12, frames=2, uid_suffix=3)
    (root / "garbage.dcm").write_bytes(rng(5).integers(0, 256, 1000, dtype=np.uint8).tobytes())
    rgb = rng(6).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    write_dicom(root / "colour.dcm", rgb, uid_suffix=4)
    blank = np.full((32, 32), 700, dtype=np.uint16)
    write_dicom(root / "blank.dcm", blank, bits_stored=12, uid_suffix=5)
    full = write_dicom(tmp_path / "tmp.dcm", ramp12(), bits_stored=12, uid_suffix=6).read_bytes()
    (root / "truncated.dcm").write_bytes(full[: len(full) // 2])

    ds, rep = load_source(tmp_path / "site", 64)
    assert [Path(s).name for s in ds.sources] == ["good.dcm"]
    reasons = skipped_names(rep)
    assert set(reasons) == {"nopixels.dcm", "multi.dcm", "garbage.dcm", "colour.dcm", "blank.dcm", "truncated.dcm"}
    assert "pixel data" in reasons["nopixels.dcm"].lower()
    assert "multi-frame" in reasons["multi.dcm"]
    assert "DICOM" in reasons["garbage.dcm"]
    assert "not grayscale" in reasons["colour.dcm"] and "RGB" in reasons["colour.dcm"]
    assert "blank" in reasons["blank.dcm"]
    assert rep.n_loaded == 1
    assert_report_consistent(rep)


def test_dicom_undecodable_compressed_pixels_skipped(tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    path = write_dicom(tmp_path / "site" / "PNEUMONIA" / "jpeg.dcm", gray8(1, (32, 32)))
    import pydicom

    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0" + bytes(100)])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    write_png(tmp_path / "site" / "NORMAL" / "ok.png", gray8(2))
    ds2, rep = load_source(tmp_path / "site", 16)
    assert len(ds2) == 1
    reasons = skipped_names(rep)
    assert "decode" in reasons["jpeg.dcm"]


def test_dicom_without_suffix_detected_by_preamble(tmp_path):
    pixels = ramp12()
    root = tmp_path / "site"
    write_dicom(root / "PNEUMONIA" / "IMG0001", pixels, bits_stored=12)
    ds, rep = load_source(root, 64)
    assert rep.skipped == [] and rep.n_loaded == 1
    np.testing.assert_allclose(ds.images[0], pixels / 4032.0, atol=1e-6)
    np.testing.assert_array_equal(ds.labels, [1])
    # and the same file, prediction-style, as a single path
    single, _ = load_source(root / "PNEUMONIA" / "IMG0001", 64, labeled=False)
    np.testing.assert_array_equal(single.images, ds.images)


def _contains_any(blob: bytes, needles: tuple[str, ...]) -> list[str]:
    """Needles found in ``blob`` as ASCII/UTF-8, UTF-16-LE or UTF-32-LE (numpy's '<U')."""
    found = []
    for n in needles:
        for enc in ("utf-8", "utf-16-le", "utf-32-le"):
            if n.encode(enc) in blob or n.upper().encode(enc) in blob.upper():
                found.append(n)
                break
    return found


def _npz_leaks(path: Path, needles: tuple[str, ...]) -> list[str]:
    blobs = [path.read_bytes()]
    with zipfile.ZipFile(path) as zf:
        blobs += [zf.read(name) for name in zf.namelist()]
    return sorted({n for b in blobs for n in _contains_any(b, needles)})


def test_leak_scanner_finds_planted_strings(tmp_path):
    """Control for the leak test below: the scanner does see a string that is there."""
    ds = ImageSet(
        images=np.zeros((1, 8, 8), np.float32),
        labels=np.array([0]),
        patient=np.array([LEAK_STRINGS[1]], dtype=object),
    )
    out = tmp_path / "planted.npz"
    save_npz(ds, str(out))
    assert _npz_leaks(out, LEAK_STRINGS) == [LEAK_STRINGS[1]]


def test_no_dicom_header_field_leaks(tmp_path):
    root = tmp_path / "site"
    pixels = ramp12()
    write_dicom(root / "NORMAL" / "n1.dcm", pixels, bits_stored=12, identity=True, uid_suffix=11)
    write_dicom(root / "PNEUMONIA" / "p1.dcm", pixels[::-1], bits_stored=12, identity=True, uid_suffix=12)
    # the header really carries the strings (so the test can fail)
    raw = (root / "NORMAL" / "n1.dcm").read_bytes()
    assert all(s.encode() in raw for s in LEAK_STRINGS)

    for source in (root, root / "NORMAL" / "n1.dcm"):
        labeled = source.is_dir()
        ds, rep = load_source(source, 32, labeled=labeled)
        assert len(ds) == (2 if labeled else 1)
        texts = [ds.origin, rep.source, json.dumps(rep.to_dict()), repr(ds)]
        for arr in (ds.patient, ds.split, ds.sources):
            if arr is not None:
                texts += [str(v) for v in arr]
        joined = "\n".join(texts).upper()
        for s in LEAK_STRINGS:
            assert s.upper() not in joined
        out = tmp_path / f"ingested_{int(labeled)}.npz"
        save_npz(ds, str(out))
        assert _npz_leaks(out, LEAK_STRINGS) == []


def test_patient_comes_from_csv_not_dicom_header(tmp_path):
    root = tmp_path / "site"
    write_dicom(root / "a.dcm", ramp12(), bits_stored=12, identity=True, uid_suffix=21)
    write_dicom(root / "b.dcm", ramp12()[:, ::-1], bits_stored=12, identity=True, uid_suffix=22)
    _write_csv(root / "labels.csv", "path,label,patient\na.dcm,0,site-07\nb.dcm,1,\n")
    ds, _ = load_source(root, 32)
    assert list(ds.patient) == ["site-07", "file1"]
    out = tmp_path / "x.npz"
    save_npz(ds, str(out))
    assert _npz_leaks(out, LEAK_STRINGS) == []
    assert _npz_leaks(out, ("site-07",)) == ["site-07"]


# =============================================================================================
# prediction inputs (labeled=False)
# =============================================================================================


def test_single_png_for_prediction(tmp_path):
    path = write_png(tmp_path / "xray.png", gray8(1, (40, 40)))
    ds, rep = load_source(path, 20, labeled=False)
    assert_images(ds.images, 1, 20)
    np.testing.assert_array_equal(ds.labels, [0])
    assert list(ds.sources) == [str(path)]
    assert rep.n_found == 1 and rep.n_loaded == 1
    assert rep.class_counts == {}


def test_single_file_needs_a_label_when_training(tmp_path):
    path = write_png(tmp_path / "xray.png", gray8(1))
    with pytest.raises(DataError, match="no label"):
        load_source(path, 16)


def test_single_unreadable_file_for_prediction(tmp_path):
    path = tmp_path / "xray.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(30))
    with pytest.raises(DataError, match="no usable image"):
        load_source(path, 16, labeled=False)


def test_unlabeled_folder_positions_in_sorted_order(tmp_path):
    root = tmp_path / "inbox"
    write_png(root / "a.png", gray8(1))
    (root / "b.txt").write_text("x")
    write_png(root / "c.png", gray8(3))
    (root / "d.png").write_bytes(rng(4).integers(0, 256, 200, dtype=np.uint8).tobytes())
    write_dicom(root / "e.dcm", ramp12(16), bits_stored=12)
    write_png(root / "f" / "g.png", gray8(6))
    (root / "h.dcm").write_bytes(b"nope")

    ds, rep = load_source(root, 16, labeled=False)
    assert [Path(s).name for s in ds.sources] == ["a.png", "c.png", "e.dcm", "g.png"]
    np.testing.assert_array_equal(ds.labels, [0, 0, 0, 0])
    np.testing.assert_allclose(ds.images[0], gray8(1) / 255.0, atol=ATOL)
    np.testing.assert_allclose(ds.images[1], gray8(3) / 255.0, atol=ATOL)
    np.testing.assert_allclose(ds.images[3], gray8(6) / 255.0, atol=ATOL)
    assert [(Path(s.path).name, s.position) for s in rep.skipped] == [("b.txt", 1), ("d.png", 3), ("h.dcm", 6)]
    assert rep.n_found == 7 and rep.n_loaded == 4
    assert ds.split is None and ds.patient is None


def test_unlabeled_folder_with_class_folders_keeps_labels(tmp_path):
    root = tmp_path / "site"
    write_png(root / "NORMAL" / "a.png", gray8(1))
    write_png(root / "PNEUMONIA" / "b.png", gray8(2))
    write_png(root / "c.png", gray8(3))  # no class folder: fine for prediction
    ds, rep = load_source(root, 16, labeled=False)
    assert [Path(s).name for s in ds.sources] == ["a.png", "b.png", "c.png"]
    np.testing.assert_array_equal(ds.labels, [0, 1, 0])
    assert rep.skipped == []


def test_parse_label():
    for v in (0, "0", " normal ", "NORMAL", "No Finding", "negative", 0.0):
        assert parse_label(v) == 0
    for v in (1, "1", "Pneumonia", "positive", "1.0"):
        assert parse_label(v) == 1
    for v in ("2", "", "covid", None, "yes"):
        with pytest.raises(ValueError):
            parse_label(v)


# =============================================================================================
# real RSNA DICOMs (skipped when ../shared/data is absent; nothing is copied)
# =============================================================================================


@pytest.mark.shared_data
def test_real_rsna_dicoms_load(shared_data):
    folder = shared_data / "dicom"
    if not folder.is_dir():
        pytest.skip(f"no DICOM folder at {folder}")
    files = sorted(folder.glob("*.dcm"))
    assert len(files) == 16
    ds, rep = load_source(folder, 64, labeled=False)
    assert rep.skipped == []
    assert rep.n_loaded == 16
    assert_images(ds.images, 16, 64)
    assert {Path(s).name for s in ds.sources} == {f.name for f in files}
    per_image_std = ds.images.reshape(16, -1).std(axis=1)
    assert (per_image_std > 0.05).all()  # none is constant
    assert (ds.images.reshape(16, -1).max(axis=1) > 0.5).all()
    assert len({img.tobytes() for img in ds.images}) == 16  # all distinct
