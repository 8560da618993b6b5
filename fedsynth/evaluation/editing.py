"""Synthetic X-rays to a specification: sample a class, or change a synthetic image's class
while keeping its anatomy, and measure that the edit does what it says.

Only generators are sampled here; no real image is ever an input. An edit's report gives,
per image, the classifier's pneumonia probability before and after (it should move towards
the requested class) and the structural similarity (SSIM) of the edited image to its source
(it should stay high at low strength).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth.data.dataset import CLASS_NAMES, to_uint8
from fedsynth.errors import DataError
from fedsynth.generators import Generator, load_generator
from fedsynth.rundir import GENERATOR_FILE, RunDir


def parse_label(value: str, classes: tuple[str, ...] = CLASS_NAMES) -> int:
    """A class name of the label set ``classes`` (or its index) as its index."""
    text = str(value).strip().lower()
    if text in classes:
        return classes.index(text)
    if text.isdigit() and int(text) < len(classes):
        return int(text)
    raise DataError(f"label {value!r}: use one of {', '.join(classes)}")


def find_generator(source: Path, site: str | None = None) -> Path:
    """A generator file: given directly, a run's global generator (federated mode), or a
    simulated site's own (``site``; in a deployment each site keeps its own file)."""
    if source.is_file():
        return source
    if not source.is_dir():
        raise DataError(f"not found: {source}")
    run = RunDir(source.resolve(), source.name)
    path = run.site_dir(site) / GENERATOR_FILE if site else run.file(GENERATOR_FILE)
    if not path.is_file():
        hint = ("; in substitution mode each site keeps its own: give --site NAME" if not site
                else "" if run.sites_dir.is_dir() else "; this run directory holds no site folders")
        raise DataError(f"no generator at {path}{hint}")
    return path


@dataclass
class EditReport:
    source_label: str
    target_label: str
    strength: float
    n: int
    ssim: list[float] = field(default_factory=list)
    score_before: list[float] = field(default_factory=list)  # the classifier's P(pneumonia)
    score_after: list[float] = field(default_factory=list)
    target_is_pneumonia: bool = True  # any class but the label set's first (normal)
    # a classifier of the same finer label set: its probability of the target class
    target_probability_before: list[float] = field(default_factory=list)
    target_probability_after: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        moved = np.asarray(self.score_after) - np.asarray(self.score_before)
        toward = moved if self.target_is_pneumonia else -moved
        out = {"source": self.source_label, "target": self.target_label, "strength": self.strength, "n": self.n,
               "ssim_mean": float(np.mean(self.ssim)) if self.ssim else None,
               "score_before_mean": float(np.mean(self.score_before)) if self.score_before else None,
               "score_after_mean": float(np.mean(self.score_after)) if self.score_after else None,
               "share_moved_toward_target": float(np.mean(toward > 0)) if len(toward) else None}
        if self.target_probability_before:
            before, after = np.asarray(self.target_probability_before), np.asarray(self.target_probability_after)
            out.update(target_probability_before_mean=float(before.mean()),
                       target_probability_after_mean=float(after.mean()),
                       share_target_probability_up=float(np.mean(after > before)))
        return out


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, data_range=1.0, win_size=min(7, a.shape[0] // 2 * 2 - 1)))


def edit_report(gen: Generator, n: int, source: int, target: int, strength: float, seed: int,
                classifier: Any = None) -> tuple[np.ndarray, np.ndarray, EditReport]:
    src, out = gen.edit(n, source, target, strength, seed=seed)
    classes = tuple(getattr(gen, "classes", CLASS_NAMES))
    report = EditReport(classes[source], classes[target], strength, n, ssim=[ssim(a, b) for a, b in zip(src, out)],
                        target_is_pneumonia=target > 0)
    if classifier is not None and classifier.resolution == gen.resolution:
        report.score_before = classifier.predict_proba(src).astype(float).tolist()
        report.score_after = classifier.predict_proba(out).astype(float).tolist()
        if len(classes) > 2 and tuple(classifier.classes) == classes:
            report.target_probability_before = classifier.predict_class_proba(src)[:, target].astype(float).tolist()
            report.target_probability_after = classifier.predict_class_proba(out)[:, target].astype(float).tolist()
    return src, out, report


def save_images(path: Path, images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...] = CLASS_NAMES,
                **extra: np.ndarray) -> Path:
    """Synthetic images as an npz bundle the ingesters read (uint8, binary labels, marked synthetic);
    ``labels`` are class indices of ``classes``, so a finer label set also writes each image's
    ``subtype`` (the column data.label_set reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(labels)
    finer = {} if tuple(classes) == CLASS_NAMES else {"subtype": np.asarray(classes)[labels].astype(str)}
    np.savez_compressed(path, images=to_uint8(images), labels=(labels > 0).astype(np.uint8), synthetic=np.array(True),
                        **finer, **{k: to_uint8(v) for k, v in extra.items()})
    return path


__all__ = ["EditReport", "edit_report", "find_generator", "load_generator", "parse_label", "save_images", "ssim"]
