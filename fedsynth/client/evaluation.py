"""A site's evaluation of the server's classifier: metered, bound by the site's policy, recorded.

The server chooses the classifier, its threshold and the synthetic sample a site scores
against its real images, so an unguarded evaluation would be a free query channel into
them. What an evaluation returns, and only under the site's policy (``SitePolicy``):

* **always** (unless ``evaluation_epsilon`` is set): the classifier's figures on the site's
  real test split (AUROC/AUPR with CIs, the confusion counts at the classifier's threshold)
  and class-wise histograms of its scores, merged until every occupied bin holds at least
  ``min_bin_count`` test images;
* with ``evaluation_epsilon``: the histograms and confusion counts with Gaussian noise
  (sensitivity sqrt(2): one test image moves one histogram bin and one confusion count by 1),
  every figure computed from those noisy counts, composed into the site's budget; nothing else;
* **fidelity and utility** (Fréchet distance, PRDC in the site's own encoder space, the site's
  own baselines) only against a sample whose every image is in a release the site can verify
  as signed by a consortium member for this run (``provenance``: the release entry and its
  per-image digests), never against arbitrary server-supplied images, unless the policy says
  ``evaluate_unsigned_synthetic``.

At most ``max_evaluations_per_run`` evaluations per run; each one is an entry in the site's
signed ledger (``evaluation``, or ``dp-statistic`` under noise) naming the classifier's hash and
what it returned.
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsynth.classifier.metrics import ScoreHistogram, evaluate_scores, pooled_metrics, uniform_edges
from fedsynth.classifier.multiclass import class_histograms, confusion_matrix
from fedsynth.classifier.temperature import calibration_edges
from fedsynth.classifier.train import Classifier
from fedsynth.config import PrivacySection, RunConfig
from fedsynth.data.dataset import from_uint8
from fedsynth.data.labels import class_indices
from fedsynth.errors import DataError, public_reason
from fedsynth.evaluation.alignment import match_by_class, match_histograms
from fedsynth.evaluation.site_evaluation import site_extras
from fedsynth.privacy.accounting import default_delta
from fedsynth.privacy.dp import GaussianStatistic, check_budget, plan_statistic
from fedsynth.privacy.keys import load_public_key
from fedsynth.privacy.keys import verify as verify_signature
from fedsynth.privacy.ledger import DP_STATISTIC, EVALUATION, RELEASE, entry_hash
from fedsynth.privacy.release import digests_hash, image_digests
from fedsynth.protocol import CalibrationResult, EvalResult, EvaluateRequest

if TYPE_CHECKING:
    from fedsynth.client.site import Site

log = logging.getLogger("fedsynth.site")

EVALUATION_STATISTIC = "evaluation counts (score histograms and confusion counts of the real test split)"
CALIBRATION_STATISTIC = "calibration counts (score histograms of the held-out calibration split)"
EVALUATION_SENSITIVITY = math.sqrt(2.0)


class EvaluationRefused(DataError):
    """The request asks for an evaluation the site's policy does not allow."""


def classifier_hash(classifier: Classifier) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(classifier.state_dict().items()):
        h.update(name.encode() + b"\0" + tensor.numpy().tobytes())
    return h.hexdigest()


def _queries_in_run(entries: list[dict], run_id: str, statistic: str) -> int:
    """Evaluations (or calibrations) this site already answered in ``run_id``, by its ledger."""
    def kind(e: dict) -> str:
        return (e.get("details") or {}).get("statistic") or EVALUATION_STATISTIC

    return sum(1 for e in entries if e.get("run_id") == run_id and e.get("type") in (EVALUATION, DP_STATISTIC)
               and kind(e) == statistic)


