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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth import __version__
from fedsynth.classifier.metrics import ScoreHistogram
from fedsynth.classifier.train import Classifier, build_trainable, train_local
from fedsynth.client.evaluation import calibrate_at_site, evaluate_at_site
from fedsynth.client.release_checks import check_release_markers
from fedsynth.config import RunConfig, SitePolicy
from fedsynth.data.dataset import ImageSet, to_uint8
from fedsynth.data.labels import class_indices
from fedsynth.data.markers import clean_training_set
from fedsynth.data.partition import SiteSplit
from fedsynth.errors import ConfigError, DataError, FedsynthError
from fedsynth.evaluation.alignment import add_gaussian_noise, class_intensity_histograms, intensity_histogram
from fedsynth.evaluation.grids import image_grid
from fedsynth.generators import FAMILIES, build_generator
from fedsynth.privacy.accounting import Mechanism, default_delta, epsilon
from fedsynth.privacy.dp import BudgetCheck, DPPlan, check_budget, plan_training, statistic_mechanism
from fedsynth.privacy.gate import membership_audit, release_gate
from fedsynth.privacy.ledger import DP_STATISTIC, DP_TRAINING, RELEASE, TRAINING, spent_epsilon
from fedsynth.privacy.release import arrays_hash, content_hash, digests_hash, image_digests
from fedsynth.privacy.state import SiteState
from fedsynth.protocol import (
    CLASSIFIER_ROUND,
    GENERATOR_ROUND,
    CalibrationResult,
    EvalResult,
    EvaluateRequest,
    ModelUpdate,
    Release,
    RoundRequest,
)
from fedsynth.torch_utils import exchangeable, load_exchangeable

log = logging.getLogger("fedsynth.site")


