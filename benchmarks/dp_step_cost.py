"""DP's cost in time per training step, by Opacus's per-sample-gradient mode (GAN and DDPM).

The same generator on the same images (640 of site 0's Kermany training images at 32 px):
one epoch without DP and one epoch with DP-SGD for each ``privacy.grad_sample_mode``, all
alternated ``--repeats`` times in this one process so every kind meets the same load; the
least-disturbed (minimum) seconds per step of each is the headline, the median beside it.
Ghost clipping (per-sample gradient norms without per-sample gradients) needs the loss as a
per-example criterion Opacus wraps: the GAN's discriminator loss is one (``DiscriminatorLoss``),
so the GAN is measured with it; the DDPM's loss averages several noise levels per example
inside fedsynth's step, so the DDPM is measured with hooks and functorch only.

    .venv/bin/python -m benchmarks.dp_step_cost [--repeats 6] [--families gan,ddpm,ddpm-one-draw]

Writes benchmarks/results/dp_step_cost.json.
"""

from __future__ import annotations

import argparse
import os
import statistics

import numpy as np
import torch

from benchmarks.common import KERMANY_64, ROOT, record_start, require, write_result
from fedsynth.config import load_config

MODES = ("hooks", "functorch", "ghost")
FAMILY_MODES = {"gan": MODES, "ddpm": ("hooks", "functorch"), "ddpm-one-draw": ("hooks", "functorch")}
FAMILIES = {
    "gan": ["generator.family=gan", "generator.epochs=1", "generator.batch_size=64"],
    "ddpm": ["generator.family=ddpm", "generator.epochs=1", "generator.batch_size=64",
             "generator.block_out_channels=[32,64,64]", "generator.augmentation_multiplicity=2"],
    # the DDPM under DP with one noise draw per example: the same rows per step as without DP, so the
    # ratio is the per-sample gradients' cost alone (with 2 draws DP also does twice the rows, by design)
    "ddpm-one-draw": ["generator.family=ddpm", "generator.epochs=1", "generator.batch_size=64",
                      "generator.block_out_channels=[32,64,64]", "generator.augmentation_multiplicity=1"],
}


def measure(family: str, data, repeats: int, n_images: int) -> dict:
    from fedsynth.client.site_data import simulated_site
    from fedsynth.generators import build_generator

    cfg = load_config(ROOT / "configs" / "kermany-private-cpu.yaml", [f"data.source={data}", *FAMILIES[family]])
    site = simulated_site(cfg, 0)
    pick = np.random.default_rng(0).permutation(len(site.train))[:n_images]
    images, labels = site.train.images[pick], site.train.labels[pick]
    modes = FAMILY_MODES[family]
    kinds = ["non_dp", *modes]
    seconds: dict[str, list[float]] = {k: [] for k in kinds}
    family_cls = None
    for r in range(repeats):
        for kind in kinds if r % 2 == 0 else kinds[::-1]:
            model = build_generator(cfg.generator, cfg.data.resolution, seed=r, device="cpu")
            family_cls = type(model)
            plan = None
            if kind != "non_dp":
                privacy = cfg.privacy.model_copy(update={"grad_sample_mode": kind})
                plan = family_cls.plan_privacy(privacy, len(images), cfg.generator)
            report = model.fit(images, labels, privacy=plan)
            seconds[kind].append(report.seconds / report.steps)
    best = {k: min(v) for k, v in seconds.items()}
    med = {k: statistics.median(v) for k, v in seconds.items()}
    return {"family": family, "images": int(len(images)), "batch_size": cfg.generator.batch_size,
            "seconds_per_step": seconds, "min_seconds_per_step": best, "median_seconds_per_step": med,
            "dp_over_non_dp": {m: best[m] / best["non_dp"] for m in modes},
            "dp_over_non_dp_median": {m: med[m] / med["non_dp"] for m in modes}}


def markdown(rows: list[dict]) -> str:
    out = ["| generator | non-DP s/step | " + " | ".join(f"DP ({m}) s/step, ratio" for m in MODES) + " |",
           "|---|---|" + "---|" * len(MODES)]
    for r in rows:
        b = r["min_seconds_per_step"]
        cells = [f"{b[m]:.3f}, {r['dp_over_non_dp'][m]:.2f}x (median {r['dp_over_non_dp_median'][m]:.2f}x)"
                 if m in b else "not applicable" for m in MODES]
        out.append(f"| {r['family']} (batch {r['batch_size']}) | {b['non_dp']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--images", type=int, default=640)
    ap.add_argument("--families", default="gan,ddpm", help=f"comma-separated, of {', '.join(FAMILIES)}")
    ap.add_argument("--name", default="dp_step_cost", help="result file name (another keeps this one's rows)")
    args = ap.parse_args()
    record_start()
    data = require(KERMANY_64)
    torch.set_num_threads(1)  # as one simulated site gets
    load_before = os.getloadavg()[0]
    rows = [measure(f, data, args.repeats, args.images) for f in args.families.split(",")]
    write_result(args.name, {"data": data.name, "torch_threads": 1, "rows": rows, "table": markdown(rows),
                                  "load_average_1min": [load_before, os.getloadavg()[0]]})
    print(markdown(rows))


if __name__ == "__main__":
    main()