def sample_problem(site: Site, request: EvaluateRequest) -> str | None:
    """Why the synthetic sample cannot be traced to releases the site can verify, or None."""
    names = request.origin_names
    if not isinstance(names, list) or request.synthetic_origin is None:
        return "the sample names no origins"
    digests = image_digests(request.synthetic_images)
    for i, name in enumerate(names):
        rows = np.flatnonzero(request.synthetic_origin == i)
        if not len(rows):
            continue
        prov = request.provenance.get(name) if isinstance(request.provenance, dict) else None
        key_path = site.consortium_keys.get(name)
        if not isinstance(prov, dict) or key_path is None:
            return f"origin {name!r}: no signed release this site can verify"
        entry, listed = prov.get("entry"), prov.get("digests")
        if not isinstance(entry, dict) or not isinstance(listed, list) or not all(isinstance(d, str) for d in listed):
            return f"origin {name!r}: malformed provenance"
        if entry.get("hash") != entry_hash(entry) or not verify_signature(
                load_public_key(key_path), str(entry.get("hash", "")).encode(), str(entry.get("signature", ""))):
            return f"origin {name!r}: the release entry's signature does not verify"
        if entry.get("type") != RELEASE or entry.get("site") != name or entry.get("run_id") != request.run_id:
            return f"origin {name!r}: the entry is not {name}'s release for this run"
        if entry.get("image_digests_sha256") != digests_hash(listed):
            return f"origin {name!r}: the image list is not the one the release signed"
        known = set(listed)
        if any(digests[r] not in known for r in rows):
            return f"origin {name!r}: an image of the sample is not in that release"
    return None


def _aligned(images: np.ndarray, labels: np.ndarray, mapping: Any) -> np.ndarray:
    """The intensity mapping the server's classifier trained through, applied to the sample."""
    if not isinstance(mapping, dict):
        raise ValueError("the alignment mapping must be an object")
    if mapping.get("by_class"):
        cdfs = {int(c): np.asarray(v, dtype=np.float64) for c, v in dict(mapping["cdfs"]).items()}
        return match_by_class(images, labels, cdfs)
    return match_histograms(images, np.asarray(mapping["cdf"], dtype=np.float64))


def _noisy_counts(site: Site, config: RunConfig, hist: ScoreHistogram, confusion: tuple[int, int, int, int],
                  run_id: str) -> tuple[ScoreHistogram, tuple[int, int, int, int], dict]:
    """The histograms and confusion counts with Gaussian noise, rounded and made consistent
    (post-processing); the mechanism's plan is checked against the budget first."""
    pol = site.policy
    n = len(site.data.test)
    privacy = PrivacySection(epsilon=pol.evaluation_epsilon, delta=default_delta(n),
                             accountant=config.privacy.accountant if config.privacy else "rdp")
    plan = plan_statistic(privacy, n, sensitivity=EVALUATION_SENSITIVITY)
    check_budget(site.name, site.state.checked_entries(), plan, site.state.budget, on_training_data=False)
    mechanism = GaussianStatistic(plan, "gaussian (score histograms and confusion counts, sensitivity sqrt 2)")
    import torch

    vector = np.concatenate([hist.positive, hist.negative, np.asarray(confusion)]).astype(np.float64)
    noisy = np.clip(np.rint(mechanism.noisy(torch.from_numpy(vector)).numpy()), 0, None).astype(np.int64)
    b = len(hist.positive)
    pos, neg = noisy[:b], noisy[b:2 * b]
    tp, fp = int(min(noisy[-4], pos.sum())), int(min(noisy[-3], neg.sum()))
    return ScoreHistogram(pos, neg), (tp, fp, int(neg.sum()) - fp, int(pos.sum()) - tp), mechanism.result()


