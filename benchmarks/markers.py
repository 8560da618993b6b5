"""Burned-in markers on the real Kermany X-rays: how many images carry one, by class and split.

Runs ``fedsynth.data.markers.detect_markers`` (its frozen defaults, chosen on phantoms and
by eye, never against a label) on every image of ``kermany-pneumonia-64.npz`` at 64 px and,
downsampled, at 32 px (the CPU benchmarks' resolution). Counts only are written: no pixel,
mask or grid of the real images leaves ``../shared`` (``--grid DIR`` writes a before/after
grid for a person to look at, outside the project).

A class difference in the flagged share is what a shortcut needs: a classifier can learn a
marker that is more common in one class. Kermany's pediatric images come from one centre,
so any such difference is that centre's, not a property of pneumonia.

    .venv/bin/python -m benchmarks.markers [--grid /tmp/markers]

Writes benchmarks/results/markers.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.common import KERMANY_64, record_start, require, write_result
from fedsynth.classifier.metrics import wilson_interval
from fedsynth.data.ingest import load_source
from fedsynth.data.markers import detect_markers


def shares(touched: np.ndarray, labels: np.ndarray, split: np.ndarray) -> dict:
    out = {}
    for name, mask in {"all": np.ones_like(touched, bool), "normal": labels == 0, "pneumonia": labels == 1,
                       "train": split == "train", "test": split == "test"}.items():
        k, n = int(touched[mask].sum()), int(mask.sum())
        out[name] = {"flagged": k, "images": n, "share": k / n if n else None, "share_ci": list(wilson_interval(k, n))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", type=Path, default=None, help="folder OUTSIDE the project for before/after grids")
    args = ap.parse_args()
    record_start()
    data = require(KERMANY_64)
    rows = {}
    for res in (64, 32):
        ds, _ = load_source(data, res)
        split = ds.split.astype(str) if ds.split is not None else np.full(len(ds), "train")
        t = time.perf_counter()
        report = detect_markers(ds.images)
        seconds = time.perf_counter() - t
        rows[str(res)] = {"resolution": res, "n": len(ds), "seconds": seconds,
                          "seconds_per_1000": 1000 * seconds / len(ds),
                          "pixel_share_touched": report.summary()["pixel_share_touched"],
                          "shares": shares(report.touched, ds.labels, split)}
        print(res, rows[str(res)]["shares"]["all"], f"{seconds:.0f} s", flush=True)
        if args.grid is not None:
            from fedsynth.evaluation.grids import image_grid

            args.grid.mkdir(parents=True, exist_ok=True)
            image_grid(report.before_after(ds.images, k=12), args.grid / f"kermany_markers_{res}.png",
                       f"Kermany {res} px: flagged images, masks, removed")
    write_result("markers", {"data": data.name, "detector": "fedsynth.data.markers defaults", "rows": rows})


if __name__ == "__main__":
    main()
