"""How far apart DP-SGD GAN runs land that differ only in their DP noise: the question behind the
federated DP GAN's near-chance AUROC (is it federation, Opacus's per-sample engine, or the GAN?).

One simulated Kermany site (site-0 of 3 IID sites, about 1,740 images of the official *train*
split, 32 px) trains the conditional GAN with DP-SGD at epsilon 10, delta 1e-5, 20 epochs at the
default batch 16 (the ``federated-gan`` row's schedule), in one of three arms:

* ``continuous``: one fit of 20 epochs;
* ``rounds``: 4 rounds of 5 epochs, each round a fresh GAN loaded from the last one's
  ``training_state`` (what a federated site does; one site, so nothing is averaged); the noise
  is calibrated for the 20 epochs in all, as a federated site's is;
* ``batch-64``: one fit at expected batch 64, 40 epochs (a larger-batch schedule).

each with Opacus's ``hooks`` or ``ghost`` engine (``--engines``). A run's only randomness that
differs from another run's is the DP noise and the Poisson batches (OS entropy, as in production);
the network's initial weights and the seeds are the same. Each run samples 1,000 synthetic
images per class, trains the small CNN on them (5 epochs) and scores it on site-1's real images
(also the official train split: the test split is never read here).

    .venv/bin/python -m benchmarks.dp_gan_spread --runs 2 --arms continuous --engines hooks,ghost
    .venv/bin/python -m benchmarks.dp_gan_spread --runs 1 --arms continuous --engines ghost \
        --set generator.discriminator_channels=8 --set generator.batch_size=64 --set generator.epochs=40

``--set`` runs a candidate schedule on top of an arm (recorded per run; summarised as an arm of its own).

Writes benchmarks/results/dp_gan_spread.json after every run (a rerun adds to the runs it has), with a
summary per arm and engine and, where an arm has both engines, hooks against ghost (pairs won, exact
one-sided Mann-Whitney p). ``--runs 0`` recomputes the summary of the runs the file has.

The ``rounds`` arm repeats, on purpose, what ``Site.train_round`` does with a GAN (a fresh model per round
loaded from the last state, the round's seed, noise calibrated for all rounds) without the site's
ledger and federation around it, so that only the round trips differ from ``continuous``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import KERMANY_64, RESULTS, ROOT, record_start, require, started_at_commit, write_result
from benchmarks.private_utility import tuning_source

ARMS = ("continuous", "rounds", "batch-64")
ENGINES = ("hooks", "ghost")


def one_run(arm: str, engine: str, source: Path, extra: tuple[str, ...] = ()) -> dict:
    from fedsynth.classifier.metrics import auroc
    from fedsynth.classifier.train import train_classifier
    from fedsynth.client.site_data import simulated_sites
    from fedsynth.config import load_config
    from fedsynth.generators import build_generator
    from fedsynth.privacy.dp import plan_training

    over = [f"data.source={source}", "generator.family=gan", f"privacy.grad_sample_mode={engine}",
            "classifier.epochs=5"]
    if arm == "batch-64":
        over += ["generator.batch_size=64", "generator.epochs=40"]
    elif arm == "continuous":
        over += ["generator.epochs=20"]
    over += list(extra)  # --set: a candidate schedule on top of the arm's
    cfg = load_config(str(ROOT / "configs" / "kermany-private-cpu.yaml"), over)
    sites = simulated_sites(cfg)
    train, held_out = sites[0].train, sites[1].train
    gcfg = cfg.generator
    start = time.perf_counter()
    if arm == "rounds":
        rounds, epochs = 4, 5
        state = build_generator(gcfg.model_copy(update={"epochs": epochs}), 32, seed=0).training_state()
        for r in range(1, rounds + 1):
            gen = build_generator(gcfg.model_copy(update={"epochs": epochs}), 32, seed=1 + 7919 * r)
            gen.load_training_state(state)
            report = gen.fit(train.images, train.labels,
                             privacy=plan_training(cfg.privacy, len(train), gcfg.batch_size, epochs, rounds * epochs))
            state = gen.training_state()
        epsilon = None  # one round's; the site's ledger composes the four (about 10)
    else:
        epochs = gcfg.epochs
        gen = build_generator(gcfg.model_copy(update={"epochs": epochs}), 32, seed=1)
        report = gen.fit(train.images, train.labels,
                         privacy=plan_training(cfg.privacy, len(train), gcfg.batch_size, epochs))
        epsilon = report.privacy["epsilon"]
    fit_s = time.perf_counter() - start
    x = np.concatenate([gen.sample(1000, 0, seed=5), gen.sample(1000, 1, seed=6)])
    y = np.repeat([0, 1], 1000)
    clf = train_classifier(x, y, cfg.classifier, arch="small-cnn", resolution=32, seed=0, device="cpu")
    real_gap = np.abs(train.images[train.labels == 0].mean(0) - train.images[train.labels == 1].mean(0)).mean()
    return {
        "arm": arm, "engine": engine, "overrides": list(extra),
        "auroc_held_out": auroc(held_out.labels, clf.predict_proba(held_out.images)),
        "epsilon": epsilon, "mechanism": report.privacy["mechanism"],
        # the mean absolute difference of the two class means, synthetic against real (how much class
        # signal the generator draws, and whether it exaggerates it)
        "class_mean_gap": {"synthetic": float(np.abs(x[:1000].mean(0) - x[1000:].mean(0)).mean()),
                           "real": float(real_gap)},
        "pixel_std": {"synthetic": float(x.std()), "real": float(train.images.std())},
        "fit_s": fit_s, "n_train": len(train), "n_held_out": len(held_out),
        "git_commit": started_at_commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _label(run: dict) -> str:
    """An arm's name, with the --set overrides its runs used (a candidate schedule is its own arm)."""
    extra = run.get("overrides") or []
    return run["arm"] + (f" [{' '.join(extra)}]" if extra else "")


