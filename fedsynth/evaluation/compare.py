"""One table of key figures across finished runs (``fedsynth compare RUN_DIR...``).

Read from each run's ``config.yaml`` and ``metrics.json`` only. Each row keeps the raw
numbers (for CSV) and :func:`display_rows` formats them (for the terminal and Markdown).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from fedsynth.errors import FedsynthError
from fedsynth.evaluation.report.run_data import dig
from fedsynth.metrics_schema import Figures, RunMetrics
from fedsynth.presentation import as_number, fmt_bytes, fmt_seconds, markdown_table
from fedsynth.rundir import RunDir, RunDirError


class CompareError(FedsynthError):
    """A folder given to compare is not a finished run."""


# (column, header) in table order; CSV uses the column names, the display the headers
COLUMNS: list[tuple[str, str]] = [
    ("run_id", "run"),
    ("mode", "mode"),
    ("partition", "partition"),
    ("sites", "sites ok"),
    ("dp_epsilon", "DP ε requested"),
    ("max_spent_epsilon", "max ε spent"),
    ("generators", "generators"),
    ("auroc", "pooled AUROC [CI]"),
    ("aupr", "pooled AUPR [CI]"),
    ("trtr_auroc", "TRTR AUROC [CI]"),
    ("frechet_distance", "FD"),
    ("fidelity_precision", "precision"),
    ("fidelity_recall", "recall"),
    ("bytes_per_site", "bytes sent / site"),
    ("wall_s", "wall time"),
    ("flags", "warnings"),
]

CSV_FIELDS = ["run_id", "mode", "partition", "sites_ok", "sites_total", "dp_epsilon", "dp_delta",
              "max_spent_epsilon", "generators", "auroc", "auroc_lo", "auroc_hi", "aupr", "aupr_lo", "aupr_hi",
              "trtr_auroc", "trtr_auroc_lo", "trtr_auroc_hi", "frechet_distance", "fidelity_precision",
              "fidelity_recall", "fidelity_encoder", "bytes_per_site", "wall_s", "flags", "path"]




def _ci(figures: Figures | None, key: str) -> tuple[float | None, float | None, float | None]:
    if figures is None:
        return None, None, None
    lo, hi = getattr(figures, f"{key}_ci")
    return as_number(getattr(figures, key)), as_number(lo), as_number(hi)


def load(run_dir: str | Path) -> tuple[RunMetrics, dict]:
    try:
        run = RunDir.open_finished(run_dir)
        metrics = run.read_metrics()
    except RunDirError as err:
        raise CompareError(str(err)) from None
    try:
        config = run.read_config()
    except RunDirError:
        config = {}
    return metrics, config


def _flags(metrics: RunMetrics) -> list[str]:
    flags = []
    if metrics.data.phantom:
        flags.append("PHANTOM")
    if metrics.mode == "centralized-real":
        flags.append("CENTRALIZED")
    elif not metrics.private:
        flags.append("NOT-PRIVATE")
    if metrics.failed_sites():
        flags.append("DROPPED")
    return flags


def _generators(metrics: RunMetrics, config: dict) -> list[str]:
    if metrics.mode in ("fedavg-classifier", "centralized-real"):
        return []
    fams = metrics.generator_families()
    if not fams:
        fams = {dig(config, "generator", "family")} | {
            g.get("family") for g in (dig(config, "sites", "generators") or {}).values() if isinstance(g, dict)}
        fams.discard(None)
    return sorted(str(f) for f in fams)


def summarize(run_dir: str | Path) -> dict[str, Any]:
    """The key figures of one finished run, as raw values."""
    metrics, config = load(run_dir)
    fed = config.get("federation") or {}
    partition = fed.get("partition")
    if partition == "dirichlet":
        partition = f"dirichlet α={fed.get('dirichlet_alpha')}"
    requested = metrics.privacy.requested or config.get("privacy") or {}
    spent = metrics.spent_epsilons()
    trtr = metrics.utility.trtr
    auroc, aupr = _ci(metrics.pooled, "auroc"), _ci(metrics.pooled, "aupr")
    trtr_auroc = _ci(trtr.pooled if trtr else None, "auroc")
    fid = metrics.fidelity.pooled
    sent = [s.bytes_sent for s in metrics.sites.values() if s.bytes_sent is not None]
    return {
        "run_id": metrics.run_id or Path(run_dir).name,
        "mode": metrics.mode or dig(config, "run", "mode"),
        "partition": partition,
        "sites_ok": len(metrics.ok_sites()),
        "sites_total": len(metrics.sites),
        "dp_epsilon": as_number(requested.get("epsilon")) if requested else None,
        "dp_delta": as_number(requested.get("delta")) if requested else None,
        "max_spent_epsilon": max(spent) if spent and metrics.private else None,
        "generators": "+".join(_generators(metrics, config)),
        "auroc": auroc[0], "auroc_lo": auroc[1], "auroc_hi": auroc[2],
        "aupr": aupr[0], "aupr_lo": aupr[1], "aupr_hi": aupr[2],
        "trtr_auroc": trtr_auroc[0], "trtr_auroc_lo": trtr_auroc[1], "trtr_auroc_hi": trtr_auroc[2],
        "frechet_distance": as_number(fid.frechet_distance) if fid else None,
        "fidelity_precision": as_number(fid.precision) if fid else None,
        "fidelity_recall": as_number(fid.recall) if fid else None,
        "fidelity_encoder": fid.encoder if fid else None,
        "bytes_per_site": sum(sent) / len(sent) if sent else None,
        "wall_s": as_number(metrics.timings.total_s),
        "flags": " ".join(_flags(metrics)),
        "path": str(Path(run_dir).resolve()),
    }


def compare(run_dirs: list[str | Path]) -> list[dict[str, Any]]:
    if not run_dirs:
        raise CompareError("give at least one run directory")
    return [summarize(d) for d in run_dirs]


# ---- formatting -----------------------------------------------------------------------------------


def _f(x: Any, digits: int = 3) -> str:
    v = as_number(x)
    return "–" if v is None else f"{v:.{digits}f}"


def _g(x: Any, digits: int = 3) -> str:
    v = as_number(x)
    return "–" if v is None else f"{v:.{digits}g}"


def _with_ci(row: dict, key: str) -> str:
    v, lo, hi = row.get(key), row.get(f"{key}_lo"), row.get(f"{key}_hi")
    if as_number(v) is None:
        return "–"
    if as_number(lo) is None or as_number(hi) is None:
        return _f(v)
    return f"{_f(v)} [{_f(lo)}, {_f(hi)}]"




def display_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    """One list of formatted cells per run, in :data:`COLUMNS` order."""
    out = []
    for r in rows:
        eps = "none" if r["dp_epsilon"] is None else _g(r["dp_epsilon"]) + (
            f" (δ {_g(r['dp_delta'], 2)})" if r.get("dp_delta") is not None else "")
        cells = {
            "run_id": str(r["run_id"]),
            "mode": str(r["mode"]),
            "partition": str(r["partition"] or "–"),
            "sites": f"{r['sites_ok']}/{r['sites_total']}",
            "dp_epsilon": eps,
            "max_spent_epsilon": _g(r["max_spent_epsilon"], 4),
            "generators": r["generators"] or "–",
            "auroc": _with_ci(r, "auroc"),
            "aupr": _with_ci(r, "aupr"),
            "trtr_auroc": _with_ci(r, "trtr_auroc"),
            "frechet_distance": _g(r["frechet_distance"], 4),
            "fidelity_precision": _f(r["fidelity_precision"]),
            "fidelity_recall": _f(r["fidelity_recall"]),
            "bytes_per_site": fmt_bytes(r["bytes_per_site"]),
            "wall_s": fmt_seconds(r["wall_s"]),
            "flags": r["flags"] or "–",
        }
        out.append([cells[c] for c, _ in COLUMNS])
    return out


def to_markdown(rows: list[dict[str, Any]]) -> str:
    headers = [h for _, h in COLUMNS]
    lines = markdown_table(headers, display_rows(rows))
    notes = ("AUROC/AUPR: pooled over every site's real test split, with bootstrap CIs. TRTR: each site's own "
             "classifier trained on its real images (pooled). FD, precision, recall: fidelity of the pooled "
             "synthetic sample, averaged over sites (each site's own encoder; compare only runs with the same "
             "encoder). Warnings: PHANTOM (not X-rays), NOT-PRIVATE (no DP at some site), DROPPED (a site failed), "
             "CENTRALIZED (real images pooled: simulation-only upper bound).")
    return "\n".join(lines) + "\n\n" + notes + "\n"


def write_markdown(rows: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_markdown(rows))
    return path


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r.get(k) is None else r.get(k) for k in CSV_FIELDS})
    return path
