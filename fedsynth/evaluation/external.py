"""``fedsynth evaluate``: a hospital validates the consortium's classifier on its own labelled X-rays.

Load the classifier (a run directory or a classifier file) and the hospital's images (anything
:func:`fedsynth.data.ingest.load_source` reads, with labels), score them, and write two files
into a new folder: ``evaluation.json`` (every figure) and ``evaluation.html`` (one
self-contained page: no script, no external resource, the figure as a data URI). Neither holds a
per-image record: both can be shared without sharing a patient's score.

The figures: AUROC and AUPR with stratified bootstrap CIs; calibration (reliability diagram over
10 equal-width bins, ECE, Brier); sensitivity/specificity with Wilson CIs at the run's threshold
and at the thresholds reaching 90% and 95% sensitivity on these images (descriptive: chosen on
the evaluated data); subgroup tables for the metadata columns present (source, view, sex, age);
and the out-of-distribution rate, with the figures recomputed without the flagged images.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth import __version__
from fedsynth.classifier.metrics import evaluate_scores
from fedsynth.classifier.predict import load_run_classifier
from fedsynth.classifier.train import Classifier
from fedsynth.data.dataset import CLASS_NAMES, META_COLUMNS, ImageSet
from fedsynth.data.ingest import IngestReport, load_source
from fedsynth.errors import DataError
from fedsynth.evaluation.calibration import (
    N_BINS,
    SENSITIVITY_TARGETS,
    calibration_report,
    operating_points,
    subgroup_metrics,
)
from fedsynth.presentation import esc, facts, figure_png, fmt, fmt_ci, img, page_shell, pct, pyplot, table

EVALUATION_JSON = "evaluation.json"
EVALUATION_HTML = "evaluation.html"
SCHEMA = "fedsynth-external-evaluation/1"
HIGH_OOD_RATE = 0.10  # above this share of flagged images the page warns in its banner
SMALL_N = 100  # fewer images: the page warns that the intervals are wide


@dataclass
class ExternalEvaluation:
    out_dir: Path
    json_path: Path
    html_path: Path
    result: dict[str, Any]
    report: IngestReport


# ---- where the files go ------------------------------------------------------------------------


def default_out_dir(data: str | Path) -> Path:
    """``evaluation-<data name>`` beside DATA; ``-2``, ``-3``, ... appended when that exists (never reused)."""
    path = Path(data).resolve()
    name = path.stem if path.is_file() else path.name
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "data"
    base = path.parent / f"evaluation-{name}"
    candidate, k = base, 2
    while candidate.exists():
        candidate, k = base.with_name(f"{base.name}-{k}"), k + 1
    return candidate


def check_out_dir(out: str | Path | None, data: str | Path) -> Path:
    """The folder to write into; DataError when ``out`` is a file or already holds an evaluation
    (nothing is ever overwritten). Checked before anything is scored; created only at the end."""
    if out is None:
        return default_out_dir(data)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; give a folder (it is created when missing)")
    if out.is_dir():
        taken = [n for n in (EVALUATION_JSON, EVALUATION_HTML) if (out / n).exists()]
        if taken:
            raise DataError(f"--out {out} already holds {', '.join(taken)}; nothing is overwritten: give another "
                            "folder (or leave --out out for a new one beside the data)")
    return out


# ---- the figures -------------------------------------------------------------------------------


def _clean(x: Any) -> Any:
    """JSON-safe: NaN and infinities as null, numpy scalars as Python numbers, tuples as lists."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    return x


def _metrics(labels: np.ndarray, probs: np.ndarray, threshold: float, n_boot: int, level: float,
             seed: int) -> dict[str, Any]:
    m = evaluate_scores(labels, probs, threshold, n_boot=n_boot, level=level, seed=seed).to_dict()
    m["prevalence"] = m["n_positive"] / m["n"] if m["n"] else None
    return m


