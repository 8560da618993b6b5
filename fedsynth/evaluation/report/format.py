"""Formatting for the report's HTML: numbers, intervals, tables, inline images, plain-language text."""

from __future__ import annotations

import base64
import html
import math
from typing import Any

MODES = {
    "substitution": "Data substitution: each hospital trained an image generator on its own X-rays and sent "
                    "only synthetic images; the server trained the classifier on those synthetic images alone.",
    "federated": "Federated generator: the hospitals trained one shared image generator by federated averaging "
                 "(only model weights travelled); the server sampled it and trained the classifier on those "
                 "synthetic images alone.",
    "fedavg-classifier": "Baseline, classic federated learning: the classifier itself was trained by federated "
                         "averaging on the hospitals' real X-rays (only model weights travelled).",
    "centralized-real": "Baseline, centralized: all hospitals' real training X-rays were pooled in one place. "
                        "Possible only in a simulation; the upper bound the other modes are measured against.",
}

MAIN_LABEL = {
    "substitution": "synthetic only (server)",
    "federated": "synthetic only, federated generator (server)",
    "fedavg-classifier": "federated averaging on real (server)",
    "centralized-real": "real, pooled centrally (server)",
}

BASELINES = {
    "trtr": ("site's own real images", "each site's classifier trained on its own real training images "
                                       "(train-real-test-real)"),
    "real_plus_synthetic": ("site's real + synthetic", "each site's classifier trained on its own real images "
                                                       "plus the pooled synthetic sample (augmentation)"),
}

EXPLAIN = {
    "auroc": "AUROC: the chance that the classifier scores a random pneumonia X-ray higher than a random normal "
             "one. 0.5 is a coin toss, 1.0 is perfect.",
    "aupr": "AUPR (average precision): how well pneumonia cases rank above normal ones, judged on the pneumonia "
            "cases found; its chance level is the share of pneumonia in the test set.",
    "sens": "Sensitivity: share of pneumonia X-rays the classifier flags. Specificity: share of normal X-rays it "
            "leaves unflagged. Both at the decision threshold fixed before testing (never tuned on the test "
            "images).",
    "ci": "Brackets give the {level:.0%} confidence interval: stratified bootstrap for AUROC and AUPR, Wilson "
          "intervals for sensitivity and specificity. Wide intervals mean few test images.",
}


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def as_number(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) or math.isinf(v) else v


def fmt(x: Any, digits: int = 3) -> str:
    v = as_number(x)
    if v is None:
        return "–"
    return f"{v:.{digits}f}"


def fmt_g(x: Any, digits: int = 3) -> str:
    v = as_number(x)
    return "–" if v is None else f"{v:.{digits}g}"


def fmt_ci(value: Any, ci: Any, digits: int = 3) -> str:
    v = as_number(value)
    if v is None:
        return "n/a"
    lo, hi = (list(ci) + [None, None])[:2] if isinstance(ci, (list, tuple)) else (None, None)
    if as_number(lo) is None or as_number(hi) is None:
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f} [{float(lo):.{digits}f}, {float(hi):.{digits}f}]"


def fmt_bytes(n: Any) -> str:
    v = as_number(n)
    if v is None:
        return "–"
    for unit in ("B", "kB", "MB", "GB"):
        if v < 1000 or unit == "GB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1000
    return str(n)


def fmt_seconds(s: Any) -> str:
    v = as_number(s)
    if v is None:
        return "–"
    if v < 120:
        return f"{v:.1f} s"
    return f"{v / 60:.1f} min"


def dig(d: Any, *keys: str, default: Any = None) -> Any:
    """A value deep inside the open (untyped) parts of a run: a config mapping, a site's release info."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def table(headers: list[str], rows: list[list[str]], cls: str = "", raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw`` (then they are HTML already)."""
    cell = (lambda c: c) if raw else esc
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def explain(*paragraphs: str) -> str:
    return "".join(f"<p class='explain'>{esc(p)}</p>" for p in paragraphs)


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def img(data: bytes, alt: str, cls: str = "") -> str:
    return f"<img class='{cls}' alt='{esc(alt)}' src='{png_uri(data)}'>"