def evaluate_at_site(site: Site, classifier: Classifier, config: RunConfig,
                     request: EvaluateRequest | None = None) -> EvalResult:
    """The site's evaluation reply (see the module's docstring for what it may hold)."""
    test = site.data.test
    if len(test) == 0:
        raise DataError(f"{site.name}: no local test images to evaluate on")
    if classifier.resolution != test.resolution:
        raise DataError(f"{site.name}: classifier expects {classifier.resolution} px, test images are "
                        f"{test.resolution} px")
    pol = site.policy
    run_id = request.run_id if request is not None else "local"
    entries = site.state.checked_entries()
    if _queries_in_run(entries, run_id, EVALUATION_STATISTIC) >= pol.max_evaluations_per_run:
        raise EvaluationRefused(f"{site.name}: this run has had its {pol.max_evaluations_per_run} evaluation(s) "
                                "(policy.max_evaluations_per_run)")
    probs = classifier.predict_proba(test.images)
    ev = config.evaluation
    seed = int.from_bytes(hashlib.sha256(f"{config.run.seed}:{site.name}".encode()).digest()[:4], "little")
    edges = classifier.score_edges(ev.histogram_bins)
    returned = ["metrics", "score histogram"]
    extra: dict[str, Any] = {}
    hists: dict[str, ScoreHistogram] = {}
    dp = None
    if pol.evaluation_epsilon is not None:
        raw = ScoreHistogram.from_scores(test.labels, probs, site.checked_edges(edges))
        exact = evaluate_scores(test.labels, probs, classifier.threshold, n_boot=0)
        histogram, confusion, dp = _noisy_counts(site, config, raw, (exact.tp, exact.fp, exact.tn, exact.fn), run_id)
        metrics = pooled_metrics([histogram], [confusion], classifier.threshold, n_boot=ev.bootstrap,
                                 level=ev.ci_level, seed=seed)
        returned = ["noisy score histogram", "noisy confusion counts"]
        if request is not None and request.synthetic_images is not None:
            extra = {"error": "policy: under evaluation_epsilon the site returns only noisy counts"}
    else:
        metrics = evaluate_scores(test.labels, probs, classifier.threshold, n_boot=ev.bootstrap, level=ev.ci_level,
                                  seed=seed)
        histogram = site.score_histogram(test.labels, probs, edges)
        if request is not None and request.synthetic_images is not None and len(request.synthetic_images):
            extra, hists = _extras(site, config, request, seed)
            returned += [k for k in ("fidelity", "utility") if k in extra]
    subtype, class_hists = {}, []
    if len(classifier.classes) > 2:
        if pol.evaluation_epsilon is not None:
            log.info("%s: no subtype figures under evaluation_epsilon (the site returns only noisy binary counts)",
                     site.name)
        elif classifier.classes != tuple(config.data.label_set):
            log.warning("%s: the classifier predicts %s, not the run's label set; no subtype figures", site.name,
                        list(classifier.classes))
        else:
            subtype, class_hists = _subtype_figures(site, classifier, config)
            returned.append("subtype confusion matrix and class histograms")
    body = {"run_id": run_id, "classifier_sha256": classifier_hash(classifier), "n_test": len(test),
            "dataset_fingerprint": test.fingerprint(),
            "details": {"returned": returned, "statistic": EVALUATION_STATISTIC}}
    if dp is None:
        site.state.ledger().append({"type": EVALUATION, **body, "mechanism": None, "epsilon": None},
                                   site.state.signing_key())
    else:
        site.state.ledger().append({"type": DP_STATISTIC, **body, **dp}, site.state.signing_key())
    return EvalResult(site=site.name, metrics=metrics.to_dict(), histogram=histogram,
                      meta={"phantom": bool(test.phantom), "n_test": len(test)}, extra=extra, extra_histograms=hists,
                      subtype=subtype, class_histograms=class_hists)


def _subtype_figures(site: Site, classifier: Classifier, config: RunConfig) -> tuple[dict, list[ScoreHistogram]]:
    """The confusion matrix of the test split at the most probable class and the one-vs-rest
    histogram of every class's probability, merged to the policy's minimum bin count."""
    test = site.data.test
    truth = class_indices(test, config.data.label_set)
    probs = classifier.predict_class_proba(test.images)
    edges = uniform_edges(config.evaluation.histogram_bins)
    hists = [h.coarsened(site.policy.min_bin_count) for h in class_histograms(truth, probs, edges)]
    return {"classes": list(classifier.classes), "confusion": confusion_matrix(truth, probs).tolist()}, hists


