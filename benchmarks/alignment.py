"""What post-hoc intensity alignment does on the Kermany benchmark, paired.

Two runs of ``benchmarks.kermany_substitution`` on the same commit and seed, one with
``alignment.enabled=true`` (name kermany_alignment), one without (kermany_noalignment):
the synthetic-only AUROC of each, and, on the aligned run's own releases, the pooled
synthetic images before and after the intensity mapping against the real test images
(the 624 of the official split): the intensity distributions' Wasserstein-1 distance
and fidelity (Fréchet distance, precision/recall/density/coverage) in the feature space
of one CXR encoder trained on the pooled real training images. The mapping is rebuilt
from the histograms the sites released and checked against the run's own record.

    .venv/bin/python -m benchmarks.kermany_substitution --set alignment.enabled=true \\
        --name kermany_alignment --skip-real
    .venv/bin/python -m benchmarks.kermany_substitution --name kermany_noalignment --skip-real
    .venv/bin/python -m benchmarks.alignment

Writes benchmarks/results/alignment_cpu.json and prints the README table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.common import KERMANY_64, RESULTS, record_start, require, write_result
from fedsynth.client.site_data import simulated_sites
from fedsynth.config import RunConfig
from fedsynth.data.dataset import concat, from_uint8
from fedsynth.evaluation.alignment import match_histograms, reference_cdf
from fedsynth.evaluation.fidelity import CXREncoder, fidelity
from fedsynth.server.orchestrator import load_releases


def wasserstein_1(a: np.ndarray, b: np.ndarray, n: int = 2001) -> float:
    """W1 between two pixel-intensity distributions on [0, 1] (mean |quantile difference|)."""
    q = np.linspace(0, 1, n)
    return float(np.mean(np.abs(np.quantile(a.ravel(), q) - np.quantile(b.ravel(), q))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--aligned", default=str(RESULTS / "kermany_alignment.json"))
    ap.add_argument("--plain", default=str(RESULTS / "kermany_noalignment.json"))
    ap.add_argument("--name", default="alignment_cpu")
    args = ap.parse_args()
    record_start()
    require(KERMANY_64)
    aligned_res, plain_res = json.loads(Path(args.aligned).read_text()), json.loads(Path(args.plain).read_text())
    cfg = RunConfig.model_validate(aligned_res["config"])
    run_dir = Path(aligned_res["run_dir"])
    metrics = json.loads((run_dir / "metrics.json").read_text())

    releases = load_releases(run_dir)
    raw = from_uint8(np.concatenate([images for images, _ in releases.values()]))
    hists = [np.asarray(s["release"]["intensity_histogram"]) for _, s in sorted(metrics["sites"].items())
             if (s.get("release") or {}).get("intensity_histogram") is not None]
    aligned = match_histograms(raw, reference_cdf(hists))
    recorded = metrics["alignment"]["mean_intensity_after"]
    if abs(float(aligned.mean()) - recorded) > 1e-4:
        raise SystemExit(f"rebuilt mapping gives mean {aligned.mean():.5f}, the run recorded {recorded:.5f}")

    sites = simulated_sites(cfg)
    train, test = concat([s.train for s in sites]), concat([s.test for s in sites])
    encoder = CXREncoder(train.images, train.labels, epochs=cfg.evaluation.encoder_epochs, seed=cfg.run.seed,
                         origin="the pooled real training split", device=cfg.run.device)
    n = cfg.evaluation.fidelity_samples
    rows = {}
    for label, images in (("raw releases", raw), ("aligned", aligned)):
        fid = fidelity(encoder, test.images, images, max_each=n, seed=cfg.run.seed)
        rows[label] = {"intensity_w1": wasserstein_1(test.images, images), "mean_intensity": float(images.mean()),
                       **{k: v for k, v in vars(fid).items() if k != "encoder"}}

    def auroc(res):
        e = res["synthetic_only"]["exact_on_official_test"]
        return {"auroc": e["auroc"], "auroc_ci": e["auroc_ci"], "aupr": e["aupr"], "aupr_ci": e["aupr_ci"],
                "git_commit": res["git_commit"], "wall_s": res["synthetic_only"]["wall_s"]}

    utility = {"alignment on": auroc(aligned_res), "alignment off": auroc(plain_res)}
    real_mean = float(test.images.mean())
    table = [
        "| pooled synthetic images | intensity W1 to real | mean intensity (real: "
        f"{real_mean:.3f}) | FD | precision | recall | density | coverage |",
        "|---|---|---|---|---|---|---|---|",
        *[f"| {k} | {r['intensity_w1']:.4f} | {r['mean_intensity']:.3f} | {r['frechet_distance']:.2f} | "
          f"{r['precision']:.3f} | {r['recall']:.3f} | {r['density']:.3f} | {r['coverage']:.3f} |"
          for k, r in rows.items()],
        "",
        "| classifier trained on | AUROC [95% CI] | AUPR [95% CI] |",
        "|---|---|---|",
        *[f"| pooled synthetic, {k} | {u['auroc']:.4f} [{u['auroc_ci'][0]:.3f}, {u['auroc_ci'][1]:.3f}] | "
          f"{u['aupr']:.3f} [{u['aupr_ci'][0]:.3f}, {u['aupr_ci'][1]:.3f}] |" for k, u in utility.items()],
    ]
    write_result(args.name, {"data": KERMANY_64.name, "run_dir": str(run_dir), "encoder": encoder.name,
                             "n_real_test": int(len(test)), "n_synthetic": int(len(raw)), "fidelity": rows,
                             "utility": utility, "table": "\n".join(table)})
    print("\n".join(table))


if __name__ == "__main__":
    main()
