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
    score_before: list[float] = field(default_factory=list)
    score_after: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        moved = np.asarray(self.score_after) - np.asarray(self.score_before)
        toward = moved if self.target_label == CLASS_NAMES[1] else -moved
        return {"source": self.source_label, "target": self.target_label, "strength": self.strength, "n": self.n,
                "ssim_mean": float(np.mean(self.ssim)) if self.ssim else None,
                "score_before_mean": float(np.mean(self.score_before)) if self.score_before else None,
                "score_after_mean": float(np.mean(self.score_after)) if self.score_after else None,
                "share_moved_toward_target": float(np.mean(toward > 0)) if len(toward) else None}


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, data_range=1.0, win_size=min(7, a.shape[0] // 2 * 2 - 1)))


def edit_report(gen: Generator, n: int, source: int, target: int, strength: float, seed: int,
                classifier: Any = None) -> tuple[np.ndarray, np.ndarray, EditReport]:
    src, out = gen.edit(n, source, target, strength, seed=seed)
    report = EditReport(CLASS_NAMES[source], CLASS_NAMES[target], strength, n,
                        ssim=[ssim(a, b) for a, b in zip(src, out)])
    if classifier is not None and classifier.resolution == gen.resolution:
        report.score_before = classifier.predict_proba(src).astype(float).tolist()
        report.score_after = classifier.predict_proba(out).astype(float).tolist()
    return src, out, report


def save_images(path: Path, images: np.ndarray, labels: np.ndarray, **extra: np.ndarray) -> Path:
    """Synthetic images as an npz bundle the ingesters read (uint8, labels, marked synthetic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, images=to_uint8(images), labels=labels.astype(np.uint8), synthetic=np.array(True),
                        **{k: to_uint8(v) for k, v in extra.items()})
    return path


__all__ = ["EditReport", "edit_report", "find_generator", "load_generator", "parse_label", "save_images", "ssim"]
