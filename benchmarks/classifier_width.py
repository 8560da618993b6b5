"""How wide the small CNN must be: synthetic-only AUROC by ``classifier.width``, on held-out
*training* data (the official test split is never read), to choose the default.

The classifier's cost grows with the square of its width (a 32 px epoch of 1,920 images is about
380 GFLOP at width 32, 95 at 16, 24 at 8), so the narrowest width that loses nothing measurable is
the one to ship. What it is trained on is what fedsynth trains it on: synthetic images. One
simulated Kermany site (site-0 of ``configs/kermany-cpu.yaml``'s 3 IID sites, official train split
only) fits that config's GAN (no DP) and releases 1,000 images per class; the small CNN trains on
them at each width and seed (that config's 20 epochs) and is scored on sites 1 and 2's real
training images, which no generator saw. Per width: the AUROC of each seed with its bootstrap CI,
the paired difference to width 32 (same images, same seed) with its bootstrap CI, and the
training time.

    .venv/bin/python -m benchmarks.classifier_width [--widths 8,16,32] [--seeds 0,1,2]

Writes benchmarks/results/classifier_width.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import KERMANY_64, ROOT, record_start, require, write_result
from benchmarks.private_utility import tuning_source

REFERENCE = 32  # the width every earlier benchmark row used


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", default="8,16,32", help="comma-separated classifier widths (32 is always run)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated classifier seeds")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: as one simulated site gets)")
    args = ap.parse_args()
    widths = sorted({int(w) for w in args.widths.split(",")} | {REFERENCE})
    seeds = [int(s) for s in args.seeds.split(",")]
    record_start()
    data = require(KERMANY_64)
    torch.set_num_threads(args.threads)

    from fedsynth.classifier.metrics import auroc, stratified_bootstrap
    from fedsynth.classifier.train import train_classifier
    from fedsynth.client.site_data import simulated_sites
    from fedsynth.config import load_config
    from fedsynth.generators import build_generator

    with tempfile.TemporaryDirectory() as tmp:
        source = tuning_source(data, Path(tmp))  # the official train split alone
        cfg = load_config(str(ROOT / "configs" / "kermany-cpu.yaml"), [f"data.source={source}"])
        sites = simulated_sites(cfg)
        train = sites[0].train
        held_images = np.concatenate([sites[1].train.images, sites[2].train.images])
        held_labels = np.concatenate([sites[1].train.labels, sites[2].train.labels])
        start = time.perf_counter()
        gen = build_generator(cfg.generator, cfg.data.resolution, seed=0, device="cpu")
        gen.fit(train.images, train.labels)
        fit_s = time.perf_counter() - start
        n = cfg.release.n_per_class
        x = np.concatenate([gen.sample(n, 0, seed=5), gen.sample(n, 1, seed=6)])
        y = np.repeat([0, 1], n)

    scores: dict[tuple[int, int], np.ndarray] = {}
    runs = []
    for width in widths:
        for seed in seeds:
            ccfg = cfg.classifier.model_copy(update={"width": width})
            t0 = time.perf_counter()
            clf = train_classifier(x, y, ccfg, arch="small-cnn", resolution=cfg.data.resolution, seed=seed,
                                   device="cpu")
            train_s = time.perf_counter() - t0
            p = clf.predict_proba(held_images)
            scores[width, seed] = p
            runs.append({"width": width, "seed": seed, "auroc": auroc(held_labels, p),
                         "auroc_ci": stratified_bootstrap(held_labels, p, auroc, 1000, seed=seed),
                         "train_s": train_s, "best_epoch": clf.meta["best_epoch"]})
            print(runs[-1], flush=True)
    for r in runs:
        if r["width"] != REFERENCE:
            r["minus_width_32"] = r["auroc"] - next(o["auroc"] for o in runs
                                                    if o["width"] == REFERENCE and o["seed"] == r["seed"])
            # the same stratified resamples for both widths: a column each
            pair = np.stack([scores[r["width"], r["seed"]], scores[REFERENCE, r["seed"]]], axis=1)
            r["minus_width_32_ci"] = stratified_bootstrap(
                held_labels, pair, lambda y, s: auroc(y, s[:, 0]) - auroc(y, s[:, 1]), 1000, seed=r["seed"])
    by_width = [{"width": w, "median_auroc": statistics.median(r["auroc"] for r in runs if r["width"] == w),
                 "median_train_s": statistics.median(r["train_s"] for r in runs if r["width"] == w)}
                for w in widths]
    write_result("classifier_width", {
        "data": data.name, "split": "official train only: site-0 trains the generator, sites 1-2 score",
        "config": "configs/kermany-cpu.yaml", "generator_fit_s": fit_s, "synthetic_per_class": n,
        "n_held_out": int(len(held_labels)), "torch_threads": args.threads, "runs": runs, "by_width": by_width,
        "load_average_1min": os.getloadavg()[0],
    })
    for row in by_width:
        print(row)


if __name__ == "__main__":
    main()
