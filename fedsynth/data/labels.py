"""The label set a consortium conditions on: binary (normal / pneumonia) or finer.

Every generator family is class-conditional on the names of ``data.label_set``, and every
release is labelled with indices into it. The default is the binary set, read from the
images' ``labels``; a finer set (Kermany's ``normal / bacteria / virus``) is read from a
per-image ``subtype`` column (an npz array or a ``labels.csv`` column). The first name is
the negative class: an image of class 0 is normal (binary label 0), an image of any other
class has pneumonia (binary label 1), and the two columns must agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedsynth.config import MAX_CLASSES, check_label_set
from fedsynth.data.dataset import CLASS_NAMES, ImageSet, label_message
from fedsynth.errors import DataError

BINARY = CLASS_NAMES  # ("normal", "pneumonia")
SUBTYPES = ("normal", "bacteria", "virus")  # Kermany's subtypes, the finer set its file names carry
SUBTYPE_COLUMN = "subtype"


def is_binary(names: Sequence[str]) -> bool:
    return tuple(names) == BINARY


def class_indices(ds: ImageSet, names: Sequence[str]) -> np.ndarray:
    """Each image's index in the label set ``names`` (int64). The binary set is the images'
    labels; any other set is looked up in their ``subtype`` column, which must name only
    classes of the set and agree with the binary labels (class 0 normal, the others pneumonia)."""
    names = check_label_set(names)
    if is_binary(names):
        return ds.labels.astype(np.int64)
    column = ds.meta.get(SUBTYPE_COLUMN)
    if column is None:
        raise DataError(f"data.label_set {list(names)}: the images carry no '{SUBTYPE_COLUMN}' column "
                        f"(an npz array or a labels.csv column naming each image's class); {ds.origin or 'the data'} "
                        "has only binary labels")
    values = np.char.lower(np.char.strip(np.asarray(column).astype(str)))
    lookup = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(values.tolist()) - set(lookup))
    if unknown:
        counts = ", ".join(f"{u!r} ({int((values == u).sum())})" for u in unknown[:5])
        raise DataError(f"data.label_set {list(names)}: the '{SUBTYPE_COLUMN}' column names classes outside "
                        f"the set: {counts}")
    idx = np.array([lookup[v] for v in values.tolist()], dtype=np.int64)
    disagree = int(((idx > 0).astype(np.int64) != ds.labels).sum())
    if disagree:
        raise DataError(f"data.label_set {list(names)}: {disagree} image(s) have a '{SUBTYPE_COLUMN}' that "
                        f"disagrees with their binary label ('{names[0]}' must be label 0, the others label 1)")
    return idx


def binary_labels(classes: np.ndarray) -> np.ndarray:
    """The binary labels of class indices: 0 for the negative class, 1 for any other."""
    return (np.asarray(classes) > 0).astype(np.int64)


__all__ = ["BINARY", "SUBTYPES", "SUBTYPE_COLUMN", "MAX_CLASSES", "binary_labels", "check_label_set", "class_indices",
           "is_binary", "label_message"]
