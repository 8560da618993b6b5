"""Ingestion: a site's files -> one ImageSet at the run's resolution, plus a report.

Sources:

* an ``.npz`` bundle with ``images`` and ``labels`` (optional ``split``, ``patient``),
  or a MedMNIST file (``train_images``, ``train_labels``, ...);
* a folder of PNG/JPEG/DICOM with labels from a ``labels.csv`` (columns ``path,label``,
  optional ``patient``, ``split``) or from class-named folders (``NORMAL/``,
  ``PNEUMONIA/``, at any depth; ``train/``/``test/`` ancestors give the split);
* a single image file (for prediction).

A file that cannot be used (corrupt, truncated, not an image, multi-frame, no pixel
data, undecodable transfer syntax, no label) is skipped and listed with its reason;
nothing else is lost. Zero usable images is an error that says why.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fedsynth.data.dataset import CLASS_NAMES, ImageSet
from fedsynth.data.dicom import is_dicom_file, read_dicom
from fedsynth.data.errors import UnreadableImage
from fedsynth.data.preprocess import prepare, prepare_batch
from fedsynth.errors import DataError

PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
LABEL_FILE = "labels.csv"
_PATH_COLUMNS = ("path", "file", "filename")
_LABEL_COLUMNS = ("label", "target", "class")
_PATIENT_COLUMNS = ("patient", "patient_id", "patientid")
_SPLIT_NAMES = {"train": "train", "training": "train", "test": "test", "testing": "test", "val": "val"}


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


def read_image_file(path: Path) -> np.ndarray:
    """Decode one PNG/JPEG/TIFF/BMP or DICOM file to float32 (H, W) in [0, 1]."""
    suffix = path.suffix.lower()
    if suffix in PIL_SUFFIXES:
        return _read_pil(path)
    if is_dicom_file(path):
        return read_dicom(path)
    raise UnreadableImage("not an image (unrecognised file type)")


def _read_pil(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            if getattr(img, "n_frames", 1) > 1:
                raise UnreadableImage(f"multi-frame image ({img.n_frames} frames)")
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float64)
                top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
                out = arr / top
            elif img.mode == "F":
                arr = np.asarray(img, dtype=np.float64)
                lo, hi = float(arr.min()), float(arr.max())
                if hi <= lo:
                    raise UnreadableImage("image is blank (a single grey level)")
                out = (arr - lo) / (hi - lo)
            else:
                out = np.asarray(img.convert("L"), dtype=np.float64) / 255.0
    except UnreadableImage:
        raise
    except UnidentifiedImageError:
        raise UnreadableImage("corrupt or not an image (cannot identify image file)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise UnreadableImage(f"corrupt or truncated image ({err})") from None
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
    path: Path
    label: int | None
    patient: str | None = None
    split: str | None = None


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
        entries = []
        for row_no, row in enumerate(reader, start=2):
            rel = (row.get(path_col) or "").strip()
            if not rel:
                report.n_found += 1
                report.skip(f"{csv_path}:{row_no}", "empty path")
                continue
            path = (root / rel) if not Path(rel).is_absolute() else Path(rel)
            label = None
            if label_col is not None and labeled:
                try:
                    label = parse_label(row.get(label_col))
                except ValueError as err:
                    report.n_found += 1
                    report.skip(path, str(err))
                    continue
            entries.append(
                _Entry(
                    path=path,
                    label=label,
                    patient=(row.get(patient_col) or None) if patient_col else None,
                    split=(row.get(split_col) or None) if split_col else None,
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
            report.n_found += 1
            report.skip(path, "no label (not under a NORMAL/ or PNEUMONIA/ folder, and no labels.csv)")
            continue
        entries.append(_Entry(path=path, label=label, split=split))
    return entries


def _load_entries(entries: list[_Entry], resolution: int, report: IngestReport, labeled: bool):
    images, labels, patients, splits, sources = [], [], [], [], []
    for position, e in enumerate(entries):
        report.n_found += 1
        if not e.path.is_file():
            report.skip(e.path, "file not found", position)
            continue
        try:
            img = read_image_file(e.path)
        except UnreadableImage as err:
            report.skip(e.path, str(err), position)
            continue
        images.append(prepare(img, resolution))
        labels.append(e.label if e.label is not None else -1)
        patients.append(e.patient)
        splits.append(e.split)
        sources.append(str(e.path))
    return images, labels, patients, splits, sources


def _load_folder(root: Path, resolution: int, report: IngestReport, labeled: bool):
    csv_path = root / LABEL_FILE
    if csv_path.is_file():
        try:
            entries = _entries_from_csv(csv_path, report, labeled)
        except UnicodeDecodeError as err:
            raise DataError(f"{csv_path}: not UTF-8 text ({err}); save it as CSV UTF-8") from None
    else:
        entries = _entries_from_tree(root, report, labeled)
    return _load_entries(entries, resolution, report, labeled)


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


def _read_npz_arrays(path: Path, labeled: bool) -> dict[str, np.ndarray]:
    try:
        bundle = np.load(path, allow_pickle=False)
    except Exception as err:
        raise DataError(f"{path}: cannot read npz bundle ({err})") from None
    with bundle:
        keys = set(bundle.files)
        if "images" in keys:
            out = {k: bundle[k] for k in keys if k in ("images", "labels", "split", "patient")}
        elif {"train_images", "test_images"} <= keys:  # a MedMNIST file
            parts = [p for p in ("train", "val", "test") if f"{p}_images" in keys]
            out = {
                "images": np.concatenate([bundle[f"{p}_images"] for p in parts]),
                "labels": np.concatenate([bundle[f"{p}_labels"].reshape(-1) for p in parts]),
                "split": np.concatenate([np.full(len(bundle[f"{p}_images"]), p) for p in parts]),
            }
        else:
            raise DataError(f"{path}: an npz bundle needs an 'images' array (found: {', '.join(sorted(keys))})")
    if labeled and "labels" not in out:
        raise DataError(f"{path}: an npz bundle for training needs a 'labels' array")
    return out


def _load_npz(path: Path, resolution: int, report: IngestReport, labeled: bool) -> ImageSet:
    arrays = _read_npz_arrays(path, labeled)
    images = _npz_to_float(arrays["images"], path)
    n = images.shape[0]
    report.n_found = n
    labels = arrays.get("labels")
    if labels is not None:
        labels = labels.reshape(-1)
        if labels.shape[0] != n:
            raise DataError(f"{path}: 'labels' has {labels.shape[0]} entries for {n} images")
        if not np.isin(labels, (0, 1)).all():
            bad = sorted(set(np.unique(labels).tolist()) - {0, 1})[:5]
            raise DataError(f"{path}: 'labels' must be 0 (normal) or 1 (pneumonia); found {bad}")
    else:
        labels = np.full(n, -1)
    for name in ("split", "patient"):
        if name in arrays and arrays[name].reshape(-1).shape[0] != n:
            raise DataError(f"{path}: '{name}' has {arrays[name].size} entries for {n} images")
    finite = np.isfinite(images).all(axis=(1, 2))
    for i in np.flatnonzero(~finite):
        report.skip(f"{path}[{i}]", "non-finite pixel values", int(i))
    keep = np.flatnonzero(finite)
    return _assemble(
        prepare_batch(images[keep], resolution),
        labels[keep],
        arrays["patient"].reshape(-1)[keep].astype(str) if "patient" in arrays else None,
        np.char.lower(arrays["split"].reshape(-1)[keep].astype(str)) if "split" in arrays else None,
        np.array([f"{path.name}[{i}]" for i in keep], dtype=object),
        origin=str(path),
        report=report,
        labeled=labeled,
    )


def _assemble(images, labels, patient, split, sources, origin, report, labeled) -> ImageSet:
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
    )
    return ds


def load_source(source: str | Path, resolution: int, *, labeled: bool = True) -> tuple[ImageSet, IngestReport]:
    """Load ``source`` at ``resolution``. With ``labeled=False`` labels are not required
    (they read as 0) and every usable image is returned in input order, for prediction."""
    path = Path(source)
    report = IngestReport(source=str(path), resolution=resolution)
    if not path.exists():
        raise DataError(f"data source not found: {path}")
    if path.is_file() and path.suffix.lower() == ".npz":
        return _load_npz(path, resolution, report, labeled), report
    if path.is_dir():
        images, labels, patients, splits, sources = _load_folder(path, resolution, report, labeled)
    else:
        if labeled:
            raise DataError(f"{path}: a single file has no label; give a folder or an npz bundle")
        images, labels, patients, splits, sources = _load_entries(
            [_Entry(path=path, label=None)], resolution, report, labeled
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
    )
    return ds, report
