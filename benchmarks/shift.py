"""Robustness under acquisition shift: the official Kermany test split (624 images, 32 px), shifted.

Simulated shifts, each at three strengths (a hospital with another scanner, protocol or
post-processing): contrast (scaled around the mean), gamma, Gaussian noise, blur, and
resolution (down-sampled, then up again). Every classifier given is scored on the same
shifted images; per shift and strength: AUROC with a bootstrap 95% CI, and the drop from
the unshifted AUROC. A real-trained classifier (the same small CNN, same settings, on the
pooled real training images of the 3 simulated sites) is trained here as the reference,
unless --no-real.

    .venv/bin/python -m benchmarks.shift RUN_DIR [RUN_DIR ...] [--names a,b]

RUN_DIR: finished runs (their classifier.safetensors), e.g. a substitution run without DP
and a DP run of benchmarks/private_utility.py. Writes benchmarks/results/shift.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.common import KERMANY_64, ROOT, record_start, require, with_ci, write_result
from fedsynth.classifier.metrics import auroc, stratified_bootstrap
from fedsynth.classifier.train import Classifier, train_classifier
from fedsynth.client.site_data import simulated_sites
from fedsynth.config import load_config
from fedsynth.data.dataset import concat
from fedsynth.evaluation.shifts import SHIFTS, shifted
from fedsynth.rundir import CLASSIFIER_FILE


def score(clf: Classifier, images: np.ndarray, labels: np.ndarray, n_boot: int) -> dict:
    probs = clf.predict_proba(images)
    return {"auroc": auroc(labels, probs), "auroc_ci": list(stratified_bootstrap(labels, probs, auroc, n_boot))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--names", default="", help="comma-separated names for the runs (default: their folder names)")
    ap.add_argument("--no-real", action="store_true")
    ap.add_argument("--bootstrap", type=int, default=500)
    args = ap.parse_args()
    record_start()
    data = require(KERMANY_64)
    cfg = load_config(ROOT / "configs" / "kermany-private-cpu.yaml", [f"data.source={data}"])
    sites = simulated_sites(cfg)
    test, train = concat([s.test for s in sites]), concat([s.train for s in sites])
    names = args.names.split(",") if args.names else [r.name for r in args.runs]
    classifiers = {n: Classifier.load(r / CLASSIFIER_FILE if r.is_dir() else r) for n, r in zip(names, args.runs)}
    if not args.no_real:
        t0 = time.perf_counter()
        classifiers = {"real-trained (pooled real training images)": train_classifier(
            train.images, train.labels, cfg.classifier, arch=cfg.classifier_arch(), resolution=cfg.data.resolution,
            seed=cfg.run.seed, device="cpu", trained_on="real"), **classifiers}
        print(f"real-trained classifier in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    for name, clf in classifiers.items():
        base = score(clf, test.images, test.labels, args.bootstrap)
        row = {"classifier": name, "none": base, "shifts": {}}
        for kind, levels in SHIFTS.items():
            row["shifts"][kind] = {str(level): {**(s := score(clf, shifted(test.images, kind, level), test.labels,
                                                              args.bootstrap)),
                                                "drop": base["auroc"] - s["auroc"]} for level in levels}
        rows.append(row)
        print(name, f"{base['auroc']:.3f}", flush=True)
    write_result("shift", {"data": data.name, "split": "official test", "n_test": len(test), "shifts": SHIFTS,
                           "runs": [str(r) for r in args.runs], "rows": rows, "table": markdown(rows)})
    print(markdown(rows))


def markdown(rows: list[dict]) -> str:
    head = ["classifier", "unshifted"] + [f"{k} {v}" for k, levels in SHIFTS.items() for v in levels]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["classifier"], with_ci(r["none"]["auroc"], r["none"]["auroc_ci"])]
        cells += [f"{r['shifts'][k][str(v)]['auroc']:.3f}" for k, levels in SHIFTS.items() for v in levels]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
