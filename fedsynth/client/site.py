"""A site (hospital): plain-Python logic, run the same in tests, simulation and deployment.

The site holds its real images and never lets them out. It answers two requests:

* ``release``: check the request against its privacy budget (refusing before any
  training if it would overspend), train a generator on its real training split (with
  DP-SGD when the run asks for it), record the training in its signed ledger, pass the
  samples through the release gate, record the release, and return the synthetic
  images with their labels, statistics and the signed ledger (a
  :class:`~fedsynth.protocol.Release`);
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
from fedsynth.privacy.dp import BudgetCheck, DPPlan, check_budget, plan_training
from fedsynth.privacy.gate import membership_auc, release_gate
from fedsynth.privacy.ledger import DP_TRAINING, RELEASE, TRAINING, spent_epsilon
from fedsynth.privacy.release import content_hash
from fedsynth.privacy.state import SiteState
from fedsynth.protocol import EvalResult, Release

log = logging.getLogger("fedsynth.site")


def site_seed(run_seed: int, site: str) -> int:
    """A per-site seed derived from the run seed, stable across processes."""
    digest = hashlib.sha256(f"{run_seed}:{site}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class Site:
    def __init__(self, data: SiteSplit, state: SiteState, output_dir: str | Path | None = None, device: str = "auto"):
        if state.name != data.name:
            raise ValueError(f"site state {state.name!r} does not belong to site {data.name!r}")
        self.data = data
        self.state = state
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
        per_class, withheld = {}, {}
        for c, name in enumerate(CLASS_NAMES):
            if counts[name] >= min_class:
                per_class[c] = config.release.n_per_class
            else:
                withheld[name] = f"{counts[name]} training images, fewer than release.min_class_images={min_class}"
        if not per_class:
            raise DataError(f"{self.name}: no class has release.min_class_images={min_class} training images")

        # privacy first: refuse before any training step if the budget does not allow it
        fingerprint = train.fingerprint()
        ledger, key = self.state.ledger(), self.state.signing_key()
        plan: DPPlan | None = None
        budget_check: BudgetCheck | None = None
        if config.privacy is not None:
            plan = plan_training(config.privacy, len(train), config.generator.batch_size, config.generator.epochs)
            budget_check = check_budget(self.name, ledger.entries(), plan, self.state.budget, fingerprint)
            log.info("%s: DP plan noise=%.3f q=%.4f steps=%d; budget spent %.3g -> %.3g of %g", self.name,
                     plan.noise_multiplier, plan.sample_rate, plan.steps, budget_check.spent_before,
                     budget_check.spent_after, self.state.budget.epsilon)
        else:
            ledger.entries()  # a damaged ledger stops the site here, before any training

        gen = build_generator(config.generator, config.data.resolution, seed=seed, device=self.device)
        started = time.perf_counter()
        every = max(1, config.generator.epochs // 5)

        def progress(epoch: int, total: int, row: dict[str, float]) -> None:
            if epoch % every == 0 or epoch == total:
                log.info("%s: generator epoch %d/%d loss_d=%.3f loss_g=%.3f", self.name, epoch, total,
                         row.get("loss_d", float("nan")), row.get("loss_g", float("nan")))

        report = gen.fit(train.images, train.labels, privacy=plan, progress=progress)
        training_entry = ledger.append(self._training_entry(run_id, fingerprint, gen.family, report), key)

        # the release gate, then the membership audit on what will actually be released
        if config.gate.enabled:
            gate = release_gate(
                lambda n, c, s: gen.sample(n, c, seed=s), per_class, train.images, train.labels,
                config.gate.quantile, config.gate.max_rounds, seed,
            )
            images, labels, gate_summary = gate.images, gate.labels, gate.summary()
        else:
            labels = np.concatenate([np.full(n, c, dtype=np.int64) for c, n in per_class.items()])
            images, gate_summary = gen.sample(len(labels), labels, seed=seed + 1), {"enabled": False}
        images_u8, labels_u8 = to_uint8(images), labels.astype(np.uint8)
        mia = None
        if config.gate.membership_audit:
            mia = membership_auc(train.images, self.data.test.images, images_u8.astype(np.float32) / 255, seed=seed)
        accountant = config.privacy.accountant if config.privacy else "rdp"
        budget = self.state.budget
        release_entry = ledger.append(
            {
                "type": RELEASE,
                "run_id": run_id,
                "dataset_fingerprint": fingerprint,
                "content_hash": content_hash(images_u8, labels_u8),
                "n_images": int(len(labels_u8)),
                "per_class": {CLASS_NAMES[c]: int((labels_u8 == c).sum()) for c in per_class},
                "training_entry": training_entry["hash"],
                "private": plan is not None,
                "gate": gate_summary,
                "membership_auc": mia,
                "budget": {"epsilon": budget.epsilon, "delta": budget.delta},
                "spent": {"epsilon": spent_epsilon(ledger.entries(), budget.delta, accountant),
                          "delta": budget.delta, "accountant": accountant},
            },
            key,
        )
        self._write_local_outputs(gen, images, labels, config)
        meta = {
            "site": self.name,
            "run_id": run_id,
            "fedsynth_version": __version__,
            "generator": {"family": gen.family, **{k: v for k, v in report.to_dict().items() if k != "history"}},
            "train_counts": counts,
            "test_counts": self.data.test.class_counts(),
            "released_per_class": release_entry["per_class"],
            "withheld_classes": withheld,
            "phantom": bool(train.phantom),
            "private": plan is not None,
            "privacy": {
                "epsilon": training_entry.get("epsilon"),
                "delta": plan.delta if plan else None,
                "spent_epsilon": release_entry["spent"]["epsilon"],
                "budget": release_entry["budget"],
            },
            "gate": gate_summary,
            "membership_auc": mia,
            "seconds": time.perf_counter() - started,
            "ledger": ledger.entries(),
        }
        return Release(site=self.name, images=images_u8, labels=labels_u8, meta=meta)

    def _training_entry(self, run_id: str, fingerprint: str, family: str, report) -> dict:
        body = {
            "run_id": run_id,
            "dataset_fingerprint": fingerprint,
            "details": {"generator": family, "epochs": report.epochs, "steps": report.steps,
                        "n_train": len(self.data.train)},
        }
        if report.privacy is None:
            return {"type": TRAINING, **body, "mechanism": None, "epsilon": None}
        return {"type": DP_TRAINING, **body, **report.privacy}

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
