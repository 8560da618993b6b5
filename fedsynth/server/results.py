"""The end every mode shares: train the classifier on the pool, have every site evaluate it
on its real test split, pool the figures and write the run's outputs.

Pooled figures come from the class-wise score histograms each site returns (never a
per-image score); ``metrics.json`` is a :class:`~fedsynth.metrics_schema.RunMetrics`,
written through :mod:`fedsynth.rundir`, and ``report.html`` is built from the files.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from fedsynth import __version__
from fedsynth.classifier.metrics import BinaryMetrics, pooled_metrics, uniform_edges
from fedsynth.classifier.multiclass import pooled_class_metrics
from fedsynth.classifier.temperature import (
    calibration_edges,
    expected_calibration_error,
    fit_temperature,
    threshold_after,
)
from fedsynth.classifier.train import Classifier, train_classifier
from fedsynth.config import BINARY_LABELS, RunConfig
from fedsynth.data.labels import binary_labels
from fedsynth.evaluation.report import write_report
from fedsynth.metrics_schema import SCHEMA_VERSION, RunMetrics
from fedsynth.progress import ProgressFactory
from fedsynth.protocol import EvalResult, EvaluateRequest
from fedsynth.rundir import CLASSIFIER_FILE, RunDir
from fedsynth.server.checks import check_eval_result, require_sites
from fedsynth.server.record import RunRecord
from fedsynth.server.transport import Transport

log = logging.getLogger("fedsynth.server")

PHANTOM_WARNING = (
    "PHANTOM DATA: these results come from procedurally generated phantoms, not X-rays; "
    "they show the pipeline works, not that the classifier does."
)
NOT_PRIVATE_WARNING = "NOT PRIVATE: no site trained with differential privacy in this run."
PARTLY_PRIVATE_WARNING = "NOT PRIVATE at every site: these releases were trained without DP: {sites}."
BASELINES = ("trtr", "real_plus_synthetic")  # the sites' own classifiers, beside the server's ("main")


def train_on_pool(config: RunConfig, images: np.ndarray, labels: np.ndarray, kind: str, phantom: bool,
                  sites: list[str], run_dir: RunDir, record: RunRecord, progress: ProgressFactory) -> Classifier:
    """Train and save the classifier on pooled images (synthetic, or real in centralized-real) whose
    ``labels`` are class indices of ``data.label_set``: the binary task learns pneumonia (any class
    but the first), the subtype task every class."""
    log.info("training the classifier on %d pooled %s images", len(labels), kind)
    subtype = config.classifier.task == "subtype"
    classes = config.data.label_set if subtype else BINARY_LABELS
    targets = np.asarray(labels, dtype=np.int64) if subtype else binary_labels(labels)
    with record.timed("classifier"), progress(f"classifier on pooled {kind} images",
                                              config.classifier.epochs) as on_epoch:
        clf = train_classifier(
            images,
            targets,
            config.classifier,
            arch=config.classifier_arch(),
            resolution=config.data.resolution,
            seed=config.run.seed,
            device=config.run.device,
            progress=on_epoch,
            trained_on=f"{kind} (phantom)" if phantom else kind,
            histogram_bins=config.evaluation.histogram_bins,
            classes=classes,
        )
        clf.meta["sites"] = sites
        clf.meta["phantom"] = phantom
        clf.save(run_dir.file(CLASSIFIER_FILE))
    return clf


def evaluate_and_report(
    config: RunConfig,
    transport: Transport,
    run_dir: RunDir,
    clf: Classifier,
    record: RunRecord,
    synthetic: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    registry: dict | None = None,
    provenance: dict[str, dict] | None = None,
    alignment: dict | None = None,
) -> RunMetrics:
    """Every site evaluates ``clf`` on its real test split (and, given the pooled
    ``synthetic`` images by origin, measures fidelity and its own utility baselines);
    pool, write metrics.json, the score histograms behind the curves and the report. Every
    reply is checked as hostile; with ``registry``, only registered sites may evaluate."""
    if config.calibration.enabled:
        with record.timed("calibrate"):
            record.extra["calibration"] = calibrate_classifier(config, transport, run_dir, clf, record, registry)
    t2 = time.perf_counter()
    request = EvaluateRequest(run_dir.run_id, config, clf.header(), clf.state_dict(),
                              provenance=dict(provenance or {}), alignment=alignment)
    if synthetic and (config.evaluation.fidelity or config.evaluation.site_baselines):
        request.origin_names = sorted(synthetic)
        request.synthetic_images, request.synthetic_labels, request.synthetic_origin = _synthetic_sample(
            synthetic, request.origin_names, config.evaluation.fidelity_samples, config.run.seed)
    results = []
    seen: set[str] = set()
    bins = config.evaluation.histogram_bins
    n_bins = len(clf.score_edges(bins)) - 1
    classes = clf.classes if len(clf.classes) > 2 else None
    for r in sorted(transport.evaluate(request, record), key=lambda r: str(r.site)):
        try:
            problem = check_eval_result(r, n_bins, bins, classes)
        except Exception as err:  # noqa: BLE001 - whatever a reply holds, it costs only its own site
            problem = f"the evaluation could not be checked: {type(err).__name__}: {err}"
        if problem is None and registry is not None and r.site not in registry:
            problem = f"unknown site {r.site!r}: no public key is registered for it"
        if problem is None and r.site in seen:
            problem = "a second evaluation from the same site"
        if problem:
            log.warning("evaluation from %s rejected: %s", r.site, problem)
            record.fail(str(r.site), "evaluation-check", problem)
        else:
            results.append(r)
            seen.add(r.site)
    require_sites(len(results), config, "an evaluation", record.failures)
    record.timings["evaluate_s"] = time.perf_counter() - t2
    pooled = _pool(results, lambda r: (r.histogram, r.metrics), clf.threshold, config)
    if classes is not None:
        record.extra["subtype"] = _pool_subtype(results, classes, config)
    if "calibration" in record.extra and results:  # on the test splits: the classifier as trained and as calibrated
        t, edges = float(clf.meta.get("temperature", 1.0)), clf.score_edges(bins)
        hists = [r.histogram for r in results]
        record.extra["calibration"].update(test_ece_before=expected_calibration_error(hists, edges, rescale=t),
                                           test_ece_after=expected_calibration_error(hists, edges))
    record.mark("total")
    metrics = _metrics_document(config, run_dir, record, results, pooled, clf)
    run_dir.write_histograms(_histograms(results, clf, bins))
    run_dir.write_metrics(metrics)
    write_report(run_dir.path)  # report.html; a part it cannot build is logged and noted on the page
    return metrics


def _pool_subtype(results: list[EvalResult], classes: tuple[str, ...], config: RunConfig) -> dict[str, Any] | None:
    """The subtype task's figures over the sites that returned them (None when none did)."""
    with_figures = [r for r in results if r.subtype]
    if not with_figures:
        log.warning("no site returned subtype figures")
        return None
    ev = config.evaluation
    out = pooled_class_metrics(classes, [r.class_histograms for r in with_figures],
                               [np.asarray(r.subtype["confusion"], dtype=np.int64) for r in with_figures],
                               n_boot=ev.bootstrap, level=ev.ci_level, seed=config.run.seed)
    out["sites"] = {r.site: r.subtype["confusion"] for r in with_figures}
    macro = out["macro_auroc"]
    log.info("subtype task on %d real test images: accuracy %.3f, macro AUROC %s", out["n"], out["accuracy"] or 0.0,
             "n/a" if macro is None else f"{macro:.3f}")
    return out


