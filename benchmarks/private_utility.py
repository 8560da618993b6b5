"""Private synthesis worth using: synthetic-only AUROC at epsilon 10, 3 and 1 per site, side by side.

3 simulated Kermany sites (IID, or label-skewed with Dirichlet alpha 0.5), 32 px, delta the
default for each site's size (about 1e-5 or below; recorded), epsilon per site over the whole
run. Methods (``METHODS``; each row records the overrides it ran with):

* ``substitution-gan``: today's default with a ``privacy`` block (each site DP-SGD-trains its
  GAN's discriminator, 20 epochs at batch 64, and releases images);
* ``federated-gan``: FedAvg over the GAN's weights with DP-SGD at every site, 4 rounds of 5
  local epochs (each site's epsilon composes over the rounds in its ledger);
* ``substitution-merf``: DP mean-embedding matching at each site (one Gaussian release of
  class-wise random-feature sums, a generator fitted locally), images released;
* ``federated-merf``: the same statistic, sent once to the server, which fits one generator
  to the pooled sums (pool the sites' privacy, not their data);
* ``fedavg-classifier``: the baseline a consortium would otherwise pick, classic FL of the
  classifier on real images with DP-SGD at every site (4 rounds of 3 local epochs).

Candidates measured on the tuning split only (``--only`` names them): a large-batch GAN
(batch 256, learning rates 5e-4: few steps, less noise per step), warm starts from public
phantoms (``generator.init``) for the GAN and the federated mean embedding, and the mean
embedding with patch features beside the whole-image ones (``generator.features``).

Two splits, so no choice looks at the test set:

* ``--split tune``: the official *train* split only; each site holds out 15% of its patients
  (``data.test_fraction``) and those held-out real images are the tuning set. Settings were
  chosen here, then frozen.
* ``--split test``: the frozen settings, evaluated once on the official test split (624 images).

Per row: pooled AUROC / AUPR with bootstrap CIs, each site's epsilon from its accountant (as its
signed ledger records it), the membership audit (AUC, TPR at 1% FPR, members-against-members
control), gate drops, the DP schedule, wall time. Site baselines and fidelity are off (they do
not change the classifier and cost CPU).

    .venv/bin/python -m benchmarks.private_utility --split tune --only federated-merf:iid:eps1
    .venv/bin/python -m benchmarks.private_utility --split test

Writes benchmarks/results/private_utility_<split>.json after every row (a rerun skips the rows
it has) and prints the table. Each row records the commit it ran at; ``--merge FILE`` adds the
rows another invocation (``--name``) or machine wrote, so rows can run side by side.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from benchmarks.common import KERMANY_64, RESULTS, ROOT, record_start, require, started_at_commit, with_ci, write_result
from fedsynth.config import load_config
from fedsynth.metrics_schema import RunMetrics
from fedsynth.rundir import RunDir
from fedsynth.simulation import simulate

EPSILONS = {"eps10": 10.0, "eps3": 3.0, "eps1": 1.0}
PARTITIONS = {"iid": ["federation.partition=iid"],
              "dirichlet": ["federation.partition=dirichlet", "federation.dirichlet_alpha=0.5"]}
METHODS: dict[str, list[str]] = {
    "substitution-gan": ["run.mode=substitution", "generator.family=gan", "generator.epochs=20"],
    "federated-gan": ["run.mode=federated", "generator.family=gan", "federation.rounds=4",
                      "federation.local_epochs=5"],
    "substitution-merf": ["run.mode=substitution", "generator.family=dp-merf"],
    "federated-merf": ["run.mode=federated", "generator.family=dp-merf", "federation.rounds=1"],
    "fedavg-classifier": ["run.mode=fedavg-classifier", "federation.rounds=4", "federation.local_epochs=3"],
    # candidates measured on the tuning split only (see the README for what was chosen)
    "substitution-gan-large-batch": ["run.mode=substitution", "generator.family=gan", "generator.epochs=20",
                                     "generator.batch_size=256", "generator.lr_discriminator=5e-4",
                                     "generator.lr_generator=5e-4"],
    "federated-merf-warm": ["run.mode=federated", "generator.family=dp-merf", "federation.rounds=1",
                            "generator.init={phantom_init:dp-merf}"],
    "substitution-gan-warm": ["run.mode=substitution", "generator.family=gan", "generator.epochs=20",
                              "generator.init={phantom_init:gan}"],
    # the mean embedding with a second, local kernel beside the whole-image one (generator.features)
    "federated-merf-patches": ["run.mode=federated", "generator.family=dp-merf", "federation.rounds=1",
                               "generator.features=image+patches"],
}
FINAL_METHODS = ("substitution-gan", "federated-gan", "substitution-merf", "federated-merf", "fedavg-classifier")
PRETRAIN_PHANTOMS = 3000  # public images a warm start is trained on


def phantom_checkpoint(family: str, config_path: str, folder: Path, cache: dict[str, str]) -> str:
    """A warm start for ``family`` trained on public phantoms at the benchmark's resolution (made
    once per run of this script, in a temporary folder), as `fedsynth generator pretrain` makes it."""
    if family not in cache:
        from fedsynth.data.phantom import make_phantoms
        from fedsynth.generators import build_generator

        over = [f"generator.family={family}"] + (["generator.epochs=20"] if family == "gan" else [])
        cfg = load_config(config_path, over)
        ds = make_phantoms(PRETRAIN_PHANTOMS, cfg.data.resolution, seed=0)
        gen = build_generator(cfg.generator, cfg.data.resolution, seed=0, device=cfg.run.device)
        gen.fit(ds.images, ds.labels)
        path = folder / f"phantom-{family}.safetensors"
        gen.save_pretrained(path, f"fedsynth procedural phantoms (n={PRETRAIN_PHANTOMS}, seed=0)")
        cache[family] = str(path)
    return cache[family]
COMMON = ["evaluation.site_baselines=false", "evaluation.fidelity=false", "federation.site_timeout_s=7200"]
TUNE_FRACTION = 0.15


def tuning_source(data: Path, folder: Path) -> Path:
    """The official train split alone, without its split labels, so that each simulated site
    holds out ``TUNE_FRACTION`` of its own patients as its (tuning) test split. A derived copy
    of the real data: written to a temporary folder, never into the project."""
    with np.load(data, allow_pickle=False) as z:
        train = z["split"] == "train"
        arrays = {k: z[k][train] for k in ("images", "labels", "patient")}
    out = folder / "kermany-train-only.npz"
    np.savez(out, **arrays)
    return out


def schedule(run_dir: RunDir) -> list[dict]:
    """The DP mechanisms one site ran in this run, as its signed ledger records them."""
    from fedsynth.privacy.ledger import read_ledger

    files = run_dir.ledger_files()
    if not files:
        return []
    entries = read_ledger(files[0][1]).entries
    return [{"site": files[0][0], "round": e.get("round"), **{k: (e.get("mechanism") or {}).get(k) for k in
                                                             ("name", "noise_multiplier", "sample_rate", "steps")}}
            for e in entries if e.get("run_id") == run_dir.run_id and e.get("mechanism")]


def server_release_audit(run_dir: RunDir, config) -> dict[str, dict]:
    """Federated modes release no site's images: the server samples the global generator. Audit
    that release per site, with the same attack the sites run on their own releases (their
    training images against their held-out ones), from the benchmark's side of the simulation."""
    from fedsynth.client.site_data import simulated_sites
    from fedsynth.privacy.gate import membership_audit

    released = run_dir.load_releases().get("global")
    if released is None:
        return {}
    images = released[0].astype(np.float32) / 255
    return {s.name: membership_audit(s.train.images, s.test.images, images, seed=0) or {}
            for s in simulated_sites(config)}


