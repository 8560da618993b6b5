"""Utility against privacy: synthetic-only AUROC, membership inference and DP's cost in time.

3 simulated Kermany sites (IID), mode substitution, the class-conditional GAN (settings of
benchmarks/generators.py), epsilon per site = infinity (no DP), 10, 3 and 1, delta the
default for each site's size (recorded). Per level: AUROC / AUPR with CIs on the official
test split (624 images), the epsilon each site's accountant reports, the membership-
inference AUC of each site's release audit, the release gate's drops, wall time.

The cost of DP in time: the same GAN, the same batch size and the same images (640 of
site 0's training split), one epoch with and one without DP-SGD, alternated eight times
in this one process; seconds per step, the least-disturbed (minimum) of each.

    .venv/bin/python -m benchmarks.privacy [--only none,eps10] [--skip-timing]

Writes benchmarks/results/privacy_cpu.json (after every level) and prints the README table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback

from benchmarks.common import KERMANY_64, RESULTS, ROOT, record_start, require, with_ci, write_result
from benchmarks.generators import GENERATORS
from benchmarks.generators import row_of as generator_row
from fedsynth.config import load_config
from fedsynth.metrics_schema import RunMetrics
from fedsynth.simulation import simulate

LEVELS = {"none": None, "eps10": 10.0, "eps3": 3.0, "eps1": 1.0}


def row_of(level: str, metrics: RunMetrics, wall: float) -> dict:
    row = generator_row("gan", "none" if LEVELS[level] is None else "eps10", metrics, wall)
    row["privacy"] = level
    sites = metrics.privacy.sites
    row["per_site"] = {
        name: {"epsilon": p.epsilon, "delta": p.delta, "membership_auc": p.membership_auc,
               "gate_dropped": (p.gate or {}).get("dropped")}
        for name, p in sites.items()
    }
    mias = [s["membership_auc"] for s in row["per_site"].values() if s["membership_auc"] is not None]
    row["membership_auc_max"] = max(mias, default=None)
    mechanisms = [((s.release or {}).get("generator", {}).get("privacy") or {}).get("mechanism", {})
                  for s in metrics.sites.values()]
    row["noise_multiplier"] = [mech.get("noise_multiplier") for mech in mechanisms]
    return row


def step_timing(config_path: str, data, repeats: int = 8, n_images: int = 640) -> dict:
    """Seconds per training step of the same GAN on the same images, with and without DP.

    Short runs (one epoch of ``n_images``: 10 steps at batch 64), alternated ``repeats``
    times, so both kinds meet the same load; the least-disturbed run of each (the
    minimum) is the headline, the median is recorded beside it."""
    import os

    import numpy as np
    import torch

    from fedsynth.client.site_data import simulated_site
    from fedsynth.generators import build_generator
    from fedsynth.privacy.dp import plan_training

    cfg = load_config(config_path, [f"data.source={data}", *GENERATORS["gan"]["none"], "generator.epochs=1",
                                    "privacy.epsilon=10"])
    site = simulated_site(cfg, 0)
    pick = np.random.default_rng(0).permutation(len(site.train))[:n_images]
    images, labels = site.train.images[pick], site.train.labels[pick]
    gen_cfg = cfg.generator
    timings: dict[str, list[float]] = {"non_dp": [], "dp": []}
    load_before = os.getloadavg()[0]
    for r in range(repeats):
        for kind in ("non_dp", "dp") if r % 2 == 0 else ("dp", "non_dp"):
            plan = plan_training(cfg.privacy, len(images), gen_cfg.batch_size, 1) if kind == "dp" else None
            model = build_generator(gen_cfg, cfg.data.resolution, seed=r, device="cpu")
            report = model.fit(images, labels, privacy=plan)
            timings[kind].append(report.seconds / report.steps)
    best = {k: min(v) for k, v in timings.items()}
    med = {k: statistics.median(v) for k, v in timings.items()}
    return {"images": int(len(images)), "batch_size": gen_cfg.batch_size, "resolution": cfg.data.resolution,
            "repeats": repeats, "seconds_per_step": timings, "min_seconds_per_step": best,
            "median_seconds_per_step": med, "dp_over_non_dp": best["dp"] / best["non_dp"],
            "dp_over_non_dp_median": med["dp"] / med["non_dp"], "torch_threads": torch.get_num_threads(),
            "load_average_1min": [load_before, os.getloadavg()[0]]}


def markdown(rows: list[dict], timing: dict | None) -> str:
    out = ["| epsilon per site (delta) | AUROC [95% CI] | AUPR [95% CI] | membership-inference AUC (max over sites) "
           "| gate drops | wall time |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['privacy']} | failed: {r['error'][:60]} | | | | |")
            continue
        sites = list(r["per_site"].values())
        eps = [s["epsilon"] for s in sites if s["epsilon"] is not None]
        delta = next((s["delta"] for s in sites if s["delta"] is not None), None)
        label = "∞ (no DP)" if not eps else f"{max(eps):.2f} ({delta:.0e})"
        mia = r["membership_auc_max"]
        out.append(f"| {label} | {with_ci(r['auroc'], r['auroc_ci'])} | {with_ci(r['aupr'], r['aupr_ci'])} | "
                   f"{'n/a' if mia is None else f'{mia:.3f}'} | {sum(s['gate_dropped'] or 0 for s in sites)} | "
                   f"{r['wall_s'] / 60:.1f} min |")
    if timing:
        m = timing["min_seconds_per_step"]
        out.append("")
        out.append(f"DP step time / non-DP step time (same GAN, batch {timing['batch_size']}, "
                   f"{timing['images']} images at {timing['resolution']} px, best of {timing['repeats']} alternated "
                   f"runs): {m['dp']:.3f} s / {m['non_dp']:.3f} s = {timing['dp_over_non_dp']:.2f}x "
                   f"(medians: {timing['dp_over_non_dp_median']:.2f}x)")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "kermany-cpu.yaml"))
    ap.add_argument("--only", default="", help="comma-separated levels: none,eps10,eps3,eps1")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--set", action="append", default=[], help="config override for every run")
    ap.add_argument("--name", default="privacy_cpu")
    args = ap.parse_args()
    record_start()
    data = require(KERMANY_64)
    out_path = RESULTS / f"{args.name}.json"
    previous = json.loads(out_path.read_text()) if out_path.is_file() else {}
    rows = [r for r in previous.get("rows", []) if "error" not in r]
    timing = previous.get("step_timing")
    done = {r["privacy"] for r in rows}

    def save() -> None:
        order = list(LEVELS)
        rows.sort(key=lambda r: order.index(r["privacy"]))
        write_result(args.name, {"data": data.name, "rows": rows, "step_timing": timing,
                                 "table": markdown(rows, timing)})

    if timing is None and not args.skip_timing:
        timing = step_timing(args.config, data)
        save()
    for level, eps in LEVELS.items():
        if level in done or (args.only and level not in args.only.split(",")):
            continue
        over = [f"data.source={data}", f"run.name=privacy-{level}", *GENERATORS["gan"]["none"], *args.set]
        if eps is not None:
            over.append(f"privacy.epsilon={eps}")
        cfg = load_config(args.config, over)
        t0 = time.perf_counter()
        try:
            _, m = simulate(cfg)
            rows.append({**row_of(level, m, time.perf_counter() - t0), "overrides": args.set})
        except Exception as err:  # keep going; the table says what failed
            traceback.print_exc()
            rows.append({"privacy": level, "error": f"{type(err).__name__}: {err}"})
        save()
    print(markdown(rows, timing))


if __name__ == "__main__":
    main()
