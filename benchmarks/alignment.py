"""What post-hoc intensity alignment does on the Kermany benchmark, paired.

One run of ``benchmarks.kermany_substitution`` (3 IID sites, GAN, no DP) gives the
sites' releases. The same pooled synthetic images are then taken three ways: as
released, aligned with one pooled intensity reference (``alignment.by_class: false``),
and aligned class by class (the default). For each: the intensity distribution's
Wasserstein-1 distance to the real test images (the 624 of the official split),
fidelity (Fréchet distance, precision/recall/density/coverage) in the feature space of
one CXR encoder trained on the pooled real training images, the same distance to the
real training images (the reference the sites release), and the AUROC of the run's
classifier (same settings, same seed) trained on them, on the official test split. The
histograms are each site's own (no DP: the run had none), computed as a site computes
them; the global mapping is checked against the one the aligned run recorded.

    .venv/bin/python -m benchmarks.kermany_substitution --set alignment.enabled=true \\
        --set alignment.by_class=false --name kermany_alignment --skip-real
    .venv/bin/python -m benchmarks.kermany_substitution --name kermany_noalignment --skip-real
    .venv/bin/python -m benchmarks.alignment

Writes benchmarks/results/alignment_cpu.json and prints the README table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import KERMANY_64, RESULTS, record_start, require, write_result
from fedsynth.classifier.metrics import evaluate_scores
from fedsynth.classifier.train import train_classifier
from fedsynth.client.site_data import simulated_sites
from fedsynth.config import RunConfig
from fedsynth.data.dataset import concat, from_uint8
from fedsynth.evaluation.alignment import (
    class_intensity_histograms,
    intensity_histogram,
    match_by_class,
    match_histograms,
    reference_cdf,
)
from fedsynth.evaluation.fidelity import CXREncoder, fidelity
from fedsynth.rundir import load_releases


def wasserstein_1(a: np.ndarray, b: np.ndarray, n: int = 2001) -> float:
    """W1 between two pixel-intensity distributions on [0, 1] (mean |quantile difference|)."""
    q = np.linspace(0, 1, n)
    return float(np.mean(np.abs(np.quantile(a.ravel(), q) - np.quantile(b.ravel(), q))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--aligned", default=str(RESULTS / "kermany_alignment.json"),
                    help="the run with (global) alignment: its record checks the rebuilt mapping")
    ap.add_argument("--plain", default=str(RESULTS / "kermany_noalignment.json"))
    ap.add_argument("--name", default="alignment_cpu")
    args = ap.parse_args()
    record_start()
    require(KERMANY_64)
    aligned_res, plain_res = json.loads(Path(args.aligned).read_text()), json.loads(Path(args.plain).read_text())
    cfg = RunConfig.model_validate(plain_res["config"])
    run_dir = Path(plain_res["run_dir"])
    recorded = json.loads((Path(aligned_res["run_dir"]) / "metrics.json").read_text())["alignment"]

    releases = load_releases(run_dir)
    raw = from_uint8(np.concatenate([images for images, _ in releases.values()]))
    labels = np.concatenate([lab for _, lab in releases.values()])
    sites = simulated_sites(cfg)
    bins = cfg.alignment.bins
    global_ref = reference_cdf([intensity_histogram(s.train.images, bins) for s in sites])
    per_class = [class_intensity_histograms(s.train.images, s.train.labels, bins) for s in sites]
    variants = {
        "as released": raw,
        "aligned, one pooled reference": match_histograms(raw, global_ref),
        "aligned per class (default)": match_by_class(
            raw, labels, {c: reference_cdf([h[c] for h in per_class]) for c in (0, 1)}),
    }
    got = float(variants["aligned, one pooled reference"].mean())
    if abs(got - recorded["mean_intensity_after"]) > 1e-4:
        raise SystemExit(f"rebuilt mapping gives mean {got:.5f}, the aligned run recorded "
                         f"{recorded['mean_intensity_after']:.5f}")

    train, test = concat([s.train for s in sites]), concat([s.test for s in sites])
    encoder = CXREncoder(train.images, train.labels, epochs=cfg.evaluation.encoder_epochs, seed=cfg.run.seed,
                         origin="the pooled real training split", device=cfg.run.device)
    ev = cfg.evaluation
    rows = {}
    for name, images in variants.items():
        fid = fidelity(encoder, test.images, images, max_each=ev.fidelity_samples, seed=cfg.run.seed)
        t0 = time.perf_counter()
        clf = train_classifier(images, labels, cfg.classifier, arch=cfg.classifier_arch(),
                               resolution=cfg.data.resolution, seed=cfg.run.seed, device=cfg.run.device,
                               trained_on=f"synthetic ({name})", histogram_bins=ev.histogram_bins)
        score = evaluate_scores(test.labels, clf.predict_proba(test.images), clf.threshold, n_boot=ev.bootstrap,
                                level=ev.ci_level, seed=cfg.run.seed)
        rows[name] = {"intensity_w1": wasserstein_1(test.images, images), "mean_intensity": float(images.mean()),
                      # the reference the sites released is their training images: how close each gets to it
                      "intensity_w1_to_train": wasserstein_1(train.images, images),
                      "intensity_w1_to_train_per_class": [
                          wasserstein_1(train.images[train.labels == c], images[labels == c]) for c in (0, 1)],
                      "mean_intensity_per_class": [float(images[labels == c].mean()) for c in (0, 1)],
                      **{k: v for k, v in vars(fid).items() if k != "encoder"},
                      "classifier": score.to_dict(), "classifier_s": time.perf_counter() - t0}
        print(name, json.dumps({k: v for k, v in rows[name].items() if k != "classifier"}), score.auroc)

    def f(v):
        return f"{v:.3f}"

    real_means = [float(test.images[test.labels == c].mean()) for c in (0, 1)]
    table = [
        "| pooled synthetic images | AUROC [95% CI] | intensity W1 to real test | mean intensity normal / "
        f"pneumonia (real test: {real_means[0]:.3f} / {real_means[1]:.3f}) | FD | precision | recall | coverage |",
        "|---|---|---|---|---|---|---|---|",
        *[f"| {k} | {r['classifier']['auroc']:.3f} [{r['classifier']['auroc_ci'][0]:.3f}, "
          f"{r['classifier']['auroc_ci'][1]:.3f}] | {r['intensity_w1']:.4f} | "
          f"{r['mean_intensity_per_class'][0]:.3f} / {r['mean_intensity_per_class'][1]:.3f} | "
          f"{r['frechet_distance']:.2f} | {f(r['precision'])} | {f(r['recall'])} | {f(r['coverage'])} |"
          for k, r in rows.items()],
    ]
    runs = {k: {"auroc": r["synthetic_only"]["exact_on_official_test"]["auroc"], "git_commit": r["git_commit"],
                "run_dir": r["run_dir"], "wall_s": r["synthetic_only"]["wall_s"]}
            for k, r in (("alignment (one pooled reference)", aligned_res), ("no alignment", plain_res))}
    write_result(args.name, {"data": KERMANY_64.name, "encoder": encoder.name, "n_real_test": int(len(test)),
                             "n_synthetic": int(len(raw)), "variants": rows, "source_runs": runs,
                             "real_test_mean_intensity_per_class": real_means, "table": "\n".join(table)})
    print("\n".join(table))


if __name__ == "__main__":
    main()
