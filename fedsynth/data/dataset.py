"""ImageSet: the one in-memory form of a labelled set of chest X-rays.

Images are float32 in [0, 1], shape (N, H, W), square, one channel, 0 = black.
Labels are 0 (normal) or 1 (pneumonia). ``patient`` and ``split`` are optional
per-image string arrays; ``origin`` names where the images came from, and
``phantom`` marks procedurally generated images so every output made from them can
say so. ``meta`` holds optional per-image metadata columns (:data:`META_COLUMNS`:
acquisition source, view, sex, age, subtype) as 1-D arrays, for subgroup evaluation; it travels
through :meth:`ImageSet.subset`, :func:`concat` and :func:`save_npz`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fedsynth.errors import DataError

CLASS_NAMES = ("normal", "pneumonia")
META_COLUMNS = ("source", "view", "sex", "age", "subtype")  # per-image metadata read from npz arrays or labels.csv
# columns; "subtype" (e.g. normal / bacteria / virus) is also what a finer label set conditions on (data/labels.py)


@dataclass(frozen=True)
class ImageSet:
    images: np.ndarray
    labels: np.ndarray
    patient: np.ndarray | None = None
    split: np.ndarray | None = None
    origin: str = ""
    phantom: bool = False
    sources: np.ndarray | None = field(default=None, repr=False)  # per-image file path, where known
    meta: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # per-image metadata columns

    def __post_init__(self) -> None:
        imgs, labels = self.images, self.labels
        if imgs.ndim != 3 or imgs.shape[1] != imgs.shape[2]:
            raise DataError(f"images must have shape (N, S, S), got {imgs.shape}")
        if imgs.dtype != np.float32:
            raise DataError(f"images must be float32 in [0, 1], got {imgs.dtype}")
        if labels.shape != (imgs.shape[0],):
            raise DataError(f"labels must have shape ({imgs.shape[0]},), got {labels.shape}")
        if labels.size and not np.isin(labels, (0, 1)).all():
            bad = sorted(set(np.unique(labels).tolist()) - {0, 1})
            raise DataError(f"labels must be 0 (normal) or 1 (pneumonia); found {bad}")
        for name in ("patient", "split", "sources"):
            arr = getattr(self, name)
            if arr is not None and arr.shape != (imgs.shape[0],):
                raise DataError(f"{name} must have one entry per image ({imgs.shape[0]}), got {arr.shape}")
        for key, arr in self.meta.items():
            if not isinstance(key, str) or np.shape(arr) != (imgs.shape[0],):
                raise DataError(f"metadata column {key!r} must have one entry per image ({imgs.shape[0]}), "
                                f"got {np.shape(arr)}")

    # ---- basic facts ---------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def resolution(self) -> int:
        return int(self.images.shape[1])

    def class_counts(self) -> dict[str, int]:
        return {name: int((self.labels == c).sum()) for c, name in enumerate(CLASS_NAMES)}

    def patient_keys(self) -> np.ndarray:
        """Grouping key for patient-disjoint splits: (split, patient) when both are known.

        Some datasets (Kermany) restart patient numbering per official split, so the
        split is part of the key. Without patient ids every image is its own group.
        """
        n = len(self)
        if self.patient is None:
            return np.array([f"img{i}" for i in range(n)], dtype=object)
        if self.split is None:
            return self.patient.astype(str).astype(object)
        return np.char.add(np.char.add(self.split.astype(str), "/"), self.patient.astype(str)).astype(object)

    def subset(self, index: np.ndarray) -> ImageSet:
        index = np.asarray(index, dtype=np.int64)

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[index]

        return replace(
            self,
            images=self.images[index],
            labels=self.labels[index],
            patient=pick(self.patient),
            split=pick(self.split),
            sources=pick(self.sources),
            meta={k: v[index] for k, v in self.meta.items()},
        )

    def fingerprint(self) -> str:
        """SHA-256 over the quantised pixels and labels: names the data a model was trained on."""
        h = hashlib.sha256()
        h.update(np.asarray(self.images.shape, dtype=np.int64).tobytes())
        h.update(to_uint8(self.images).tobytes())
        h.update(self.labels.astype(np.uint8).tobytes())
        return h.hexdigest()


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[0, 1] floats to uint8 with rounding (the wire and file format of images)."""
    return np.clip(np.rint(np.asarray(images, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def from_uint8(images: np.ndarray) -> np.ndarray:
    return np.asarray(images, dtype=np.float32) / 255.0


def concat(sets: list[ImageSet], origin: str = "") -> ImageSet:
    if not sets:
        raise DataError("nothing to concatenate")

    def cat(name: str) -> np.ndarray | None:
        arrays = [getattr(s, name) for s in sets]
        if any(a is None for a in arrays):
            return None
        return np.concatenate(arrays)

    return ImageSet(
        images=np.concatenate([s.images for s in sets]).astype(np.float32),
        labels=np.concatenate([s.labels for s in sets]).astype(np.int64),
        patient=cat("patient"),
        split=cat("split"),
        sources=cat("sources"),
        # a metadata column survives where every part has it
        meta={k: np.concatenate([s.meta[k] for s in sets]) for k in sets[0].meta if all(k in s.meta for s in sets)},
        origin=origin or "+".join(sorted({s.origin for s in sets})),
        phantom=any(s.phantom for s in sets),
    )


def save_npz(ds: ImageSet, path: str) -> None:
    """Write an npz bundle the loaders read back (images as uint8)."""
    arrays: dict[str, np.ndarray] = {"images": to_uint8(ds.images), "labels": ds.labels.astype(np.uint8)}
    if ds.patient is not None:
        arrays["patient"] = ds.patient.astype(str)
    if ds.split is not None:
        arrays["split"] = ds.split.astype(str)
    for key, column in ds.meta.items():
        if key in META_COLUMNS:
            arrays[key] = column if column.dtype.kind in "biuf" else column.astype(str)
    arrays["phantom"] = np.array(ds.phantom)
    np.savez_compressed(path, **arrays)


def label_message(classes: tuple[str, ...]) -> str:
    """What labels of the label set ``classes`` must be (a refusal's message)."""
    if tuple(classes) == CLASS_NAMES:
        return "labels must be 0 (normal) or 1 (pneumonia)"
    return "labels must be class indices " + ", ".join(f"{i} ({n})" for i, n in enumerate(classes))


def check_training_data(images: Any, labels: Any, resolution: int,
                        classes: tuple[str, ...] = CLASS_NAMES) -> tuple[np.ndarray, np.ndarray]:
    """Validate (images, labels) handed to a trainer (a generator or the classifier) at the door:
    float images (N, S, S) in [0, 1], labels class indices of ``classes`` (0/1 for the binary
    set), at least two rows. Returns float32 and int64 copies."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 3 or images.shape[1:] != (resolution, resolution):
        raise ValueError(f"images must have shape (N, {resolution}, {resolution}); got {images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be floats in [0, 1]; got dtype {images.dtype}")
    if images.size and (not np.isfinite(images).all() or images.min() < 0 or images.max() > 1):
        raise ValueError("images must be finite and lie in [0, 1]")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},); got {labels.shape}")
    if not np.isin(labels, np.arange(len(classes))).all():
        raise ValueError(label_message(classes))
    if images.shape[0] < 2:
        raise ValueError(f"need at least 2 training images; got {images.shape[0]}")
    return images.astype(np.float32), labels.astype(np.int64)
