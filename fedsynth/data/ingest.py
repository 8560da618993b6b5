"""Ingestion: a site's files -> one ImageSet at the run's resolution, plus a report.

Sources:

* an ``.npz`` bundle with ``images`` and ``labels`` (optional ``split``, ``patient``, and
  the metadata columns ``source``, ``view``, ``sex``, ``age``), or a MedMNIST file
  (``train_images``, ``train_labels``, ...);
* a folder of PNG/JPEG/DICOM with labels from a ``labels.csv`` (columns ``path,label``,
  optional ``patient``, ``split`` and the metadata columns) or from class-named folders
  (``NORMAL/``, ``PNEUMONIA/``, at any depth; ``train/``/``test/`` ancestors give the split);
* a single image file (for prediction).

A file that cannot be used (corrupt, truncated, not an image, multi-frame, no pixel
data, undecodable transfer syntax, more pixels than :data:`MAX_PIXELS`, no label) is
skipped and listed with its reason; nothing else is lost. Zero usable images is an error
that says why. Every size is checked from a header before anything is decoded: an image's
pixel count (PNG/JPEG/TIFF/BMP, DICOM), an npz array's dtype and shape (its .npy header).
An npz bundle is one unit: a bad bundle is a DataError naming the file and the array.
"""

from __future__ import annotations

import csv
import json
import math
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fedsynth.data.dataset import CLASS_NAMES, META_COLUMNS, ImageSet
from fedsynth.data.dicom import is_dicom_file, read_dicom
from fedsynth.data.errors import (
    MAX_NPZ_BYTES,
    MAX_PIXELS,
    TooManyPixels,
    UnreadableImage,
    check_pixel_count,
    describe_pixels,
    pil_bomb_guard,
    pil_bomb_reason,
    pixel_limit,
)
from fedsynth.data.preprocess import prepare, prepare_batch
from fedsynth.errors import DataError

__all__ = ["MAX_NPZ_BYTES", "MAX_PIXELS", "IngestReport", "SkippedFile", "load_source", "parse_label",
           "read_image_file"]

PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
LABEL_FILE = "labels.csv"
_PATH_COLUMNS = ("path", "file", "filename")
_LABEL_COLUMNS = ("label", "target", "class")
_PATIENT_COLUMNS = ("patient", "patient_id", "patientid")
_SPLIT_NAMES = {"train": "train", "training": "train", "test": "test", "testing": "test", "val": "val"}
_SPLIT_HELP = "expected train, test or val (val is read as training data)"
# 12-bit detectors write 0..4095 into 16-bit PNG/TIFF files: scaled by 65535 such an image is
# near black, so a 16-bit image whose maximum is below 4096 is read as 12-bit (scaled by 4095).
_TWELVE_BIT_MAX = 4095


@dataclass
class SkippedFile:
    path: str
    reason: str
    position: int | None = None  # index among the examined inputs, where known


@dataclass
class IngestReport:
    source: str
    resolution: int
    n_found: int = 0
    n_loaded: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)
    skipped: list[SkippedFile] = field(default_factory=list)

    def skip(self, path: str | Path, reason: str, position: int | None = None) -> None:
        self.skipped.append(SkippedFile(str(path), reason, position))

    def to_dict(self) -> dict:
        return asdict(self)

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    def summary(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.class_counts.items())
        text = f"{self.n_loaded} of {self.n_found} images loaded from {self.source}"
        if counts:
            text += f" ({counts})"
        if self.skipped:
            text += f"; {len(self.skipped)} skipped"
        return text


def parse_label(value: object) -> int:
    """0/1 or a class name (case-insensitive); anything else raises ValueError."""
    text = str(value).strip().lower()
    if text in ("0", "0.0", "normal", "no finding", "negative"):
        return 0
    if text in ("1", "1.0", "pneumonia", "positive"):
        return 1
    raise ValueError(f"label {value!r} is not one of 0, 1, normal, pneumonia")


