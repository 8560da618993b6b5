"""One table: data substitution against what a consortium would otherwise do.

On the same 3 simulated Kermany sites (IID, and label-skewed with Dirichlet alpha 0.5),
with and without DP (epsilon 10 per site), each mode runs through Flower's simulation
engine and its classifier is tested on the official test split (624 images, the union
of the sites' test splits): substitution, federated (FedAvg over GAN weights; also with
every round under SecAgg+, for its cost), fedavg-classifier (classic FL on real images)
and centralized-real (pooled real images, the upper bound; no DP variant).

    .venv/bin/python -m benchmarks.compare_modes [--quick] [--only substitution,federated]

Writes benchmarks/results/compare_modes.json (updated after every run, so an interrupted
sweep keeps what finished) and prints the Markdown table the README quotes.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback

from benchmarks.common import KERMANY_64, RESULTS, ROOT, record_start, require, with_ci, write_result
from fedsynth.config import load_config
from fedsynth.metrics_schema import RunMetrics
from fedsynth.simulation import simulate

MODES = ("substitution", "federated", "federated+secagg", "fedavg-classifier", "centralized-real")
# a "+secagg" mode is the base mode with every round under SecAgg+ (its cost in bytes and time)
SECURE = "+secagg"
PARTITIONS = {"iid": ["federation.partition=iid"],
              "dirichlet-0.5": ["federation.partition=dirichlet", "federation.dirichlet_alpha=0.5"]}
PRIVACY = {"none": [], "eps10": ["privacy.epsilon=10"]}


def settings(mode: str, quick: bool) -> list[str]:
    """Equal effort per mode: the federated modes spread the same epochs over rounds."""
    if mode.endswith(SECURE):
        return [*settings(mode.removesuffix(SECURE), quick), "federation.secure_aggregation=true"]
    epochs = 4 if quick else 20
    rounds = 2 if quick else 4
    common = ["classifier.epochs=" + ("3" if quick else "12"), "evaluation.bootstrap=" + ("100" if quick else "1000")]
    if mode == "federated":
        return common + [f"federation.rounds={rounds}", f"federation.local_epochs={epochs // rounds}",
                         f"generator.epochs={epochs}"]
    if mode == "fedavg-classifier":
        return common + [f"federation.rounds={rounds}", "federation.local_epochs=" + ("1" if quick else "3")]
    return common + [f"generator.epochs={epochs}"]


def row_of(mode: str, partition: str, privacy: str, metrics: RunMetrics, wall: float) -> dict:
    pooled = metrics.pooled.model_dump() if metrics.pooled else {}
    sent = [s.bytes_sent for s in metrics.sites.values() if s.bytes_sent]
    # what each site spent in this run, composed over all its DP entries (every round, in the federated modes)
    eps = [p.spent_epsilon if p.epsilon is not None else None for p in metrics.privacy.sites.values()]
    return {
        "mode": mode, "partition": partition, "privacy": privacy,
        "auroc": pooled.get("auroc"), "auroc_ci": pooled.get("auroc_ci"),
        "aupr": pooled.get("aupr"), "aupr_ci": pooled.get("aupr_ci"),
        "n_test": pooled.get("n"),
        "bytes_sent_per_site_mean": sum(sent) / len(sent) if sent else 0,
        "epsilon_per_site_max": max([e for e in eps if e is not None], default=None),
        "failed_sites": metrics.failed_sites(),
        "wall_s": wall, "run_id": metrics.run_id,
    }


def markdown(rows: list[dict]) -> str:
    out = ["| mode | sites | DP | AUROC [95% CI] | AUPR [95% CI] | MB sent per site | wall time |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['mode']} | {r['partition']} | {r['privacy']} | failed: {r['error'][:60]} | | | |")
            continue
        dp = "none" if r["privacy"] == "none" else f"eps {r['epsilon_per_site_max']:.2f}" \
            if r["epsilon_per_site_max"] else r["privacy"]
        out.append(f"| {r['mode']} | {r['partition']} | {dp} | {with_ci(r['auroc'], r['auroc_ci'])} | "
                   f"{with_ci(r['aupr'], r['aupr_ci'])} | {r['bytes_sent_per_site_mean'] / 1e6:.2f} | "
                   f"{r['wall_s'] / 60:.1f} min |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "kermany-cpu.yaml"))
    ap.add_argument("--quick", action="store_true", help="tiny epochs: checks the sweep runs, measures nothing")
    ap.add_argument("--only", default="", help="comma-separated modes")
    ap.add_argument("--partitions", default=",".join(PARTITIONS), help="comma-separated partitions")
    ap.add_argument("--privacy", default=",".join(PRIVACY), help="comma-separated privacy levels")
    ap.add_argument("--name", default="compare_modes")
    ap.add_argument("--set", action="append", default=[], help="config override for every run")
    args = ap.parse_args()
    record_start()
    data = require(KERMANY_64)
    modes = [m for m in MODES if not args.only or m in args.only.split(",")]
    out_path = RESULTS / f"{args.name}.json"
    done = json.loads(out_path.read_text())["rows"] if out_path.is_file() else []
    key = {(r["mode"], r["partition"], r["privacy"]) for r in done if "error" not in r}
    rows = [r for r in done if "error" not in r]
    for partition, p_over in PARTITIONS.items():
        if partition not in args.partitions.split(","):
            continue
        for privacy, dp_over in PRIVACY.items():
            if privacy not in args.privacy.split(","):
                continue
            for mode in modes:
                if (mode == "centralized-real" and privacy != "none") or (mode, partition, privacy) in key:
                    continue
                over = [f"data.source={data}", f"run.mode={mode.removesuffix(SECURE)}",
                        f"run.name=cmp-{mode.replace('+', '-')}-{partition}-{privacy}",
                        *p_over, *dp_over, *settings(mode, args.quick), *args.set]
                cfg = load_config(args.config, over)
                t0 = time.perf_counter()
                try:
                    _, metrics = simulate(cfg)
                    rows.append({**row_of(mode, partition, privacy, metrics, time.perf_counter() - t0),
                                 "overrides": args.set})
                except Exception as err:  # keep the sweep going; the table says what failed
                    traceback.print_exc()
                    rows.append({"mode": mode, "partition": partition, "privacy": privacy,
                                 "error": f"{type(err).__name__}: {err}"})
                print(markdown(rows[-1:]))
                write_result(args.name, {"data": data.name, "quick": args.quick, "rows": rows,
                                         "table": markdown(rows)})
    print(markdown(rows))


if __name__ == "__main__":
    main()
