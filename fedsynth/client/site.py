"""A site (hospital): plain-Python logic, run the same in tests, simulation and deployment.

The site holds its real images and never lets them out. It answers two requests:

* ``release``: train a generator on its real training split and return synthetic
  images with their labels and a few statistics (a :class:`~fedsynth.protocol.Release`);
* ``evaluate``: score the server's classifier on its real test split and return only
  metrics and class-wise score histograms (an :class:`~fedsynth.protocol.EvalResult`).

Outputs that contain real pixels (the real-vs-synthetic grids) are written to the
site's own output directory and stay there.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np

from fedsynth import __version__
from fedsynth.classifier.metrics import ScoreHistogram, evaluate_scores
from fedsynth.classifier.train import Classifier
from fedsynth.config import RunConfig
from fedsynth.data.dataset import CLASS_NAMES, to_uint8
from fedsynth.data.partition import SiteSplit
from fedsynth.errors import DataError
from fedsynth.evaluation.grids import image_grid
from fedsynth.generators import build_generator
from fedsynth.protocol import EvalResult, Release

log = logging.getLogger("fedsynth.site")


def site_seed(run_seed: int, site: str) -> int:
    """A per-site seed derived from the run seed, stable across processes."""
    digest = hashlib.sha256(f"{run_seed}:{site}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class Site:
    def __init__(self, data: SiteSplit, output_dir: str | Path | None = None, device: str = "auto"):
        self.data = data
        self.name = data.name
        self.output_dir = Path(output_dir) if output_dir else None
        self.device = device

    # ---- release ----------------------------------------------------------------------------
    def release(self, config: RunConfig, run_id: str) -> Release:
        train = self.data.train
        if len(train) == 0:
            raise DataError(f"{self.name}: no training images")
        seed = site_seed(config.run.seed, self.name)
        counts = train.class_counts()
        min_class = config.release.min_class_images
        released, withheld = [], {}
        for c, name in enumerate(CLASS_NAMES):
            if counts[name] >= min_class:
                released.append(c)
            else:
                withheld[name] = f"{counts[name]} training images, fewer than release.min_class_images={min_class}"
        if not released:
            raise DataError(f"{self.name}: no class has release.min_class_images={min_class} training images")

        gen = build_generator(config.generator, config.data.resolution, seed=seed, device=self.device)
        started = time.perf_counter()
        every = max(1, config.generator.epochs // 5)

        def progress(epoch: int, total: int, row: dict[str, float]) -> None:
            if epoch % every == 0 or epoch == total:
                log.info("%s: generator epoch %d/%d loss_d=%.3f loss_g=%.3f", self.name, epoch, total,
                         row.get("loss_d", float("nan")), row.get("loss_g", float("nan")))

        report = gen.fit(train.images, train.labels, progress=progress)
        n = config.release.n_per_class
        labels = np.repeat(np.asarray(released, dtype=np.int64), n)
        images = gen.sample(len(labels), labels, seed=seed + 1)
        self._write_local_outputs(gen, images, labels, config)
        meta = {
            "site": self.name,
            "run_id": run_id,
            "fedsynth_version": __version__,
            "generator": {"family": gen.family, **report.to_dict()},
            "train_counts": counts,
            "test_counts": self.data.test.class_counts(),
            "released_per_class": {CLASS_NAMES[c]: n for c in released},
            "withheld_classes": withheld,
            "phantom": bool(train.phantom),
            "private": False,
            "seconds": time.perf_counter() - started,
        }
        return Release(site=self.name, images=to_uint8(images), labels=labels.astype(np.uint8), meta=meta)

    def _write_local_outputs(self, gen, images: np.ndarray, labels: np.ndarray, config: RunConfig) -> None:
        if self.output_dir is None:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        gen.save(self.output_dir / "generator.safetensors")
        k = config.evaluation.grid_images
        rng = np.random.default_rng(0)
        train = self.data.train
        for c, name in enumerate(CLASS_NAMES):
            real = train.images[train.labels == c]
            fake = images[labels == c]
            if len(real) == 0 or len(fake) == 0:
                continue
            real = real[rng.choice(len(real), min(k, len(real)), replace=False)]
            image_grid(
                [(f"real ({len(train.images[train.labels == c])} at the site)", real), ("synthetic", fake[:k])],
                self.output_dir / f"real_vs_synthetic_{name}.png",
                f"{self.name}, {name}: real (stays at the site) vs synthetic (released)",
                phantom=train.phantom,
            )

    # ---- evaluation ------------------------------------------------------------------------
    def evaluate(self, classifier: Classifier, config: RunConfig) -> EvalResult:
        test = self.data.test
        if len(test) == 0:
            raise DataError(f"{self.name}: no local test images to evaluate on")
        if classifier.resolution != test.resolution:
            raise DataError(
                f"{self.name}: classifier expects {classifier.resolution} px, test images are {test.resolution} px"
            )
        probs = classifier.predict_proba(test.images)
        ev = config.evaluation
        metrics = evaluate_scores(
            test.labels,
            probs,
            classifier.threshold,
            n_boot=ev.bootstrap,
            level=ev.ci_level,
            seed=site_seed(config.run.seed, self.name),
        )
        return EvalResult(
            site=self.name,
            metrics=metrics.to_dict(),
            histogram=ScoreHistogram.from_scores(test.labels, probs, ev.histogram_bins),
            meta={"phantom": bool(test.phantom), "n_test": len(test)},
        )
