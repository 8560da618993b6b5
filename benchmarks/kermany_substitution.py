"""Kermany benchmark: synthetic-only classifier vs the same classifier on real images.

3 simulated sites (patient-disjoint, IID) on the official Kermany train split; each
trains a GAN and releases synthetic images (mode substitution, no DP) through Flower's
simulation engine; the server trains the classifier on the pooled synthetic images
only. It is tested on the official test split (624 images: the union of the sites'
test splits). The upper bound trains the same classifier, same settings, on the pooled
real training images.

    .venv/bin/python -m benchmarks.kermany_substitution [--config configs/kermany-cpu.yaml]

With ``--set calibration.enabled=true`` the sites also return histograms of a held-out
calibration split of their training patients, the server fits a temperature and the
threshold on them, and the JSON records the expected calibration error and the operating
point on the official test split before and after (exact, from per-image scores here in
the benchmark, beside the server's histogram figures).

Writes benchmarks/results/<name>.json. Exits 0 with a message when the data is absent.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import KERMANY_64, ROOT, record_start, require, write_result
from fedsynth.classifier.metrics import evaluate_scores
from fedsynth.classifier.train import Classifier, train_classifier
from fedsynth.client.site_data import simulated_sites
from fedsynth.config import load_config
from fedsynth.data.dataset import concat
from fedsynth.rundir import CLASSIFIER_FILE
from fedsynth.simulation import simulate

ECE_BINS = 15


def ece(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: equal-width probability bins, weighted by their images."""
    which = np.minimum((probs * bins).astype(int), bins - 1)
    out = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            out += sel.mean() * abs(labels[sel].mean() - probs[sel].mean())
    return float(out)


def calibration_figures(clf: Classifier, test, ev, seed: int, threshold_before: float) -> dict:
    """ECE, Brier score and sensitivity / specificity on the official test split, of the
    classifier as trained (temperature 1, its synthetic-validation threshold) and as calibrated."""
    cal = clf.meta.get("calibration") or {}
    temperature = float(clf.meta.get("temperature", 1.0))
    after = clf.predict_proba(test.images).astype(np.float64)
    logit = np.log(np.clip(after, 1e-12, 1)) - np.log1p(-np.clip(after, 0, 1 - 1e-12))
    before = 1 / (1 + np.exp(-logit * temperature))  # undo the temperature
    out = {"temperature": temperature, "sites": cal.get("sites")}
    for name, probs, threshold in (("before", before, threshold_before),
                                   ("after", after, clf.threshold)):
        m = evaluate_scores(test.labels, probs, threshold, n_boot=ev.bootstrap, level=ev.ci_level, seed=seed)
        out[name] = {"ece": ece(test.labels, probs), "brier": float(np.mean((probs - test.labels) ** 2)),
                     "threshold": float(threshold), "sensitivity": m.sensitivity, "specificity": m.specificity,
                     "auroc": m.auroc}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "kermany-cpu.yaml"))
    ap.add_argument("--set", action="append", default=[], help="config override, e.g. generator.epochs=10")
    ap.add_argument("--name", default=None, help="result name (default: kermany_substitution_<run.name>)")
    ap.add_argument("--skip-real", action="store_true", help="skip the real-data upper bound")
    args = ap.parse_args()
    record_start()
    data = require(KERMANY_64)
    cfg = load_config(args.config, [f"data.source={data}", *args.set])
    ev = cfg.evaluation

    t0 = time.perf_counter()
    run_dir, result = simulate(cfg)
    metrics = result.model_dump(mode="json")  # the document as written to metrics.json
    wall_synthetic = time.perf_counter() - t0

    # exact metrics on the official test split, from the same classifier (a check on the
    # histogram-pooled figure the server computed without per-image scores)
    sites = simulated_sites(cfg)
    test = concat([s.test for s in sites])
    train = concat([s.train for s in sites])
    clf = Classifier.load(run_dir.file(CLASSIFIER_FILE))
    exact = evaluate_scores(test.labels, clf.predict_proba(test.images), clf.threshold, n_boot=ev.bootstrap,
                            level=ev.ci_level, seed=cfg.run.seed)

    calibration = None
    if metrics.get("calibration"):
        calibration = {"server": metrics["calibration"],
                       "exact_on_official_test": calibration_figures(
                           clf, test, ev, cfg.run.seed, metrics["calibration"].get("threshold_before", clf.threshold))}

    real = None
    if not args.skip_real:
        t1 = time.perf_counter()
        real_clf = train_classifier(
            train.images, train.labels, cfg.classifier, arch=cfg.classifier_arch(),
            resolution=cfg.data.resolution, seed=cfg.run.seed, device=cfg.run.device, trained_on="real",
        )
        real_metrics = evaluate_scores(test.labels, real_clf.predict_proba(test.images), real_clf.threshold,
                                       n_boot=ev.bootstrap, level=ev.ci_level, seed=cfg.run.seed)
        real = {"metrics": real_metrics.to_dict(), "wall_s": time.perf_counter() - t1,
                "n_train": int(len(train)), "classifier_val_auroc": real_clf.meta["val_auroc"]}

    write_result(
        args.name or f"kermany_substitution_{cfg.run.name}",
        {
            "data": str(data.name),
            "test_split": {"n": int(len(test)), **test.class_counts()},
            "config": cfg.to_dict(),
            "run_dir": str(run_dir.path),
            "synthetic_only": {
                "pooled_from_site_histograms": metrics["pooled"],
                "exact_on_official_test": exact.to_dict(),
                "per_site": {k: v.get("evaluation") for k, v in metrics["sites"].items()},
                "wall_s": wall_synthetic,
                "timings": metrics["timings"],
                "generator_seconds": {k: v["release"]["generator"]["seconds"] for k, v in metrics["sites"].items()
                                      if "release" in v},
                "n_synthetic": int(sum(v["release"]["n_released"] for v in metrics["sites"].values()
                                       if "release" in v)),
            },
            # counts only (data.markers): what the marker step did to each site's training set and release
            "markers": {k: v["release"].get("markers") for k, v in metrics["sites"].items()
                        if "release" in v and v["release"].get("markers")} or None,
            "real_trained_upper_bound": real,
            "calibration": calibration,
            "summary": {
                "synthetic_only_auroc": exact.auroc,
                "synthetic_only_auroc_ci": list(exact.auroc_ci),
                "real_trained_auroc": None if real is None else real["metrics"]["auroc"],
                "real_trained_auroc_ci": None if real is None else real["metrics"]["auroc_ci"],
                "pooled_histogram_auroc": metrics["pooled"]["auroc"],
                "abs_diff_histogram_vs_exact": abs(metrics["pooled"]["auroc"] - exact.auroc),
                "wall_s_synthetic_run": wall_synthetic,
                "n_train_real": int(len(train)),
                "n_test": int(len(test)),
                "train_counts": np.unique(train.labels, return_counts=True)[1].tolist(),
            },
        },
    )


if __name__ == "__main__":
    main()
