"""GAN against DDPM: synthetic-only utility, fidelity and cost, with and without DP.

3 simulated Kermany sites (IID), mode substitution, each site's generator of one family,
epsilon = infinity (no DP) and 10. Tested on the official test split (624 images).
Fidelity: each site's CXR encoder (or Inception-v3 given its weights), pooled figures.
Speed: training and sampling images per second, per site, on this machine.

    .venv/bin/python -m benchmarks.generators [--config configs/kermany-cpu.yaml] [--only ddpm-none,gan-eps10]

Writes benchmarks/results/<name>.json and prints the README table.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

from benchmarks.common import KERMANY_64, RESULTS, ROOT, record_start, require, with_ci, write_result
from fedsynth.config import load_config
from fedsynth.metrics_schema import RunMetrics
from fedsynth.simulation import simulate

PRIVACY = {"none": [], "eps10": ["privacy.epsilon=10"]}
# Per family and privacy level: what a 2-core CPU can train in tens of minutes per run.
# Under DP the DDPM sees each example at 2 noise levels per step (augmentation multiplicity).
GENERATORS = {
    "gan": {"none": ["generator.family=gan", "generator.epochs=20"],
            "eps10": ["generator.family=gan", "generator.epochs=20"]},
    "ddpm": {"none": ["generator.family=ddpm", "generator.epochs=20", "generator.batch_size=64",
                      "generator.block_out_channels=[32,64,64]", "generator.sampling_steps=25"],
             "eps10": ["generator.family=ddpm", "generator.epochs=10", "generator.batch_size=128",
                       "generator.block_out_channels=[32,64,64]", "generator.sampling_steps=25",
                       "generator.augmentation_multiplicity=2"]},
}


def row_of(family: str, privacy: str, m: RunMetrics, wall: float) -> dict:
    pooled = m.pooled.model_dump() if m.pooled else {}
    fid = m.fidelity.pooled.model_dump() if m.fidelity.pooled else {}
    gens = [s.release["generator"] for s in m.sites.values() if s.release]
    eps = [p.epsilon for p in m.privacy.sites.values()]
    return {
        "family": family, "privacy": privacy,
        "auroc": pooled.get("auroc"), "auroc_ci": pooled.get("auroc_ci"),
        "aupr": pooled.get("aupr"), "aupr_ci": pooled.get("aupr_ci"),
        "frechet_distance": fid.get("frechet_distance"), "precision": fid.get("precision"),
        "recall": fid.get("recall"), "density": fid.get("density"), "coverage": fid.get("coverage"),
        "encoder": fid.get("encoder"),
        "epsilon_max": max([e for e in eps if e is not None], default=None),
        "train_images_per_s": [g.get("images_per_second") for g in gens],
        "sample_images_per_s": [g.get("sampling_images_per_second") for g in gens],
        "generator_seconds": [g.get("seconds") for g in gens],
        "failed_sites": m.failed_sites(),
        "wall_s": wall, "run_id": m.run_id,
    }


def markdown(rows: list[dict]) -> str:
    def f(v, d=3):
        return "n/a" if v is None else f"{v:.{d}f}"

    out = ["| generator | DP | AUROC [95% CI] | AUPR [95% CI] | FD | precision | recall | coverage | "
           "train img/s | sample img/s | wall time |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['family']} | {r['privacy']} | failed: {r['error'][:60]} | | | | | | | | |")
            continue
        dp = "none" if r["privacy"] == "none" else f"eps {r['epsilon_max']:.2f}" if r["epsilon_max"] else "?"
        tr = [x for x in r["train_images_per_s"] if x]
        sa = [x for x in r["sample_images_per_s"] if x]
        auroc, aupr = with_ci(r["auroc"], r["auroc_ci"]), with_ci(r["aupr"], r["aupr_ci"])
        out.append(f"| {r['family']} | {dp} | {auroc} | {aupr} | "
                   f"{f(r['frechet_distance'], 1)} | {f(r['precision'])} | {f(r['recall'])} | {f(r['coverage'])} | "
                   f"{sum(tr) / len(tr):.0f} | {sum(sa) / len(sa):.0f} | {r['wall_s'] / 60:.1f} min |"
                   if tr and sa else f"| {r['family']} | {dp} | {auroc} | | | | | | | | |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "kermany-cpu.yaml"))
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--name", default="generators_cpu")
    ap.add_argument("--only", default="")
    ap.add_argument("--gan-from", default="", help="take the GAN rows (no DP, eps10) from this privacy benchmark "
                    "JSON: benchmarks.privacy runs the GAN with the same settings, so they need not run twice")
    args = ap.parse_args()
    record_start()
    data = require(KERMANY_64)
    out_path = RESULTS / f"{args.name}.json"
    rows = [r for r in (json.loads(out_path.read_text())["rows"] if out_path.is_file() else []) if "error" not in r]
    if args.gan_from:
        src = json.loads(Path(args.gan_from).read_text())
        rows = [r for r in rows if r["family"] != "gan"] + [
            {**r, "source": f"{Path(args.gan_from).name} (commit {src['git_commit'][:7]})"}
            for r in src["rows"] if r["privacy"] in PRIVACY and "error" not in r]
    done = {(r["family"], r["privacy"]) for r in rows}
    for privacy, dp_over in PRIVACY.items():
        for family, settings in GENERATORS.items():
            if (family, privacy) in done or (args.only and f"{family}-{privacy}" not in args.only.split(",")):
                continue
            over = [f"data.source={data}", f"run.name=gen-{family}-{privacy}", *dp_over, *settings[privacy],
                    *args.set]
            cfg = load_config(args.config, over)
            t0 = time.perf_counter()
            try:
                _, m = simulate(cfg)
                rows.append({**row_of(family, privacy, m, time.perf_counter() - t0), "overrides": args.set})
            except Exception as err:  # keep going; the table says what failed
                traceback.print_exc()
                rows.append({"family": family, "privacy": privacy, "error": f"{type(err).__name__}: {err}"})
            print(markdown(rows[-1:]))
            write_result(args.name, {"data": data.name, "rows": rows, "table": markdown(rows)})
    order = [(f, p) for p in PRIVACY for f in GENERATORS]
    rows.sort(key=lambda r: order.index((r["family"], r["privacy"])) if (r["family"], r["privacy"]) in order else 99)
    write_result(args.name, {"data": data.name, "rows": rows, "table": markdown(rows)})
    print(markdown(rows))


if __name__ == "__main__":
    main()