MAX_CALIBRATION_COUNT = 10**6  # per bin: far above any site's calibration split


def calibrate_classifier(config: RunConfig, transport: Transport, run_dir: RunDir, clf: Classifier,
                         record: RunRecord, registry: dict | None) -> dict[str, Any]:
    """Ask every site for its calibration histograms, fit a temperature (and the threshold) on the
    pooled ones, and calibrate ``clf`` in place (saved again); returns what metrics.json records.
    A site whose reply is unusable is dropped from the calibration with the reason."""
    request = EvaluateRequest(run_dir.run_id, config, clf.header(), clf.state_dict())
    edges = calibration_edges()
    hists, sites, noisy = [], [], False
    for r in sorted(transport.calibrate(request, record), key=lambda r: str(r.site)):
        h = r.histogram
        problem = None
        if registry is not None and r.site not in registry:
            problem = f"unknown site {r.site!r}: no public key is registered for it"
        elif r.site in sites:
            problem = "a second calibration from the same site"
        elif len(h.positive) != len(edges) - 1:
            problem = f"calibration histogram has {len(h.positive)} bins, expected {len(edges) - 1}"
        elif max(h.positive.max(initial=0), h.negative.max(initial=0)) > MAX_CALIBRATION_COUNT:
            problem = "calibration counts out of range"
        if problem:
            record.fail(str(r.site), "calibration-check", problem)
            continue
        hists.append(h)
        sites.append(r.site)
        noisy = noisy or bool(r.meta.get("noisy")) if isinstance(r.meta, dict) else noisy
    if not hists:
        return {"applied": False, "reason": "no site returned a usable calibration histogram"}
    before = clf.threshold
    temperature = fit_temperature(hists, edges)
    clf.meta["temperature"] = temperature
    if config.calibration.refit_threshold:
        clf.threshold = threshold_after(hists, edges, temperature, config.classifier.threshold_rule)
    clf.meta["calibration"] = {"method": "temperature", "sites": sites}
    clf.save(run_dir.file(CLASSIFIER_FILE))
    n = int(sum(h.positive.sum() + h.negative.sum() for h in hists))
    log.info("calibrated on %d held-out real images of %d site(s): temperature %.3f, threshold %.3f -> %.3f",
             n, len(sites), temperature, before, clf.threshold)
    return {"applied": True, "method": "temperature", "temperature": temperature, "sites": sites,
            "n_images": n, "noisy": noisy, "threshold_before": before, "threshold_after": clf.threshold,
            "ece_before": expected_calibration_error(hists, edges),
            "ece_after": expected_calibration_error(hists, edges, rescale=1.0 / temperature)}


