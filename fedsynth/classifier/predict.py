"""Score new images with a run's classifier, preprocessed exactly as in training.

Each row also says whether the image is out of distribution (``ood``: unlike the classifier's
training images, so its score is unreliable) and its OOD score; both are empty for a classifier
saved without an OOD reference (:attr:`Classifier.ood` is None) and for skipped inputs.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from fedsynth.classifier.train import Classifier
from fedsynth.data.ingest import IngestReport, load_source
from fedsynth.errors import DataError
from fedsynth.rundir import CLASSIFIER_FILE

COLUMNS = ("index", "source", "probability", "prediction", "status", "ood", "ood_score")


@dataclass
class PredictionRow:
    index: int
    source: str
    probability: float | None
    prediction: str
    status: str
    ood: bool | None = None  # None: skipped, or the classifier has no OOD reference
    ood_score: float | None = None


def load_run_classifier(run_dir: str | Path, device: str = "cpu") -> Classifier:
    path = Path(run_dir)
    if path.is_dir():
        path = path / CLASSIFIER_FILE
    if not path.is_file():
        raise DataError(f"no classifier at {path}; is {run_dir} a finished fedsynth run directory?")
    try:
        return Classifier.load(path, device=device)
    except ValueError as err:
        raise DataError(str(err)) from None


def predict(classifier: Classifier, source: str | Path) -> tuple[list[PredictionRow], IngestReport]:
    """One row per input, in input order; unreadable inputs get a row saying why.

    Every input ingestion examines has a position (an empty labels.csv row too), and each
    is either loaded (in position order) or skipped at its position; a skip without one is
    listed after them.
    """
    ds, report = load_source(source, classifier.resolution, labeled=False)
    probs = classifier.predict_proba(ds.images)
    try:
        distances = classifier.ood_scores(ds.images)
    except ValueError as err:  # a header whose OOD statistics do not fit the model
        raise DataError(str(err)) from None
    ood_threshold = float(classifier.ood["threshold"]) if distances is not None else None
    skipped = {s.position: s for s in report.skipped if s.position is not None}
    unplaced = [s for s in report.skipped if s.position is None]
    sources = list(ds.sources) if ds.sources is not None else [""] * len(ds)
    loaded = iter(zip(sources, probs, distances if distances is not None else [None] * len(ds)))
    rows: list[PredictionRow] = []
    for _ in range(len(ds) + len(skipped)):
        index = len(rows)
        if index in skipped:
            s = skipped.pop(index)
            rows.append(PredictionRow(index, s.path, None, "", f"skipped: {s.reason}"))
            continue
        item = next(loaded, None)
        if item is None:  # positions with a gap: the rest are skips, in position order
            break
        src, p, d = item
        label = "pneumonia" if p >= classifier.threshold else "normal"
        ood = None if d is None else bool(d > ood_threshold)
        rows.append(PredictionRow(index, str(src), float(p), label, "ok", ood, None if d is None else float(d)))
    for s in [*(skipped[k] for k in sorted(skipped)), *unplaced]:
        rows.append(PredictionRow(len(rows), s.path, None, "", f"skipped: {s.reason}"))
    return rows, report


def check_output_path(path: str | Path) -> Path:
    """Where the scores CSV can be written: its folder is created; DataError when ``path`` is
    a directory or its folder cannot be made (checked before any image is scored)."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"--out {path} is a directory; give a file name such as {path / 'scores.csv'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"--out {path}: cannot create its folder {path.parent} ({err.strerror or err})") from None
    if not path.parent.is_dir():
        raise DataError(f"--out {path}: {path.parent} is not a folder")
    return path


def write_csv(rows: list[PredictionRow], path: str | Path) -> Path:
    path = check_output_path(path)
    try:
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(COLUMNS)
            for r in rows:
                w.writerow([r.index, r.source, "" if r.probability is None else f"{r.probability:.6f}",
                            r.prediction, r.status, "" if r.ood is None else str(r.ood).lower(),
                            "" if r.ood_score is None else f"{r.ood_score:.4f}"])
    except OSError as err:
        raise DataError(f"--out {path}: cannot write the scores ({err.strerror or err})") from None
    return path