def calibrate_at_site(site: Site, classifier: Classifier, config: RunConfig,
                      request: EvaluateRequest) -> CalibrationResult:
    """Class-wise histograms of the classifier's logits on the site's calibration split (patients it
    never trained on and never tests on), in the fixed calibration bins: with Gaussian noise and a
    budgeted ledger entry when the run is private or the site's policy asks for noise, merged to
    ``min_bin_count`` otherwise. Once per run."""
    cal = site.data.calibration
    if cal is None or len(cal) == 0:
        raise DataError(f"{site.name}: no calibration split (the run's calibration.enabled keeps one)")
    if classifier.resolution != cal.resolution:
        raise DataError(f"{site.name}: classifier expects {classifier.resolution} px, images are {cal.resolution} px")
    entries = site.state.checked_entries()
    if _queries_in_run(entries, request.run_id, CALIBRATION_STATISTIC) >= 1:
        raise EvaluationRefused(f"{site.name}: this run's classifier was calibrated here already (once per run)")
    probs = classifier.predict_proba(cal.images)
    raw = ScoreHistogram.from_scores(cal.labels, probs, calibration_edges())
    body = {"run_id": request.run_id, "classifier_sha256": classifier_hash(classifier), "n_calibration": len(cal),
            "dataset_fingerprint": cal.fingerprint(),
            "details": {"returned": ["calibration histogram"], "statistic": CALIBRATION_STATISTIC}}
    eps = [e for e in (config.calibration.epsilon if config.privacy is not None else None,
                       site.policy.evaluation_epsilon) if e is not None]
    if eps:
        privacy = PrivacySection(epsilon=min(eps), delta=default_delta(len(cal)),
                                 accountant=config.privacy.accountant if config.privacy else "rdp")
        plan = plan_statistic(privacy, len(cal), sensitivity=1.0)  # one image: one count of one bin
        check_budget(site.name, entries, plan, site.state.budget, on_training_data=False)
        mechanism = GaussianStatistic(plan, "gaussian (calibration score histograms, sensitivity 1)")
        import torch

        vector = np.concatenate([raw.positive, raw.negative]).astype(np.float64)
        noisy = np.clip(np.rint(mechanism.noisy(torch.from_numpy(vector)).numpy()), 0, None).astype(np.int64)
        hist = ScoreHistogram(noisy[:len(raw.positive)], noisy[len(raw.positive):])
        site.state.ledger().append({"type": DP_STATISTIC, **body, **mechanism.result()}, site.state.signing_key())
        noisy_flag = True
    else:
        hist = raw.coarsened(site.policy.min_bin_count)
        site.state.ledger().append({"type": EVALUATION, **body, "mechanism": None, "epsilon": None},
                                   site.state.signing_key())
        noisy_flag = False
    return CalibrationResult(site.name, hist, {"n": len(cal), "noisy": noisy_flag})


def _extras(site: Site, config: RunConfig, request: EvaluateRequest, seed: int) -> tuple[dict, dict]:
    """Fidelity and the site's own baselines on the sample, when the policy allows them on it."""
    try:
        problem = sample_problem(site, request)
    except Exception as err:  # noqa: BLE001 - a malformed provenance refuses the extras, not the evaluation
        problem = f"the provenance could not be checked: {type(err).__name__}"
    if problem and not site.policy.evaluate_unsigned_synthetic:
        log.warning("%s: no fidelity or utility on this sample: %s", site.name, problem)
        return {"error": f"policy: {problem}"}, {}
    labels = np.asarray(request.synthetic_labels).astype(np.int64)
    synthetic = from_uint8(request.synthetic_images)
    own = None
    if site.name in request.origin_names:
        own = request.synthetic_origin == request.origin_names.index(site.name)
    try:
        if request.alignment is not None:
            synthetic = _aligned(synthetic, labels, request.alignment)
        return site_extras(site.data, synthetic, labels, own, config, seed, site.device, site.score_histogram)
    except Exception as err:  # the extras must not cost the run its main evaluation
        log.exception("%s: fidelity/utility evaluation failed", site.name)
        return {"error": public_reason(err)}, {}


__all__ = ["EvaluationRefused", "calibrate_at_site", "evaluate_at_site", "sample_problem"]