def read_image_file(path: Path, *, max_pixels: int | None = None) -> np.ndarray:
    """Decode one PNG/JPEG/TIFF/BMP or DICOM file to float32 (H, W) in [0, 1].

    The pixel count is checked from the header first: more than ``max_pixels`` (default
    :data:`MAX_PIXELS`) raises :class:`TooManyPixels` before anything is decoded. Every
    failure is an :class:`UnreadableImage` whose message is the reason.
    """
    suffix = path.suffix.lower()
    if suffix in PIL_SUFFIXES:
        return _read_pil(path, max_pixels)
    if is_dicom_file(path):
        return read_dicom(path, max_pixels=max_pixels)
    raise UnreadableImage("not an image (unrecognised file type)")


def _read_pil(path: Path, max_pixels: int | None = None) -> np.ndarray:
    try:
        with pil_bomb_guard(), Image.open(path) as img:
            w, h = img.size  # from the header; nothing is decoded before load()
            check_pixel_count(w * h, f"image is {w} x {h} pixels", max_pixels)
            if getattr(img, "n_frames", 1) > 1:
                raise UnreadableImage(f"multi-frame image ({img.n_frames} frames)")
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float64)
                if img.mode.startswith("I;16"):
                    top = 65535.0 if arr.max() > _TWELVE_BIT_MAX else float(_TWELVE_BIT_MAX)
                else:
                    top = max(float(arr.max()), 1.0)
                out = arr / top
            elif img.mode == "F":
                arr = np.asarray(img, dtype=np.float64)
                if not np.isfinite(arr).all():
                    raise UnreadableImage("image has non-finite pixel values")
                lo, hi = float(arr.min()), float(arr.max())
                if hi <= lo:
                    raise UnreadableImage("image is blank (a single grey level)")
                out = (arr - lo) / (hi - lo)
            else:
                out = np.asarray(img.convert("L"), dtype=np.float64) / 255.0
    except UnreadableImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:  # Pillow's own limit
        raise TooManyPixels(pil_bomb_reason(err, max_pixels)) from None
    except UnidentifiedImageError:
        raise UnreadableImage("corrupt or not an image (cannot identify image file)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise UnreadableImage(f"corrupt or truncated image ({err})") from None
    except Exception as err:  # a hostile file can make a decoder fail in many other ways
        raise UnreadableImage(f"corrupt image ({type(err).__name__}: {err})") from None
    if out.ndim != 2 or min(out.shape) < 8:
        raise UnreadableImage(f"unexpected image shape {out.shape}")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# ---- folders ---------------------------------------------------------------------------


def _find_column(header: list[str], names: tuple[str, ...]) -> str | None:
    lowered = {h.strip().lower(): h for h in header}
    for n in names:
        if n in lowered:
            return lowered[n]
    return None


@dataclass
class _Entry:
    path: Path | str
    label: int | None
    patient: str | None = None
    split: str | None = None
    skip: str | None = None  # why this input is skipped before any file is opened
    meta: dict[str, str] = field(default_factory=dict)  # labels.csv's metadata columns (META_COLUMNS)


def _inside(root: Path, rel: str) -> tuple[Path, str | None]:
    """``root / rel``, and why it may not be read when it leaves the dataset folder (``..``,
    an absolute path elsewhere, a symlink pointing out): labels.csv names files, it does not
    reach for them anywhere on the machine."""
    path = Path(rel) if Path(rel).is_absolute() else root / rel
    try:
        resolved, base = path.resolve(), root.resolve()
    except (OSError, RuntimeError, ValueError) as err:  # a symlink loop, a NUL byte
        return path, f"path cannot be resolved ({err})"
    if not resolved.is_relative_to(base):
        kind = "absolute path" if Path(rel).is_absolute() else "path"
        return path, f"{kind} leads outside the dataset folder {root} (paths in {LABEL_FILE} must stay inside it)"
    return path, None


def _entries_from_csv(csv_path: Path, report: IngestReport, labeled: bool) -> list[_Entry]:
    root = csv_path.parent
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: Excel writes a BOM
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        path_col = _find_column(header, _PATH_COLUMNS)
        label_col = _find_column(header, _LABEL_COLUMNS)
        if path_col is None or (labeled and label_col is None):
            raise DataError(
                f"{csv_path}: needs columns 'path' and 'label' (found: {', '.join(header) or 'none'})"
            )
        patient_col = _find_column(header, _PATIENT_COLUMNS)
        split_col = _find_column(header, ("split",))
        meta_cols = {name: col for name in META_COLUMNS if (col := _find_column(header, (name,))) is not None}
        entries = []
        # A bad row is skipped with its reason, as a bad label always was: labels.csv is a list of
        # files, each examined on its own (an npz bundle, by contrast, is one unit and fails whole).
        for row_no, row in enumerate(reader, start=2):
            rel = (row.get(path_col) or "").strip()
            if not rel:
                entries.append(_Entry(f"{csv_path}:{row_no}", None, skip="empty path"))
                continue
            path, outside = _inside(root, rel)
            if outside:
                entries.append(_Entry(path, None, skip=outside))
                continue
            label = None
            if label_col is not None and labeled:
                try:
                    label = parse_label(row.get(label_col))
                except ValueError as err:
                    entries.append(_Entry(path, None, skip=str(err)))
                    continue
            split = (row.get(split_col) or "").strip() if split_col else ""
            if split and split.lower() not in _SPLIT_NAMES:
                entries.append(_Entry(path, None, skip=f"unknown split {split[:40]!r} ({_SPLIT_HELP})"))
                continue
            entries.append(
                _Entry(
                    path=path,
                    label=label,
                    patient=(row.get(patient_col) or None) if patient_col else None,
                    split=_SPLIT_NAMES[split.lower()] if split else None,
                    meta={name: (row.get(col) or "").strip() for name, col in meta_cols.items()},
                )
            )
    return entries


def _entries_from_tree(root: Path, report: IngestReport, labeled: bool) -> list[_Entry]:
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel_parts = [part.lower() for part in path.relative_to(root).parts[:-1]]
        if path.name.startswith(".") or path.name == LABEL_FILE:
            continue
        label = None
        split = None
        for part in rel_parts:  # nearest class folder wins
            if part in CLASS_NAMES:
                label = CLASS_NAMES.index(part)
            if part in _SPLIT_NAMES:
                split = _SPLIT_NAMES[part]
        if labeled and label is None:
            entries.append(_Entry(path, None, skip="no label (not under a NORMAL/ or PNEUMONIA/ folder, "
                                                   "and no labels.csv)"))
            continue
        entries.append(_Entry(path=path, label=label, split=split))
    return entries


def _load_entries(entries: list[_Entry], resolution: int, report: IngestReport, labeled: bool,
                  max_pixels: int | None = None):
    """Every entry is examined once, in order: loaded, or skipped with its reason and its
    position (prediction writes one row per input, in this order)."""
    images, labels, patients, splits, sources, metas = [], [], [], [], [], []
    for position, e in enumerate(entries):
        report.n_found += 1
        if e.skip is not None:
            report.skip(e.path, e.skip, position)
            continue
        path = Path(e.path)
        try:
            found = path.is_file()
        except (OSError, ValueError) as err:  # permission denied, a name too long
            report.skip(path, f"cannot access the file ({err})", position)
            continue
        if not found:
            report.skip(path, "file not found", position)
            continue
        try:
            img = read_image_file(path, max_pixels=max_pixels)
        except UnreadableImage as err:
            report.skip(path, str(err), position)
            continue
        images.append(prepare(img, resolution))
        labels.append(e.label if e.label is not None else -1)
        patients.append(e.patient)
        splits.append(e.split)
        sources.append(str(path))
        metas.append(e.meta)
    return images, labels, patients, splits, sources, metas


def _load_folder(root: Path, resolution: int, report: IngestReport, labeled: bool, max_pixels: int | None = None):
    csv_path = root / LABEL_FILE
    if csv_path.is_file():
        try:
            entries = _entries_from_csv(csv_path, report, labeled)
        except UnicodeDecodeError as err:
            raise DataError(f"{csv_path}: not UTF-8 text ({err}); save it as CSV UTF-8") from None
        except csv.Error as err:  # a field over the csv module's size limit, a NUL byte
            raise DataError(f"{csv_path}: not a readable CSV file ({err})") from None
    else:
        entries = _entries_from_tree(root, report, labeled)
    return _load_entries(entries, resolution, report, labeled, max_pixels)


# ---- npz ---------------------------------------------------------------------------------


def _npz_to_float(images: np.ndarray, path: Path) -> np.ndarray:
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    elif images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3:
        raise DataError(f"{path}: 'images' must have shape (N, H, W); got {images.shape}")
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    if images.dtype == np.uint16:
        return images.astype(np.float32) / 65535.0
    if np.issubdtype(images.dtype, np.floating):
        finite = images[np.isfinite(images)]
        if finite.size and (finite.min() < 0 or finite.max() > 1):
            raise DataError(f"{path}: float 'images' must lie in [0, 1] (found {finite.min():.3g}..{finite.max():.3g})")
        return images.astype(np.float32)
    raise DataError(f"{path}: 'images' has unsupported dtype {images.dtype} (use uint8, uint16 or float in [0, 1])")


_NPZ_ARRAYS = ("images", "labels", "split", "patient", *META_COLUMNS)
_NPY_KINDS = "biufUS"  # bool, integers, floats, strings: nothing that needs pickle or a structure


class _Bundle:
    """The arrays of one npz file, read member by member through zipfile: each member's .npy
    header (dtype, shape) is checked before its data is read, the sizes announced are summed
    against a limit, pickles are never loaded, and any failure names the file and the array."""

    def __init__(self, path: Path, zf: zipfile.ZipFile, max_bytes: int, max_pixels: int):
        self.path, self.zf = path, zf
        self.max_bytes, self.max_pixels = max_bytes, max_pixels
        self.announced = 0
        self.names = sorted(n[:-4] for n in zf.namelist() if n.endswith(".npy"))

    def fail(self, key: str, why: str) -> DataError:
        return DataError(f"{self.path}: array '{key}' {why}")

    def header(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        with self.zf.open(f"{key}.npy") as fp:
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
            else:  # 3.0 exists for structured dtypes with unicode field names, which fedsynth never reads
                raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
        return tuple(int(d) for d in shape), dtype

    def check(self, key: str, shape: tuple[int, ...], dtype: np.dtype, images: bool) -> None:
        if dtype.hasobject:
            raise self.fail(key, "holds Python objects (a pickle); fedsynth reads only numeric and string arrays")
        if dtype.kind not in _NPY_KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise self.fail(key, f"has unsupported dtype {dtype} (use numbers or strings)")
        nbytes = math.prod(shape) * dtype.itemsize
        self.announced += nbytes
        if self.announced > self.max_bytes:
            raise self.fail(key, f"has shape {shape} of {dtype}: the bundle's arrays would take "
                                 f"{self.announced / 2**30:.3g} GiB once decompressed; at most "
                                 f"{self.max_bytes / 2**30:.3g} GiB are read")
        if images and len(shape) >= 3:
            per_image = math.prod(shape[1:])
            if per_image > self.max_pixels:
                raise self.fail(key, f"has images of shape {shape[1:]} ({describe_pixels(per_image)} each); "
                                     f"at most {describe_pixels(self.max_pixels)} are accepted")

    def read(self, key: str, images: bool = False) -> np.ndarray:
        if key not in self.names:
            raise self.fail(key, "is missing")
        try:
            shape, dtype = self.header(key)
        except Exception as err:  # a corrupt zip member (BadZipFile, CRC), not a .npy, a bad header
            raise self.fail(key, f"is not a readable .npy array ({type(err).__name__}: {err})") from None
        self.check(key, shape, dtype, images)
        held = self.zf.getinfo(f"{key}.npy").file_size
        if math.prod(shape) * dtype.itemsize > held:
            raise self.fail(key, f"announces shape {shape} of {dtype}, more data than its {held} bytes")
        try:
            with self.zf.open(f"{key}.npy") as fp:
                arr = np.lib.format.read_array(fp, allow_pickle=False)
                if fp.read(1):  # also makes zipfile reach the member's end and check its CRC
                    raise ValueError("data continues after the array")
        except Exception as err:  # BadZipFile (CRC), zlib.error, EOF, ValueError
            raise self.fail(key, f"cannot be read ({type(err).__name__}: {err})") from None
        return arr


def _read_npz_arrays(path: Path, labeled: bool, max_bytes: int | None = None,
                     max_pixels: int | None = None) -> dict[str, np.ndarray]:
    try:
        zf = zipfile.ZipFile(path)
    except Exception as err:  # BadZipFile, a truncated central directory, OSError
        raise DataError(f"{path}: cannot read npz bundle ({type(err).__name__}: {err})") from None
    with zf:
        bundle = _Bundle(path, zf, MAX_NPZ_BYTES if max_bytes is None else int(max_bytes), pixel_limit(max_pixels))
        keys = set(bundle.names)
        if "images" in keys:
            out = {k: bundle.read(k, images=k == "images") for k in _NPZ_ARRAYS if k in keys}
        elif {"train_images", "test_images"} <= keys:  # a MedMNIST file
            parts = [p for p in ("train", "val", "test") if f"{p}_images" in keys]
            images = [bundle.read(f"{p}_images", images=True) for p in parts]
            labels = [bundle.read(f"{p}_labels").reshape(-1) for p in parts]
            try:
                out = {"images": np.concatenate(images), "labels": np.concatenate(labels),
                       "split": np.concatenate([np.full(len(a), p) for p, a in zip(parts, images)])}
            except ValueError as err:  # parts of different image sizes or dimensions
                raise DataError(f"{path}: the MedMNIST parts {', '.join(parts)} do not fit together ({err})") from None
        else:
            found = ", ".join(sorted(keys)[:20]) + (", ..." if len(keys) > 20 else "")
            raise DataError(f"{path}: an npz bundle needs an 'images' array (found: {found or 'no arrays'})")
    if labeled and "labels" not in out:
        raise DataError(f"{path}: an npz bundle for training or evaluation needs a 'labels' array "
                        "(0 normal, 1 pneumonia)")
    return out


def _as_text(arr: np.ndarray, key: str, path: Path) -> np.ndarray:
    try:
        return arr.reshape(-1).astype(str)
    except (UnicodeDecodeError, ValueError) as err:  # bytes that are not text
        raise DataError(f"{path}: array '{key}' is not text ({err})") from None


def _npz_splits(arr: np.ndarray, path: Path) -> np.ndarray:
    """Split names, normalised. An unknown value is an error for the whole bundle (as a bad
    label is): a typo such as 'tset' would otherwise quietly make test images training data."""
    text = np.char.lower(np.char.strip(_as_text(arr, "split", path)))
    values = set(np.unique(text).tolist())
    bad = sorted(values - set(_SPLIT_NAMES))
    if bad:
        raise DataError(f"{path}: array 'split' has unknown value(s) {bad[:5]} ({_SPLIT_HELP})")
    lookup = np.vectorize(_SPLIT_NAMES.__getitem__, otypes=[object])
    return lookup(text).astype(str) if text.size else text


def _load_npz(path: Path, resolution: int, report: IngestReport, labeled: bool,
              max_bytes: int | None = None, max_pixels: int | None = None) -> ImageSet:
    arrays = _read_npz_arrays(path, labeled, max_bytes, max_pixels)
    images = _npz_to_float(arrays["images"], path)
    n = images.shape[0]
    report.n_found = n
    labels = arrays.get("labels")
    if labels is not None:
        labels = labels.reshape(-1)
        if labels.dtype.kind not in "biuf":
            raise DataError(f"{path}: 'labels' must be numbers, 0 (normal) or 1 (pneumonia); got dtype {labels.dtype}")
        if labels.shape[0] != n:
            raise DataError(f"{path}: 'labels' has {labels.shape[0]} entries for {n} images")
        if not np.isin(labels, (0, 1)).all():
            bad = sorted(set(np.unique(labels).tolist()) - {0, 1})[:5]
            raise DataError(f"{path}: 'labels' must be 0 (normal) or 1 (pneumonia); found {bad}")
    else:
        labels = np.full(n, -1)
    for name in ("split", "patient", *META_COLUMNS):
        if name in arrays and arrays[name].reshape(-1).shape[0] != n:
            raise DataError(f"{path}: '{name}' has {arrays[name].size} entries for {n} images")
    for name in META_COLUMNS:
        if name in arrays and arrays[name].ndim != 1:
            raise DataError(f"{path}: '{name}' must be a 1-D array (one entry per image); got shape "
                            f"{arrays[name].shape}")
    split = _npz_splits(arrays["split"], path) if "split" in arrays else None
    patient = _as_text(arrays["patient"], "patient", path) if "patient" in arrays else None
    meta = {name: _npz_meta(arrays[name], name, path) for name in META_COLUMNS if name in arrays}
    finite = np.isfinite(images).all(axis=(1, 2))
    for i in np.flatnonzero(~finite):
        report.skip(f"{path}[{i}]", "non-finite pixel values", int(i))
    keep = np.flatnonzero(finite)
    return _assemble(
        prepare_batch(images[keep], resolution),
        labels[keep],
        patient[keep] if patient is not None else None,
        split[keep] if split is not None else None,
        np.array([f"{path.name}[{i}]" for i in keep], dtype=object),
        origin=str(path),
        report=report,
        labeled=labeled,
        meta={k: v[keep] for k, v in meta.items()},
    )


def _npz_meta(arr: np.ndarray, key: str, path: Path) -> np.ndarray:
    """A metadata column of an npz bundle: numbers stay numbers (an age), anything else is text."""
    arr = arr.reshape(-1)
    if arr.dtype.kind in "biuf":
        return arr.astype(np.float64) if arr.dtype.kind == "f" else arr.astype(np.int64)
    return _as_text(arr, key, path).astype(object)


def _assemble(images, labels, patient, split, sources, origin, report, labeled, meta=None) -> ImageSet:
    labels = np.asarray(labels, dtype=np.int64)
    report.n_loaded = int(len(labels))
    if report.n_loaded == 0:
        reasons = sorted({s.reason for s in report.skipped})
        detail = f" Reasons: {'; '.join(reasons[:5])}." if reasons else ""
        raise DataError(f"no usable image in {origin} ({report.n_found} files examined).{detail}")
    if labeled:
        report.class_counts = {name: int((labels == c).sum()) for c, name in enumerate(CLASS_NAMES)}
    ds = ImageSet(
        images=np.asarray(images, dtype=np.float32),
        labels=np.where(labels < 0, 0, labels) if not labeled else labels,
        patient=patient,
        split=split,
        origin=origin,
        sources=sources,
        meta=meta or {},
    )
    return ds


def load_source(source: str | Path, resolution: int, *, labeled: bool = True, max_pixels: int | None = None,
                max_npz_bytes: int | None = None) -> tuple[ImageSet, IngestReport]:
    """Load ``source`` at ``resolution``. With ``labeled=False`` labels are not required
    (they read as 0) and every usable image is returned in input order, for prediction.

    ``max_pixels`` (default :data:`MAX_PIXELS`) bounds one image, ``max_npz_bytes`` (default
    :data:`MAX_NPZ_BYTES`) the decompressed arrays of an npz bundle; both are checked from
    headers before anything is decoded."""
    path = Path(source)
    report = IngestReport(source=str(path), resolution=resolution)
    if not path.exists():
        raise DataError(f"data source not found: {path}")
    if path.is_file() and path.suffix.lower() == ".npz":
        return _load_npz(path, resolution, report, labeled, max_npz_bytes, max_pixels), report
    if path.is_dir():
        images, labels, patients, splits, sources, metas = _load_folder(path, resolution, report, labeled, max_pixels)
    else:
        if labeled:
            raise DataError(f"{path}: a single file has no label; give a folder or an npz bundle")
        images, labels, patients, splits, sources, metas = _load_entries(
            [_Entry(path=path, label=None)], resolution, report, labeled, max_pixels
        )
    has_patient = any(p for p in patients)
    has_split = any(s for s in splits)
    ds = _assemble(
        np.stack(images) if images else np.zeros((0, resolution, resolution), np.float32),
        labels,
        np.array([p or f"file{i}" for i, p in enumerate(patients)], dtype=object) if has_patient else None,
        np.array([(s or "train").lower() for s in splits], dtype=object) if has_split else None,
        np.array(sources, dtype=object),
        origin=str(path),
        report=report,
        labeled=labeled,
        # labels.csv's metadata columns: every row of one file has the same ones
        meta={k: np.array([m.get(k, "") for m in metas], dtype=object) for k in (metas[0] if metas else {})},
    )
    return ds, report
