"""Kermany benchmark of the subtype task: normal / bacteria / virus, real-trained vs synthetic-only.

Bacterial against viral pneumonia is the hard part (Kermany et al. 2018 report it beside
normal against pneumonia). 3 simulated IID sites on the official train split, 32 px, the
settings of ``configs/kermany-cpu.yaml`` with ``data.label_set: [normal, bacteria, virus]``
and ``classifier.task: subtype``; tested on the official test split (624 images) by the
sites, pooled from their histograms and confusion matrices (never a per-image score).
Rows:

* ``real-trained``: run.mode centralized-real, the same classifier on the pooled real
  training images (the simulation-only upper bound);
* ``synthetic-only``: run.mode substitution, each site's GAN conditioned on the three
  classes releases 1,000 images per class, the classifier trains on them alone (no DP).

Each row also records the exact per-class AUROC from per-image scores on the official test
split (a check of the pooled figures, computed here in the benchmark, which may read the test
images) and the binary figures (pneumonia = not normal) of the same classifier.

    .venv/bin/python -m benchmarks.subtype [--only real-trained] [--set key=value ...]

Writes benchmarks/results/subtype.json after every row (a rerun skips the rows it has).
"""

from __future__ import annotations

import argparse
import json
import time
import traceback

import numpy as np

from benchmarks.common import KERMANY_64, RESULTS, ROOT, record_start, require, write_result
from fedsynth.classifier.metrics import auroc
from fedsynth.classifier.train import Classifier
from fedsynth.client.site_data import simulated_sites
from fedsynth.config import load_config
from fedsynth.data.dataset import concat
from fedsynth.data.labels import SUBTYPES, class_indices
from fedsynth.rundir import CLASSIFIER_FILE
from fedsynth.simulation import simulate

COMMON = ["data.label_set=[normal,bacteria,virus]", "classifier.task=subtype", "evaluation.site_baselines=false",
          "evaluation.fidelity=false"]
ROWS = {"real-trained": ["run.mode=centralized-real"], "synthetic-only": ["run.mode=substitution"]}


def exact_figures(clf: Classifier, images: np.ndarray, classes: np.ndarray) -> dict:
    """Per-class one-vs-rest AUROC, accuracy and bacteria-vs-virus AUROC from per-image scores."""
    p = clf.predict_class_proba(images)
    per_class = {name: auroc((classes == c).astype(np.int64), p[:, c]) for c, name in enumerate(SUBTYPES)}
    sick = classes > 0
    return {
        "per_class_auroc": per_class,
        "macro_auroc": float(np.mean(list(per_class.values()))),
        "accuracy": float((p.argmax(1) == classes).mean()),
        "binary_auroc": auroc(sick.astype(np.int64), 1 - p[:, 0]),
        # among the pneumonia images: is it viral? (P(virus) against P(bacteria))
        "bacteria_vs_virus_auroc": auroc((classes[sick] == 2).astype(np.int64),
                                         p[sick, 2] / np.clip(p[sick, 1] + p[sick, 2], 1e-12, None)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "kermany-cpu.yaml"))
    ap.add_argument("--only", default="", help="comma-separated row names")
    ap.add_argument("--set", action="append", default=[], help="config override for every row")
    args = ap.parse_args()
    record_start()
    data = require(KERMANY_64)
    out_path = RESULTS / "subtype.json"
    rows = [r for r in (json.loads(out_path.read_text())["rows"] if out_path.is_file() else []) if "error" not in r]
    done = {r["row"] for r in rows}
    wanted = [w for w in args.only.split(",") if w] or list(ROWS)
    for name, over in ROWS.items():
        if name in done or name not in wanted:
            continue
        overrides = [f"data.source={data}", f"run.name=subtype-{name}", *COMMON, *over, *args.set]
        t0 = time.perf_counter()
        try:
            cfg = load_config(args.config, overrides)
            run_dir, m = simulate(cfg)
            test = concat([s.test for s in simulated_sites(cfg)])
            clf = Classifier.load(run_dir.file(CLASSIFIER_FILE))
            st = m.subtype.model_dump(mode="json") if m.subtype else None
            rows.append({
                "row": name, "overrides": [*over, *args.set], "run_id": run_dir.run_id,
                "pooled_subtype": st, "pooled_binary": m.pooled.model_dump(mode="json") if m.pooled else None,
                "exact_on_official_test": exact_figures(clf, test.images, class_indices(test, SUBTYPES)),
                "test_counts": {n: int((class_indices(test, SUBTYPES) == c).sum()) for c, n in enumerate(SUBTYPES)},
                "timings_s": m.timings.model_dump(mode="json"), "wall_s": time.perf_counter() - t0,
            })
        except Exception as err:  # keep going; the file says what failed
            traceback.print_exc()
            rows.append({"row": name, "error": f"{type(err).__name__}: {err}"})
        write_result("subtype", {"data": data.name, "config": args.config, "common": COMMON, "rows": rows,
                                 "table": table(rows)})
        print(table(rows), flush=True)


def table(rows: list[dict]) -> str:
    def ci(f: dict | None, key: str) -> str:
        if not f or f.get(key) is None:
            return "n/a"
        lo, hi = f.get(f"{key}_ci") or (None, None)
        return f"{f[key]:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None else "")

    out = ["| classifier | macro AUROC | normal | bacteria | virus | accuracy | bacteria vs virus (exact) | "
           "binary AUROC | wall |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['row']} | error: {r['error'][:80]} | | | | | | | |")
            continue
        st, ex = r["pooled_subtype"] or {}, r["exact_on_official_test"]
        pc = st.get("per_class", {})
        out.append(f"| {r['row']} | {ci(st, 'macro_auroc')} | " + " | ".join(ci(pc.get(n), "auroc") for n in SUBTYPES)
                   + f" | {ci(st, 'accuracy')} | {ex['bacteria_vs_virus_auroc']:.3f} | "
                   f"{ci(r['pooled_binary'], 'auroc')} | {r['wall_s'] / 60:.0f} min |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