def _histograms(results: list[EvalResult], clf: Classifier, bins: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        name: {r.site: {"positive": h.positive.tolist(), "negative": h.negative.tolist()}
               for r in results for h in [r.histogram if name == "main" else r.extra_histograms.get(name)] if h}
        for name in ("main", *BASELINES)
    }
    out["edges"] = {"main": clf.score_edges(bins).tolist(),
                    **{name: uniform_edges(bins).tolist() for name in BASELINES}}
    return out


def _synthetic_sample(synthetic: dict[str, tuple[np.ndarray, np.ndarray]], names: list[str], n: int,
                      seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up to ``n`` pooled synthetic images, drawn evenly from every origin."""
    rng = np.random.default_rng(seed)
    per = max(1, n // len(names))
    imgs, labels, origin = [], [], []
    for i, name in enumerate(names):
        x, y = synthetic[name]
        pick = rng.permutation(len(y))[:per]
        imgs.append(x[pick])
        labels.append(binary_labels(y[pick]))  # the sites' own baselines learn the binary task
        origin.append(np.full(len(pick), i, dtype=np.uint8))
    return np.concatenate(imgs), np.concatenate(labels).astype(np.uint8), np.concatenate(origin)


def _pool(results: list[EvalResult], pick, threshold: float, config: RunConfig) -> BinaryMetrics | None:
    pairs = [pick(r) for r in results]
    pairs = [(h, m) for h, m in pairs if h is not None and m is not None]
    if not pairs:
        return None
    ev = config.evaluation
    return pooled_metrics([h for h, _ in pairs], [(m["tp"], m["fp"], m["tn"], m["fn"]) for _, m in pairs], threshold,
                          n_boot=ev.bootstrap, level=ev.ci_level, seed=config.run.seed)


def _utility(results: list[EvalResult], pooled: BinaryMetrics | None, config: RunConfig) -> dict:
    """Train-synthetic-test-real against the sites' own train-real-test-real and
    real-plus-synthetic classifiers, per site and pooled (the pooled baselines combine
    each site's own model on its own test split)."""
    out: dict[str, Any] = {"tstr": {"pooled": pooled.to_dict() if pooled else None,
                                    "sites": {r.site: r.metrics for r in results}}}
    for name in BASELINES:
        sites = {r.site: r.extra["utility"][name] for r in results if name in r.extra.get("utility", {})}
        if not sites:
            continue
        p = _pool([r for r in results if r.site in sites],
                  lambda r, n=name: (r.extra_histograms.get(n), r.extra["utility"][n]),
                  float("nan"), config)
        out[name] = {"pooled": p.to_dict() if p else None, "sites": sites}
    return out


def _fidelity(results: list[EvalResult]) -> dict:
    """Per site; pooled = the pooled sample's figures averaged over sites, weighted by their real images."""
    sites = {r.site: r.extra["fidelity"] for r in results if "fidelity" in r.extra}
    if not sites:
        return {}
    rows = [f["pooled"] for f in sites.values()]
    weights = np.array([f["n_real"] for f in rows], dtype=float)
    pooled = {k: float(np.average([f[k] for f in rows], weights=weights))
              for k in ("frechet_distance", "precision", "recall", "density", "coverage")}
    pooled["encoder"] = "each site's own (" + rows[0]["encoder"].split(" (")[0] + ")"
    return {"pooled": pooled, "sites": sites}


def _warnings(record: RunRecord) -> list[str]:
    contributions = record.contributions
    out = list(record.warnings)
    if any(c.phantom for c in contributions):
        out.append(PHANTOM_WARNING)
    not_private = [c.site for c in contributions if not c.private]
    if len(not_private) == len(contributions):
        out.append(NOT_PRIVATE_WARNING)
    elif not_private:
        out.append(PARTLY_PRIVATE_WARNING.format(sites=", ".join(not_private)))
    if record.failures:
        out.append("sites dropped or failed: " + ", ".join(sorted({f.site for f in record.failures})))
    return out


def _metrics_document(config: RunConfig, run_dir: RunDir, record: RunRecord, results: list[EvalResult],
                      pooled: BinaryMetrics | None, clf: Classifier) -> RunMetrics:
    contributions = record.contributions
    sites: dict[str, dict] = {}
    for c in contributions:
        sites[c.site] = {"status": "ok", c.key: c.info}
    for res in results:
        sites.setdefault(res.site, {"status": "ok"})["evaluation"] = res.metrics
    for f in record.failures:
        entry = sites.setdefault(f.site, {})
        entry["status"] = "failed"
        entry.setdefault("failures", []).append(f.to_dict())
    for name, n in record.bytes_sent.items():
        sites.setdefault(name, {"status": "failed"})["bytes_sent"] = int(n)
    phantom = any(c.phantom for c in contributions)
    not_private = [c.site for c in contributions if not c.private]
    return RunMetrics.model_validate({
        "schema_version": SCHEMA_VERSION,
        "run_id": run_dir.run_id,
        "mode": config.run.mode,
        "fedsynth_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "data": {"source": config.data.source, "resolution": config.data.resolution, "phantom": phantom},
        "private": bool(contributions) and not not_private,
        "privacy": {
            "requested": config.privacy.model_dump() if config.privacy else None,
            "sites": {c.site: c.privacy for c in contributions},
        },
        "warnings": _warnings(record),
        "sites": dict(sorted(sites.items())),
        "pooled": pooled.to_dict() if pooled else None,
        "classifier": {k: v for k, v in clf.header().items() if k != "history"},
        "failures": [f.to_dict() for f in record.failures],
        "timings": record.timings,
        "utility": _utility(results, pooled, config),
        "fidelity": _fidelity(results),
        **record.extra,
    })