def evaluate_images(clf: Classifier, ds: ImageSet, *, n_boot: int = 1000, level: float = 0.95,
                    seed: int = 0) -> dict[str, Any]:
    """Every figure of the evaluation of ``clf`` on ``ds`` (labelled, both classes present)."""
    labels = np.asarray(ds.labels, dtype=np.int64)
    counts = {name: int((labels == c).sum()) for c, name in enumerate(CLASS_NAMES)}
    if min(counts.values()) == 0:
        present = next(name for name, n in counts.items() if n)
        raise DataError(f"the data holds {present} X-rays only ({len(labels)} images): AUROC, AUPR, calibration "
                        "and specificity or sensitivity need both normal and pneumonia images")
    probs = clf.predict_proba(ds.images).astype(np.float64)
    threshold = float(clf.threshold)
    result: dict[str, Any] = {
        "metrics": _metrics(labels, probs, threshold, n_boot, level, seed),
        "calibration": calibration_report(labels, probs, N_BINS),
        "operating_points": operating_points(labels, probs, threshold, targets=SENSITIVITY_TARGETS, level=level),
        "subgroups": {col: subgroup_metrics(labels, probs, ds.meta[col], threshold, column=col, n_boot=n_boot,
                                            level=level, seed=seed + 10 * (i + 1))
                      for i, col in enumerate(META_COLUMNS) if col in ds.meta},
    }
    result["ood"] = _ood_section(clf, ds, labels, probs, threshold, n_boot, level, seed)
    return result


def _ood_section(clf: Classifier, ds: ImageSet, labels: np.ndarray, probs: np.ndarray, threshold: float,
                 n_boot: int, level: float, seed: int) -> dict[str, Any]:
    ref = clf.ood
    if ref is None:
        return {"available": False,
                "note": "this classifier has no out-of-distribution reference in its header (saved before fedsynth "
                        "computed one, or not trained by fedsynth's train_classifier): no image can be flagged"}
    try:
        scores = clf.ood_scores(ds.images)
    except ValueError as err:  # a header whose statistics do not fit the model
        raise DataError(f"{clf.arch} classifier: {err}") from None
    flagged = scores > float(ref["threshold"])
    keep = ~flagged
    section: dict[str, Any] = {
        "available": True,
        "threshold": float(ref["threshold"]),
        "quantile": ref.get("quantile"),
        "reference": ref.get("reference"),
        "n_flagged": int(flagged.sum()),
        "rate": float(flagged.mean()),
        "n_flagged_by_class": {name: int((flagged & (labels == c)).sum()) for c, name in enumerate(CLASS_NAMES)},
        "score_quantiles": {q: float(np.quantile(scores, float(q))) for q in ("0.05", "0.5", "0.95")},
    }
    y, p = labels[keep], probs[keep]
    if y.size and 0 < y.sum() < y.size:
        section["metrics_in_distribution"] = _metrics(y, p, threshold, n_boot, level, seed + 7)
    else:
        section["metrics_in_distribution"] = None
        section["note"] = ("without the flagged images no image is left" if y.size == 0 else
                           "without the flagged images only one class is left: no AUROC")
    return section


def _warnings(clf: Classifier, ds: ImageSet, result: dict[str, Any], report: IngestReport) -> list[str]:
    out = []
    if clf.meta.get("phantom"):
        out.append("this classifier was trained on synthetic images made from PHANTOMS (procedural images, not "
                   "X-rays): its figures say nothing about clinical use")
    if ds.phantom:
        out.append("the evaluated images are PHANTOMS, not X-rays")
    if len(ds) < SMALL_N:
        out.append(f"only {len(ds)} images: the confidence intervals are wide")
    ood = result["ood"]
    if not ood["available"]:
        out.append(ood["note"])
    elif ood["rate"] > HIGH_OOD_RATE:
        out.append(f"{ood['n_flagged']} of {len(ds)} images ({ood['rate']:.0%}) look out of distribution (unlike "
                   "the classifier's training images): the classifier may not apply to these images")
    if report.skipped:
        out.append(f"{len(report.skipped)} input(s) skipped (listed below)")
    return out