def row_of(method: str, partition: str, level: str, run_dir: RunDir, m: RunMetrics, wall: float,
           overrides: list[str], config=None) -> dict:
    pooled = m.pooled.model_dump() if m.pooled else {}
    sites = {}
    server_audit = server_release_audit(run_dir, config) if config is not None else {}
    for name, p in m.privacy.sites.items():
        audit = p.membership_audit or server_audit.get(name) or {}
        sites[name] = {"epsilon": p.epsilon, "spent_epsilon": p.spent_epsilon, "delta": p.delta,
                       "membership_auc": audit.get("auc", p.membership_auc),
                       "tpr_at_1pct_fpr": audit.get("tpr_at_1pct_fpr"),
                       "control_auc": audit.get("control_auc"), "gate_dropped": (p.gate or {}).get("dropped")}
    eps = [v["spent_epsilon"] for v in sites.values() if v["spent_epsilon"] is not None]
    mia = [v["membership_auc"] for v in sites.values() if v["membership_auc"] is not None]
    tpr = [v["tpr_at_1pct_fpr"] for v in sites.values() if v["tpr_at_1pct_fpr"] is not None]
    ctrl = [v["control_auc"] for v in sites.values() if v["control_auc"] is not None]
    return {
        "method": method, "partition": partition, "privacy": level, "target_epsilon": EPSILONS[level],
        "auroc": pooled.get("auroc"), "auroc_ci": pooled.get("auroc_ci"),
        "aupr": pooled.get("aupr"), "aupr_ci": pooled.get("aupr_ci"), "n_test": pooled.get("n"),
        "epsilon_per_site_max": max(eps, default=None), "per_site": sites,
        "membership_auc_max": max(mia, default=None), "tpr_at_1pct_fpr_max": max(tpr, default=None),
        "control_auc_max": max(ctrl, default=None),
        "schedule": schedule(run_dir),
        "rounds": [{k: r.get(k) for k in ("round", "sites", "skipped")} for r in m.rounds or []],
        "failed_sites": m.failed_sites(), "failures": [f.model_dump() for f in m.failures],
        "wall_s": wall, "timings_s": m.timings.model_dump(), "run_id": m.run_id, "overrides": overrides,
        # per row: rows measured by separate invocations (or merged from two machines' files) keep theirs
        "git_commit": started_at_commit(),
    }