def summary(runs: list[dict]) -> dict:
    """Per arm and engine: runs, min, median, max; per arm with both engines: in how many (hooks, ghost)
    pairs hooks scored higher, and the exact one-sided Mann-Whitney p that hooks score higher."""
    from scipy.stats import mannwhitneyu

    by, engines, comparisons = {}, [], []
    for arm in dict.fromkeys(_label(r) for r in runs):
        for engine in ENGINES:
            a = [r["auroc_held_out"] for r in runs if _label(r) == arm and r["engine"] == engine]
            if a:
                by[arm, engine] = a
                engines.append({"arm": arm, "engine": engine, "runs": len(a), "min": min(a),
                                "median": statistics.median(a), "max": max(a)})
        if (arm, "hooks") in by and (arm, "ghost") in by:
            h, g = by[arm, "hooks"], by[arm, "ghost"]
            test = mannwhitneyu(h, g, alternative="greater", method="exact")
            comparisons.append({"arm": arm, "pairs_hooks_higher": sum(a > b for a in h for b in g),
                                "pairs": len(h) * len(g), "mann_whitney_p_hooks_higher": float(test.pvalue)})
    return {"by_engine": engines, "hooks_against_ghost": comparisons}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2, help="runs per arm and engine (0: only recompute the summary "
                    "of the runs the result file has)")
    ap.add_argument("--arms", default="continuous", help=f"comma-separated, of {', '.join(ARMS)}")
    ap.add_argument("--engines", default="hooks,ghost", help=f"comma-separated, of {', '.join(ENGINES)}")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override on top of each arm (a candidate schedule; repeatable; recorded per run)")
    args = ap.parse_args()
    arms, engines = args.arms.split(","), args.engines.split(",")
    bad = sorted(set(arms) - set(ARMS)) + sorted(set(engines) - set(ENGINES))
    if bad or args.runs < 0:
        ap.error(f"unknown arm or engine {bad}, or --runs below 0")
    record_start()
    data = require(KERMANY_64)
    torch.set_num_threads(1)  # as one simulated site gets
    path = RESULTS / "dp_gan_spread.json"
    runs = json.loads(path.read_text())["runs"] if path.exists() else []
    load_before = os.getloadavg()[0]

    def write() -> None:
        write_result("dp_gan_spread", {"data": data.name, "torch_threads": 1, "runs": runs, "summary": summary(runs),
                                       "load_average_1min": [load_before, os.getloadavg()[0]]})

    if args.runs == 0:
        write()
        return
    with tempfile.TemporaryDirectory() as tmp:
        source = tuning_source(data, Path(tmp))  # the official train split alone
        for _ in range(args.runs):
            for arm in arms:
                for engine in engines:
                    runs.append(one_run(arm, engine, source, tuple(args.set)))
                    shown = ("arm", "engine", "overrides", "auroc_held_out", "epsilon", "fit_s")
                    print(json.dumps({k: runs[-1][k] for k in shown}), flush=True)
                    write()


if __name__ == "__main__":
    main()