def run_external_evaluation(run_dir: str | Path, data: str | Path, out: str | Path | None = None, *,
                            n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                            device: str = "cpu") -> ExternalEvaluation:
    """Load, score, write ``evaluation.json`` and ``evaluation.html`` into a new folder; DataError (one
    line) for everything a user can get wrong: a missing run, unreadable data, no labels, one class."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 0:
        raise DataError(f"--bootstrap must be a whole number >= 0; got {n_boot!r}")
    if not 0 < level < 1:
        raise DataError(f"the confidence level must lie in (0, 1); got {level!r}")
    out_dir = check_out_dir(out, data)
    clf = load_run_classifier(run_dir, device=device)
    ds, report = load_source(data, clf.resolution, labeled=True)
    started = time.time()
    figures = evaluate_images(clf, ds, n_boot=n_boot, level=level, seed=seed)
    result = {
        "schema": SCHEMA,
        "fedsynth_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "classifier": {
            "path": str(run_dir),
            "arch": clf.arch,
            "resolution": clf.resolution,
            "threshold": float(clf.threshold),
            "threshold_rule": clf.meta.get("threshold_rule"),
            "trained_on": clf.meta.get("trained_on"),
            "phantom": bool(clf.meta.get("phantom", False)),
        },
        "data": {
            "source": str(data),
            "n": len(ds),
            "class_counts": ds.class_counts(),
            "prevalence": float(ds.labels.mean()),
            "metadata_columns": [c for c in META_COLUMNS if c in ds.meta],
            "n_found": report.n_found,
            "skipped": [{"path": s.path, "reason": s.reason} for s in report.skipped],
        },
        "settings": {"bootstrap": n_boot, "ci_level": level, "seed": seed, "calibration_bins": N_BINS,
                     "sensitivity_targets": list(SENSITIVITY_TARGETS)},
        **figures,
    }
    result["warnings"] = _warnings(clf, ds, result, report)
    result = _clean(result)
    page = render_html(result, reliability_png(result["calibration"], phantom=bool(clf.meta.get("phantom"))))
    json_path, html_path = _write(out_dir, json.dumps(result, indent=2, allow_nan=False), page)
    return ExternalEvaluation(out_dir, json_path, html_path, result, report)


def _write(out_dir: Path, text: str, page: str) -> tuple[Path, Path]:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, content in ((EVALUATION_JSON, text), (EVALUATION_HTML, page)):
            path = out_dir / name
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(content, encoding="utf-8")
            tmp.replace(path)
            paths.append(path)
    except OSError as err:
        raise DataError(f"cannot write the evaluation into {out_dir} ({err.strerror or err})") from None
    return paths[0], paths[1]


# ---- the page ----------------------------------------------------------------------------------


def reliability_png(calibration: dict[str, Any], *, phantom: bool = False) -> bytes:
    """The reliability diagram: observed pneumonia rate against mean predicted probability per bin
    (the diagonal is perfect calibration), and the count of images in each bin below it."""
    plt = pyplot()
    bins = calibration["bins"]
    n_bins = len(bins)
    centres = np.array([(b["lower"] + b["upper"]) / 2 for b in bins])
    width = 1.0 / n_bins
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(5.6, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 1.2]})
    ax.plot([0, 1], [0, 1], color="#999", lw=0.9, ls=(0, (2, 2)), label="perfect calibration")
    used = [i for i, b in enumerate(bins) if b["n"]]
    ax.bar(centres[used], [bins[i]["fraction_positive"] for i in used], width=width * 0.9, color="#1f4e9c",
           alpha=0.75, label="observed share of pneumonia")
    ax.plot([bins[i]["mean_probability"] for i in used], [bins[i]["fraction_positive"] for i in used], "o",
            color="#c76b00", ms=4, label="at the bin's mean probability")
    ax.set(ylabel="observed share of pneumonia", xlim=(0, 1), ylim=(0, 1.02),
           title=f"Reliability ({n_bins} equal-width bins): ECE {calibration['ece']:.3f}, "
                 f"Brier {calibration['brier']:.3f}")
    ax.title.set_fontsize(9.5)
    ax.grid(alpha=0.25)
    ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    counts = [b["n"] for b in bins]
    ax_n.bar(centres, counts, width=width * 0.9, color="#777")
    for c, n in zip(centres, counts):
        ax_n.text(c, n, str(n), ha="center", va="bottom", fontsize=7)
    ax_n.set(xlabel="predicted probability of pneumonia", ylabel="images", ylim=(0, max(counts) * 1.25 + 1))
    ax_n.grid(alpha=0.25, axis="y")
    if phantom:
        fig.suptitle("PHANTOM classifier - not for clinical use", color="#b35900", fontsize=10, fontweight="bold")
    fig.tight_layout()
    return figure_png(fig, dpi=100)


def render_html(result: dict[str, Any], reliability: bytes) -> str:
    """The evaluation on one page: no script, no external resource, the figure inline."""
    parts = [_heading(result), _discrimination(result), _calibration(result, reliability), _operating_points(result),
             _subgroups(result), _out_of_distribution(result)]
    skipped = result["data"]["skipped"]
    if skipped:
        parts.append("<section><h2>Skipped inputs</h2>" + table(
            ["input", "reason"], [[s["path"], s["reason"]] for s in skipped], cls="wide") + "</section>")
    parts.append("<footer>Written by fedsynth " + esc(result["fedsynth_version"]) + ". This page and "
                 f"{EVALUATION_JSON} hold aggregate figures only, no per-image score. Research software, not a "
                 "medical device.</footer>")
    return page_shell(f"fedsynth evaluation: {Path(result['data']['source']).name}", "\n".join(parts))


def _heading(result: dict[str, Any]) -> str:
    clf, data = result["classifier"], result["data"]
    out = [f"<h1>External validation of the consortium's classifier on {esc(Path(data['source']).name)}</h1>",
           facts([("classifier", f"{clf['arch']} at {clf['resolution']} px ({clf['path']})"),
                  ("trained on", clf.get("trained_on") or "–"),
                  ("threshold", f"{clf['threshold']:.3f} ({clf.get('threshold_rule') or 'rule not recorded'})"),
                  ("data", data["source"]),
                  ("images", f"{data['n']} ({data['class_counts']['normal']} normal, "
                             f"{data['class_counts']['pneumonia']} pneumonia)"),
                  ("created", result["created"]), ("fedsynth", result["fedsynth_version"])])]
    for w in result["warnings"]:
        cls = "phantom" if "PHANTOM" in w else "dropped"
        out.append(f"<div class='banner {cls}'><strong>warning</strong>{esc(w)}</div>")
    return "\n".join(out)


def _headline_row(label: str, m: dict[str, Any] | None) -> list[str]:
    if m is None:
        return [label, "–", "–", "–", "–", "–", "–"]
    return [label, str(m["n"]), str(m["n_positive"]), pct(m["prevalence"]), fmt_ci(m["auroc"], m["auroc_ci"]),
            fmt_ci(m["aupr"], m["aupr_ci"]),
            f"{fmt_ci(m['sensitivity'], m['sensitivity_ci'])} / {fmt_ci(m['specificity'], m['specificity_ci'])}"]


def _discrimination(result: dict[str, Any]) -> str:
    level, ood = result["settings"]["ci_level"], result["ood"]
    rows = [_headline_row("all images", result["metrics"])]
    if ood.get("available"):
        rows.append(_headline_row("without the out-of-distribution images", ood.get("metrics_in_distribution")))
    return ("<section><h2>Discrimination</h2>" + table(
        ["images", "n", "pneumonia", "prevalence", f"AUROC [{level:.0%} CI]", f"AUPR [{level:.0%} CI]",
         f"sensitivity / specificity at {result['classifier']['threshold']:.3f}"], rows, cls="wide")
        + f"<p class='explain'>AUROC: the chance that a random pneumonia X-ray scores above a random normal one "
          f"(0.5 is a coin toss). AUPR's chance level is the prevalence. Brackets: {level:.0%} stratified "
          f"bootstrap intervals ({result['settings']['bootstrap']} resamples); Wilson intervals for sensitivity "
          "and specificity.</p></section>")


def _calibration(result: dict[str, Any], reliability: bytes) -> str:
    cal = result["calibration"]
    bin_rows = [[f"{b['lower']:.1f}–{b['upper']:.1f}", str(b["n"]), fmt(b["mean_probability"]),
                 fmt(b["fraction_positive"])] for b in cal["bins"]]
    return (
        "<section><h2>Calibration</h2><div class='cards'>"
        f"<div class='card'><div class='k'>expected calibration error (ECE)</div><div class='v' id='ece'>"
        f"{fmt(cal['ece'])}</div><div class='s'>{cal['n_bins']} equal-width bins, weighted by their counts; "
        "0 is perfect</div></div>"
        f"<div class='card'><div class='k'>Brier score</div><div class='v' id='brier'>{fmt(cal['brier'])}</div>"
        "<div class='s'>mean squared error of the probability; 0 is perfect, 0.25 is always 0.5</div></div></div>"
        + img(reliability, "reliability diagram", "plot")
        + table(["bin", "images", "mean predicted probability", "observed share of pneumonia"], bin_rows)
        + "<p class='explain'>A calibrated classifier's bars follow the diagonal: of the images it gives 0.8, 80% "
          "have pneumonia. Calibration depends on the prevalence: a hospital whose prevalence differs from the "
          "synthetic training data's (balanced) sees a shift even when the ranking (AUROC) is good.</p></section>")


def _operating_points(result: dict[str, Any]) -> str:
    level = result["settings"]["ci_level"]
    rows = []
    for p in result["operating_points"]:
        name = esc(p["name"]) + (" <b class='warn'>(descriptive)</b>" if p["descriptive"] else "")
        rows.append([name, esc(fmt(p["threshold"], 4)), esc(fmt_ci(p["sensitivity"], p["sensitivity_ci"])),
                     esc(fmt_ci(p["specificity"], p["specificity_ci"])),
                     esc(f"{p['tp']} / {p['fp']} / {p['tn']} / {p['fn']}"), esc(p["chosen_on"])])
    return ("<section><h2>Operating points</h2>" + table(
        ["operating point", "threshold", f"sensitivity [{level:.0%} CI]", f"specificity [{level:.0%} CI]",
         "TP / FP / TN / FN", "threshold chosen on"], rows, cls="wide", raw=True)
        + "<p class='explain'>The run's threshold was fixed before these images were seen. The other rows "
          "(descriptive) use the highest threshold that reaches the target sensitivity on these very images: it "
          "is reached by construction here and the specificity is optimistic, so such a threshold is no validated "
          "operating point; validate it on other images before relying on it.</p></section>")


def _subgroups(result: dict[str, Any]) -> str:
    level = result["settings"]["ci_level"]
    out = ["<section><h2>Subgroups</h2>"]
    if not result["subgroups"]:
        out.append("<p class='note'>No metadata column (source, view, sex, age) in the data: no subgroup table. "
                   "Give them as npz arrays or labels.csv columns of those names.</p>")
    for col, groups in result["subgroups"].items():
        out.append(f"<h3 id='subgroup-{esc(col)}'>by {esc(col)}</h3>" + table(
            [col, "n", "pneumonia", "prevalence", f"AUROC [{level:.0%} CI]", "sensitivity", "specificity", ""],
            [[g["group"], str(g["n"]), str(g["n_positive"]), pct(g["prevalence"]), fmt_ci(g["auroc"], g["auroc_ci"]),
              fmt_ci(g["sensitivity"], g["sensitivity_ci"]), fmt_ci(g["specificity"], g["specificity_ci"]),
              g["note"]] for g in groups], cls="wide"))
    if result["subgroups"]:
        out.append(f"<p class='explain'>Sensitivity and specificity at the run's threshold "
                   f"({result['classifier']['threshold']:.3f}). Small groups have wide intervals.</p>")
    return "".join(out) + "</section>"


def _out_of_distribution(result: dict[str, Any]) -> str:
    ood = result["ood"]
    if not ood.get("available"):
        return f"<section><h2>Out-of-distribution inputs</h2><p class='note'>{esc(ood['note'])}</p></section>"
    by_class = ood["n_flagged_by_class"]
    body = (f"<p id='ood-rate'><b>{ood['n_flagged']}</b> of {result['data']['n']} images ({pct(ood['rate'])}) are "
            f"out of distribution ({by_class['normal']} normal, {by_class['pneumonia']} pneumonia).</p>"
            + "<p class='explain'>An image is flagged when the classifier's internal features lie further from "
              "those of its training images than " + esc(f"{100 * float(ood.get('quantile') or 0.99):.0f}")
            + "% of " + esc(ood.get("reference") or "its reference images") + " (diagonal Mahalanobis distance "
            + esc(f"> {ood['threshold']:.3f}") + "; median here " + esc(fmt(ood["score_quantiles"]["0.5"]))
            + "). Such an image is unlike anything the classifier learnt from: its score is unreliable. A high "
              "rate means the hospital's images differ from the synthetic training data.</p>")
    if ood.get("note"):
        body += f"<p class='note'>{esc(ood['note'])}</p>"
    return f"<section><h2>Out-of-distribution inputs</h2>{body}</section>"