def site_seed(run_seed: int, site: str) -> int:
    """A per-site seed derived from the run seed, stable across processes."""
    digest = hashlib.sha256(f"{run_seed}:{site}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class PolicyRefusal(FedsynthError):
    """The request asks for something the site's own policy does not allow."""


class Site:
    def __init__(self, data: SiteSplit, state: SiteState, output_dir: str | Path | None = None, device: str = "auto",
                 generator: Any = None, policy: SitePolicy | None = None,
                 consortium_keys: dict[str, Path] | None = None):
        if state.name != data.name:
            raise ValueError(f"site state {state.name!r} does not belong to site {data.name!r}")
        # the consortium members' public keys this site trusts, to check where a synthetic sample came from
        self.consortium_keys = {**(consortium_keys or {}), data.name: state.public_key_path}
        self.generator_choice = generator  # a deployed site's own choice (its site.yaml), if any
        self.policy = policy or SitePolicy()  # the site's own rules; the server's request cannot relax them
        self.data = data
        self.state = state
        self.name = data.name
        self.output_dir = Path(output_dir) if output_dir else None
        self.device = device
        # the generator's training set after data.markers.training, by action: its data never changes
        self._cleaned: dict[str, tuple[ImageSet, dict[str, Any] | None]] = {}

    # ---- release ----------------------------------------------------------------------------
    def release(self, config: RunConfig, run_id: str) -> Release:
        with self.state.exclusive():  # budget check, training and ledger entries as one step
            return self._release(config, run_id)

    def _release(self, config: RunConfig, run_id: str) -> Release:
        if len(self.data.train) == 0:
            raise DataError(f"{self.name}: no training images")
        train, markers = self._generator_training_set(config)
        if len(train) == 0:
            raise DataError(f"{self.name}: no training images left after data.markers.training=drop")
        seed = site_seed(config.run.seed, self.name)
        counts = train.class_counts()
        classes = config.data.label_set
        conditions = class_indices(train, classes)  # what the generator conditions on, and the release's labels
        class_counts = {name: int((conditions == c).sum()) for c, name in enumerate(classes)}
        min_class = config.release.min_class_images
        gen_cfg = self.generator_choice or config.generator_for(self.name)
        family = FAMILIES[gen_cfg.family]
        # which classes are big enough to release (release.min_class_images). Without DP: the true
        # counts, here. Under DP never the true counts: a mechanism that releases noisy class counts
        # (dp-merf) decides on those after its fit (post-processing); a DP-SGD family on counts with
        # Gaussian noise (release.count_noise), a mechanism of its own in the ledger, before its fit
        noisy_decision = config.privacy is not None and family.statistics_only
        count_mechanism = (Mechanism(config.release.count_noise, 1.0, 1)
                           if config.privacy is not None and not family.statistics_only else None)
        # the delta of this request's noisy statistics: the plan's (made for len(train) images)
        delta = (config.privacy.delta or default_delta(len(train))) if config.privacy is not None else None
        if count_mechanism is not None:
            alone = epsilon([count_mechanism], delta, config.privacy.accountant)
            if alone >= config.privacy.epsilon:
                raise ConfigError(f"{self.name}: the noisy class counts alone (release.count_noise="
                                  f"{config.release.count_noise:g}) spend epsilon {alone:.3g} at delta {delta:g}, "
                                  f"not below privacy.epsilon={config.privacy.epsilon:g}; raise release.count_noise")
        per_class, withheld = {}, {}
        for c, name in enumerate(classes):
            if config.privacy is not None or class_counts[name] >= min_class:
                per_class[c] = config.release.n_per_class
            else:
                withheld[name] = (f"{class_counts[name]} training images, fewer than "
                                  f"release.min_class_images={min_class}")
        if not per_class:
            raise DataError(f"{self.name}: no class has release.min_class_images={min_class} training images")

        # privacy first: refuse before any training step if the policy or the budget forbids it
        self.check_policy(config, releasing=True)
        fingerprint = self.data.train.fingerprint()  # the site's data, whatever preprocessing made of it
        ledger, key = self.state.ledger(), self.state.signing_key()
        statistic = None
        if config.alignment.enabled and config.privacy is not None:
            statistic = statistic_mechanism(config.alignment.epsilon, delta, config.privacy.accountant)
        reserved = (count_mechanism,) if count_mechanism else ()
        plan = self._plan(config, lambda privacy, n: family.plan_privacy(privacy, n, gen_cfg, reserved=reserved),
                          (*((statistic,) if statistic else ()), *reserved), n=len(train))
        if count_mechanism is not None:
            noisy = self._noisy_class_counts(run_id, fingerprint, plan, count_mechanism,
                                             np.array([class_counts[name] for name in classes], dtype=np.float64))
            # released only when the noisy count, less two noise standard deviations, still reaches
            # min_class_images: a class with no images passes about 2% of the time, not a third, and a
            # generator never releases a class it was not shown
            sd = count_mechanism.noise_multiplier
            self._withhold(per_class, withheld, classes, {
                c: (f"its noisy image count is {noisy[c]:.1f} (noise std {sd:g}), less than "
                    f"release.min_class_images={min_class} plus two standard deviations")
                for c in per_class if noisy[c] - 2 * sd < min_class})

        gen = build_generator(gen_cfg, config.data.resolution, seed=seed, device=self.device, classes=classes)
        started = time.perf_counter()

        def progress(epoch: int, total: int, row: dict[str, float]) -> None:
            if epoch % max(1, total // 5) == 0 or epoch == total:
                shown = " ".join(f"{k}={v:.3f}" for k, v in row.items() if k != "epoch")
                log.info("%s: generator epoch %d/%d %s", self.name, epoch, total, shown)

        report = gen.fit(train.images, conditions, privacy=plan, progress=progress)
        training_entry = ledger.append(
            self._training_entry(run_id, fingerprint, f"generator ({gen.family})", report.epochs, report.steps,
                                 report.privacy, **({"init": gen.init_info} if gen.init_info else {})), key
        )
        # a class the fit left out (its noisy target carried no signal: dp-merf) is not released; the
        # training entry above stays, since the budget was spent
        self._withhold(per_class, withheld, classes, {
            c: f"not fitted: {gen.unfitted_reasons[c]}" for c in per_class if c not in gen.fitted_classes})
        if noisy_decision:
            noisy = gen.released_class_counts()
            self._withhold(per_class, withheld, classes, {
                c: f"its noisy image count is {noisy[c]:.1f}, below release.min_class_images={min_class}"
                for c in per_class if noisy[c] < min_class})

        histogram = None
        if config.alignment.enabled:
            histogram = self._intensity_histogram(config, run_id, fingerprint, plan, statistic, seed)

        # the release gate, then the membership audit on what will actually be released
        sampling = {"images": 0, "seconds": 0.0}

        def timed_sample(n: int, c: int | np.ndarray, s: int) -> np.ndarray:
            t = time.perf_counter()
            out = gen.sample(n, c, seed=s)
            sampling["images"] += len(out)
            sampling["seconds"] += time.perf_counter() - t
            return out

        if config.gate.enabled:
            gate = release_gate(timed_sample, per_class, train.images, conditions, config.gate.quantile,
                                config.gate.max_rounds, seed)
            images, labels, gate_summary = gate.images, gate.labels, gate.summary()
        else:
            labels = np.concatenate([np.full(n, c, dtype=np.int64) for c, n in per_class.items()])
            images, gate_summary = timed_sample(len(labels), labels, seed + 1), {"enabled": False}
        if config.data.markers.release != "off":
            kept, check = check_release_markers(images, config.data.markers.release, config.data.markers.check_images,
                                                seed + 3)
            images, labels = images[kept], labels[kept]
            markers = {**(markers or {}), "release": check}
            if check["dropped"]:
                log.info("%s: %d synthetic image(s) with a burned-in marker left out of the release",
                         self.name, check["dropped"])
        if len(labels) == 0:
            raise DataError(f"{self.name}: every synthetic image was flagged by the marker check; nothing to release")
        images_u8, labels_u8 = to_uint8(images), labels.astype(np.uint8)
        audit = None
        if config.gate.membership_audit:
            audit = membership_audit(train.images, self.data.test.images, images_u8.astype(np.float32) / 255,
                                     seed=seed)
        mia = audit["auc"] if audit else None
        budget = self.state.budget
        release_entry = ledger.append(
            {
                "type": RELEASE,
                "run_id": run_id,
                "dataset_fingerprint": fingerprint,
                "content_hash": content_hash(images_u8, labels_u8),
                "image_digests_sha256": digests_hash(image_digests(images_u8)),
                "n_images": int(len(labels_u8)),
                "per_class": {classes[c]: int((labels_u8 == c).sum()) for c in per_class},
                "training_entry": training_entry["hash"],
                "private": plan is not None,
                "gate": gate_summary,
                "membership_auc": mia,
                "membership_audit": audit,
                "budget": {"epsilon": budget.epsilon, "delta": budget.delta},
                "spent": self._spent(config),
            },
            key,
        )
        self._write_local_outputs(gen, images, labels, conditions, config)
        meta = {
            "site": self.name,
            "run_id": run_id,
            "fedsynth_version": __version__,
            "generator": {"family": gen.family, **{k: v for k, v in report.to_dict().items() if k != "history"},
                          "sampled_images": sampling["images"], "sampling_seconds": sampling["seconds"],
                          "sampling_images_per_second": sampling["images"] / max(sampling["seconds"], 1e-9)},
            # exact counts are a statistic of the private images no accountant covers: not sent under DP
            "train_counts": counts if plan is None else None,
            "test_counts": self.data.test.class_counts() if plan is None else None,
            "label_set": list(classes),  # the release's labels index into it
            **({} if len(classes) == 2 or plan is not None else {"train_class_counts": class_counts}),
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
            # the marker step's counts describe the private training images: under DP only what it did
            "markers": ({**markers, "training": {"action": markers["training"]["action"],
                                                 "counts": "not sent under DP"}}
                        if plan is not None and markers and "training" in markers else markers),
            "membership_auc": mia,
            "membership_audit": audit,
            "seconds": time.perf_counter() - started,
            "intensity_histogram": histogram,
            "ledger": ledger.entries(),
        }
        return Release(site=self.name, images=images_u8, labels=labels_u8, meta=meta)

    def check_policy(self, config: RunConfig, releasing: bool) -> None:
        """Refuse, before any work, a request that the site's policy does not allow."""
        pol, name = self.policy, self.name
        if pol.require_dp and config.privacy is None:
            raise PolicyRefusal(f"{name}: this site trains only with differential privacy (policy.require_dp)")
        if pol.max_epsilon is not None and config.privacy is not None and config.privacy.epsilon > pol.max_epsilon:
            raise PolicyRefusal(f"{name}: the request asks for epsilon {config.privacy.epsilon:g}, more than this "
                                f"site's policy.max_epsilon={pol.max_epsilon:g}")
        if releasing and pol.require_gate and not config.gate.enabled:
            raise PolicyRefusal(f"{name}: this site releases only through the release gate (policy.require_gate)")
        if releasing and config.gate.enabled and config.gate.quantile < pol.min_gate_quantile:
            raise PolicyRefusal(f"{name}: gate quantile {config.gate.quantile:g} is looser than this site's "
                                f"policy.min_gate_quantile={pol.min_gate_quantile:g}")
        if releasing and config.alignment.enabled and not pol.allow_alignment:
            raise PolicyRefusal(f"{name}: this site does not release intensity histograms (policy.allow_alignment)")
        if releasing and config.alignment.enabled and config.privacy is None and not pol.allow_alignment_without_dp:
            raise PolicyRefusal(f"{name}: this site releases an intensity histogram only under DP "
                                "(policy.allow_alignment_without_dp)")

    def checked_edges(self, edges: np.ndarray) -> np.ndarray:
        """The classifier's score bin edges, if the site's policy lets that many bins leave it."""
        edges = np.asarray(edges, dtype=np.float64)
        if edges.ndim != 1 or len(edges) < 3 or not np.all(np.diff(edges) > 0):
            raise PolicyRefusal(f"{self.name}: the classifier's score bin edges are malformed")
        if len(edges) - 1 > self.policy.max_score_bins:
            raise PolicyRefusal(f"{self.name}: {len(edges) - 1} score bins requested; this site's "
                                f"policy.max_score_bins is {self.policy.max_score_bins}")
        return edges

    def score_histogram(self, labels: np.ndarray, probs: np.ndarray, edges: np.ndarray) -> ScoreHistogram:
        """A score histogram as the site's policy lets it leave: bounded bins, none holding fewer
        than ``policy.min_bin_count`` images."""
        return ScoreHistogram.from_scores(labels, probs, self.checked_edges(edges)).coarsened(self.policy.min_bin_count)

    def _plan(self, config: RunConfig, make_plan: Callable[[Any, int], DPPlan],
              extra: tuple[Mechanism, ...] = (), n: int | None = None) -> DPPlan | None:
        """The DP plan ``make_plan(privacy, n)`` fixes for the n images the training will see (the
        site's training split unless given: a generator's after data.markers.training), or None
        without DP, after the budget check (which also counts ``extra`` mechanisms the same request
        will run)."""
        entries = self.state.checked_entries()  # a damaged or rolled-back ledger stops the site here
        if config.privacy is None:
            return None
        plan = make_plan(config.privacy, len(self.data.train) if n is None else n)
        check: BudgetCheck = check_budget(self.name, entries, plan, self.state.budget, extra)
        log.info("%s: DP plan noise=%.3f q=%.4f steps=%d; budget spent %.3g -> %.3g of %g", self.name,
                 plan.noise_multiplier, plan.sample_rate, plan.steps, check.spent_before, check.spent_after,
                 self.state.budget.epsilon)
        return plan

    def _withhold(self, per_class: dict[int, int], withheld: dict[str, str], classes: Sequence[str],
                  reasons: dict[int, str]) -> None:
        """Take the classes of ``reasons`` out of the release, each with its reason (logged), and
        refuse the release when none is left."""
        for c, reason in reasons.items():
            del per_class[c]
            withheld[classes[c]] = reason
            log.warning("%s: class %s withheld: %s", self.name, classes[c], reason)
        if not per_class:
            why = "; ".join(f"{k}: {v}" for k, v in withheld.items())
            raise DataError(f"{self.name}: no class left to release ({why})")

    @staticmethod
    def _count_noise(counts: np.ndarray, std: float) -> np.ndarray:
        """The counts plus Gaussian noise from OS entropy (a seam the tests fix the draw through)."""
        return add_gaussian_noise(counts, std)

    def _noisy_class_counts(self, run_id: str, fingerprint: str, plan: DPPlan, mechanism: Mechanism,
                            counts: np.ndarray) -> np.ndarray:
        """The class counts with the mechanism's Gaussian noise (OS entropy), its ledger entry
        written before anything is decided on them: one image moves one count by 1, so the
        sensitivity is 1."""
        noisy = self._count_noise(counts, mechanism.noise_multiplier)
        self.state.ledger().append({
            "type": DP_STATISTIC,
            "run_id": run_id,
            "dataset_fingerprint": fingerprint,
            "mechanism": {"name": "gaussian (class counts, sensitivity 1)", **mechanism.to_dict(),
                          "delta": plan.delta, "accountant": plan.accountant, "max_grad_norm": None,
                          "secure_rng": False, "noise_source": "os-entropy"},
            "epsilon": epsilon([mechanism], plan.delta, plan.accountant),
            "details": {"statistic": "class counts (release.min_class_images)", "classes": len(counts)},
        }, self.state.signing_key())
        return noisy

    def _intensity_histogram(self, config: RunConfig, run_id: str, fingerprint: str, plan: DPPlan | None,
                             statistic: Mechanism | None, seed: int) -> list:
        """The site's intensity histogram for alignment (one per class with ``by_class``):
        Gaussian noise and a ledger entry under DP. Either way one image moves one unit of
        mass, so the sensitivity is 1."""
        train = self.data.train
        hist = (class_intensity_histograms(train.images, train.labels, config.alignment.bins)
                if config.alignment.by_class else intensity_histogram(train.images, config.alignment.bins))
        if statistic is None:
            return hist.tolist()
        noisy = add_gaussian_noise(hist, statistic.noise_multiplier)  # OS entropy, never the run seed
        delta = plan.delta if plan is not None else default_delta(len(self.data.train))
        self.state.ledger().append({
            "type": DP_STATISTIC,
            "run_id": run_id,
            "dataset_fingerprint": fingerprint,
            "mechanism": {"name": "gaussian (sum of per-image intensity histograms, sensitivity 1)",
                          **statistic.to_dict(), "delta": delta, "accountant": config.privacy.accountant,
                          "max_grad_norm": None, "secure_rng": False, "noise_source": "os-entropy"},
            "epsilon": epsilon([statistic], delta, config.privacy.accountant),
            "details": {"statistic": "intensity histogram" + (" per class" if config.alignment.by_class else ""),
                        "bins": config.alignment.bins},
        }, self.state.signing_key())
        return noisy.tolist()

    def _training_entry(self, run_id: str, fingerprint: str, model: str, epochs: int, steps: int,
                        privacy: dict | None, **details) -> dict:
        body = {
            "run_id": run_id,
            "dataset_fingerprint": fingerprint,
            "details": {"model": model, "epochs": epochs, "steps": steps, "n_train": len(self.data.train),
                        **details},
        }
        if privacy is None:
            return {"type": TRAINING, **body, "mechanism": None, "epsilon": None}
        return {"type": DP_TRAINING, **body, **privacy}

    def _spent(self, config: RunConfig) -> dict:
        budget = self.state.budget
        accountant = config.privacy.accountant if config.privacy else "rdp"
        return {"epsilon": spent_epsilon(self.state.ledger().entries(), budget.delta, accountant),
                "delta": budget.delta, "accountant": accountant}

    # ---- federated rounds ------------------------------------------------------------------
    def _generator_training_set(self, config: RunConfig) -> tuple[ImageSet, dict[str, Any] | None]:
        """The real training images a generator is trained on (``data.markers.training``) and a
        counts-only summary of what the marker step did (None when it kept everything). The
        before/after grid of flagged images stays in the site's own output folder."""
        cfg = config.data.markers
        if cfg.training in self._cleaned:  # federated rounds ask every round: detect and paint once
            return self._cleaned[cfg.training]
        train, report = clean_training_set(self.data.train, cfg.training)
        if report is None:
            return train, None
        summary = {"training": {"action": cfg.training, **report.summary(), "kept": len(train)}}
        log.info("%s: burned-in markers in %d of %d training images (%s)", self.name, report.images_touched,
                 report.n_images, cfg.training)
        if cfg.grid and self.output_dir is not None and report.images_touched:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            image_grid(report.before_after(self.data.train.images), self.output_dir / "markers_before_after.png",
                       f"{self.name}: burned-in markers found and removed (real images: stay at the site)",
                       phantom=self.data.train.phantom)
        self._cleaned[cfg.training] = (train, summary)
        return train, summary

    def train_round(self, request: RoundRequest) -> ModelUpdate:
        """One round of federated averaging: start from the global weights, train for
        ``federation.local_epochs`` (DP-SGD when asked), sign the update."""
        with self.state.exclusive():
            return self._train_round(request)

    def _train_round(self, request: RoundRequest) -> ModelUpdate:
        config = request.config
        train = self.data.train
        if len(train) == 0:
            raise DataError(f"{self.name}: no training images")
        self.check_policy(config, releasing=False)
        fingerprint = train.fingerprint()
        if request.stage == GENERATOR_ROUND:  # a classifier learns from the images as they are
            train, _ = self._generator_training_set(config)
            if len(train) == 0:
                raise DataError(f"{self.name}: no training images left after data.markers.training=drop")
        ledger, key = self.state.ledger(), self.state.signing_key()
        epochs = config.federation.local_epochs
        seed = site_seed(config.run.seed, self.name) + 7919 * request.round
        rounds = config.federation.rounds
        if request.stage == GENERATOR_ROUND:
            family = FAMILIES[config.generator.family]
            # the global weights replace any warm start: the server began the rounds from it
            gen_cfg = config.generator.model_copy(update={"init": ""} if family.statistics_only
                                                  else {"epochs": epochs, "init": ""})
            plan = self._plan(config, lambda privacy, n: family.plan_privacy(privacy, n, gen_cfg, epochs,
                                                                             epochs * rounds), n=len(train))
            model = build_generator(gen_cfg, config.data.resolution, seed=seed, device=self.device,
                                    classes=config.data.label_set)
            model.load_training_state(request.weights)
            conditions = class_indices(train, config.data.label_set)
            if family.statistics_only:  # the site sends its (noisy) statistic; the server fits the generator
                privacy = model.release_statistic(train.images, conditions, plan)
                steps, name = 1, f"statistic ({model.family})"
            else:
                report = model.fit(train.images, conditions, privacy=plan)
                privacy, steps, name = report.privacy, report.steps, f"generator ({model.family})"
            weights = model.training_state()
        elif request.stage == CLASSIFIER_ROUND:
            plan = self._plan(config, lambda privacy, n: plan_training(privacy, n, config.classifier.batch_size,
                                                                       epochs, epochs * rounds))
            clf = build_trainable(config.classifier_arch(), config.data.resolution, plan is not None,
                                  width=config.classifier.width)
            load_exchangeable(clf, request.weights)
            result = train_local(clf, train.images, train.labels, config.classifier, epochs=epochs, seed=seed,
                                 device=self.device, privacy=plan)
            weights = exchangeable(clf.state_dict())
            privacy, steps, name = result["privacy"], result["steps"], f"classifier ({config.classifier_arch()})"
        else:
            raise ValueError(f"unknown round stage {request.stage!r}")
        training = ledger.append(
            self._training_entry(request.run_id, fingerprint, name, epochs, steps, privacy, round=request.round), key
        )
        entry = ledger.append(
            {
                "type": RELEASE,
                "kind": "model-update",
                "run_id": request.run_id,
                "round": request.round,
                "dataset_fingerprint": fingerprint,
                "content_hash": arrays_hash(weights),
                "n_examples": len(train),
                "training_entry": training["hash"],
                "private": privacy is not None,
                "budget": {"epsilon": self.state.budget.epsilon, "delta": self.state.budget.delta},
                "spent": self._spent(config),
            },
            key,
        )
        meta = {
            "site": self.name,
            "round": request.round,
            "private": privacy is not None,
            "privacy": {"epsilon": training.get("epsilon"), "delta": plan.delta if plan else None,
                        "spent_epsilon": entry["spent"]["epsilon"], "budget": entry["budget"]},
            "phantom": bool(train.phantom),
            "ledger": ledger.entries(),
        }
        return ModelUpdate(self.name, weights, len(train), meta)

    def _write_local_outputs(self, gen, images: np.ndarray, labels: np.ndarray, conditions: np.ndarray,
                             config: RunConfig) -> None:
        """The generator and real-vs-synthetic grids per class, in the site's own folder
        (``conditions``: the class of each training image the generator was fitted on)."""
        if self.output_dir is None:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        gen.save(self.output_dir / "generator.safetensors")
        k = config.evaluation.grid_images
        rng = np.random.default_rng(0)
        train, _ = self._generator_training_set(config)
        for c, name in enumerate(config.data.label_set):
            real = train.images[conditions == c]
            fake = images[labels == c]
            if len(real) == 0 or len(fake) == 0:
                continue
            n_real = len(real)
            real = real[rng.choice(len(real), min(k, len(real)), replace=False)]
            image_grid(
                [(f"real ({n_real} at the site)", real), ("synthetic", fake[:k])],
                self.output_dir / f"real_vs_synthetic_{name}.png",
                f"{self.name}, {name}: real (stays at the site) vs synthetic (released)",
                phantom=train.phantom,
            )

    # ---- evaluation ------------------------------------------------------------------------
    def evaluate(self, classifier: Classifier, config: RunConfig, request: EvaluateRequest | None = None) -> EvalResult:
        """The server's classifier on the real test split, metered and bound by the site's policy
        (:mod:`fedsynth.client.evaluation`); with a verifiable synthetic sample in ``request``,
        also fidelity and the site's own utility baselines."""
        with self.state.exclusive():  # the metering count and the ledger entry as one step
            return evaluate_at_site(self, classifier, config, request)

    def calibrate(self, classifier: Classifier, config: RunConfig, request: EvaluateRequest) -> CalibrationResult:
        """Score histograms of the classifier on the site's calibration split, once per run."""
        with self.state.exclusive():
            return calibrate_at_site(self, classifier, config, request)