def markdown(rows: list[dict]) -> str:
    def f(v, d=3):
        return "–" if v is None else f"{v:.{d}f}"

    out = ["| method | sites | ε target | ε per site (accountant) | AUROC [95% CI] | AUPR [95% CI] | "
           "MIA AUC / TPR@1%FPR / control (max over sites) | wall time |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['method']} | {r['partition']} | {r['privacy']} | failed: {r['error'][:80]} | | | | |")
            continue
        out.append(f"| {r['method']} | {r['partition']} | {r['target_epsilon']:g} | "
                   f"{f(r['epsilon_per_site_max'], 2)} | "
                   f"{with_ci(r['auroc'], r['auroc_ci'])} | {with_ci(r['aupr'], r['aupr_ci'])} | "
                   f"{f(r['membership_auc_max'])} / {f(r['tpr_at_1pct_fpr_max'])} / {f(r['control_auc_max'])} | "
                   f"{r['wall_s'] / 60:.1f} min |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=("tune", "test"), required=True)
    ap.add_argument("--config", default=str(ROOT / "configs" / "kermany-private-cpu.yaml"))
    ap.add_argument("--only", default="", help="comma-separated method:partition:level keys (parts may be *)")
    ap.add_argument("--set", action="append", default=[], help="config override for every run")
    ap.add_argument("--name", default="")
    ap.add_argument("--merge", action="append", default=[], metavar="FILE",
                    help="add the rows of another result file of this benchmark (another invocation or machine) "
                         "that this one lacks, write, and exit without running anything")
    args = ap.parse_args()
    record_start()
    name = args.name or f"private_utility_{args.split}"
    out_path = RESULTS / f"{name}.json"
    rows = [r for r in (json.loads(out_path.read_text())["rows"] if out_path.is_file() else []) if "error" not in r]
    wanted = [k.split(":") for k in args.only.split(",") if k]

    def selected(key: tuple[str, str, str]) -> bool:
        return not wanted or any(all(w in ("*", part) for w, part in zip(pattern, key)) for pattern in wanted)

    def save() -> None:
        order = [(m, p, e) for p in PARTITIONS for e in EPSILONS for m in METHODS]
        rows.sort(key=lambda r: order.index((r["method"], r["partition"], r["privacy"]))
                  if (r["method"], r["partition"], r["privacy"]) in order else 999)
        write_result(name, {"data": KERMANY_64.name, "split": args.split, "methods": METHODS, "common": COMMON,
                            "rows": rows, "table": markdown(rows)})

    if args.merge:
        have = {(r["method"], r["partition"], r["privacy"]) for r in rows}
        for other in args.merge:
            theirs = json.loads(Path(other).read_text())
            if theirs.get("split") != args.split:
                raise SystemExit(f"--merge {other}: rows of the {theirs.get('split')!r} split, not {args.split!r}")
            for r in theirs["rows"]:
                key = (r["method"], r["partition"], r["privacy"])
                if "error" not in r and key not in have:
                    rows.append({**r, "git_commit": r.get("git_commit", theirs.get("git_commit"))})
                    have.add(key)
        save()
        print(markdown(rows))
        return

    data = require(KERMANY_64)  # merging reads result files only; running needs the images
    with tempfile.TemporaryDirectory() as tmp:
        source = tuning_source(data, Path(tmp)) if args.split == "tune" else data
        split_over = [f"data.test_fraction={TUNE_FRACTION}"] if args.split == "tune" else []
        done = {(r["method"], r["partition"], r["privacy"]) for r in rows}
        checkpoints: dict[str, str] = {}
        for partition, part_over in PARTITIONS.items():
            for level, eps in EPSILONS.items():
                for method, method_over in METHODS.items():
                    key = (method, partition, level)
                    if key in done or not selected(key) or (not wanted and method not in FINAL_METHODS):
                        continue
                    method_over = [o.replace(f"{{phantom_init:{f}}}", phantom_checkpoint(f, args.config, Path(tmp),
                                                                                          checkpoints))
                                   if "{phantom_init:" in o and (f := o.split("{phantom_init:")[1].rstrip("}"))
                                   else o for o in method_over]
                    over = [f"data.source={source}", f"run.name=pu-{method}-{partition}-{level}", *COMMON,
                            *part_over, *method_over, *split_over, f"privacy.epsilon={eps}", *args.set]
                    t0 = time.perf_counter()
                    try:
                        cfg = load_config(args.config, over)
                        run_dir, m = simulate(cfg)
                        rows.append(row_of(method, partition, level, run_dir, m, time.perf_counter() - t0,
                                           [*method_over, *args.set], cfg))
                    except Exception as err:  # keep going; the table says what failed
                        traceback.print_exc()
                        rows.append({"method": method, "partition": partition, "privacy": level,
                                     "error": f"{type(err).__name__}: {err}"})
                    print(markdown(rows[-1:]), flush=True)
                    save()
    save()
    print(markdown(rows))


if __name__ == "__main__":
    main()
