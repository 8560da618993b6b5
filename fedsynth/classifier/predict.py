"""Score new images with a run's classifier, preprocessed exactly as in training."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from fedsynth.classifier.train import Classifier
from fedsynth.data.ingest import IngestReport, load_source
from fedsynth.errors import DataError
from fedsynth.rundir import CLASSIFIER_FILE

COLUMNS = ("index", "source", "probability", "prediction", "status")


@dataclass
class PredictionRow:
    index: int
    source: str
    probability: float | None
    prediction: str
    status: str


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
    """One row per input, in input order; unreadable inputs get a row saying why."""
    ds, report = load_source(source, classifier.resolution, labeled=False)
    probs = classifier.predict_proba(ds.images)
    skipped = {s.position: s for s in report.skipped if s.position is not None}
    unplaced = [s for s in report.skipped if s.position is None]
    rows: list[PredictionRow] = []
    loaded = iter(zip(ds.sources if ds.sources is not None else [""] * len(ds), probs))
    for position in range(len(ds) + len(skipped)):
        if position in skipped:
            s = skipped[position]
            rows.append(PredictionRow(position, s.path, None, "", f"skipped: {s.reason}"))
            continue
        src, p = next(loaded)
        label = "pneumonia" if p >= classifier.threshold else "normal"
        rows.append(PredictionRow(position, str(src), float(p), label, "ok"))
    for s in unplaced:
        rows.append(PredictionRow(len(rows), s.path, None, "", f"skipped: {s.reason}"))
    return rows, report


def write_csv(rows: list[PredictionRow], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([r.index, r.source, "" if r.probability is None else f"{r.probability:.6f}", r.prediction,
                        r.status])
    return path
