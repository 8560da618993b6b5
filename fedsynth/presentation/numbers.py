"""Numbers as a reader sees them: a dash for what is missing, fixed digits, intervals, sizes, times."""

from __future__ import annotations

import math
from typing import Any

MISSING = "–"  # a figure that is absent, not a number, or infinite


def as_number(x: Any) -> float | None:
    """``x`` as a finite float; None for anything else (None, a bool, text, NaN, infinities)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) or math.isinf(v) else v


def fmt(x: Any, digits: int = 3) -> str:
    v = as_number(x)
    return MISSING if v is None else f"{v:.{digits}f}"


def fmt_g(x: Any, digits: int = 3) -> str:
    v = as_number(x)
    return MISSING if v is None else f"{v:.{digits}g}"


def pct(x: Any) -> str:
    v = as_number(x)
    return MISSING if v is None else f"{100 * v:.1f}%"


def fmt_ci(value: Any, ci: Any, digits: int = 3) -> str:
    """``value [low, high]``; the value alone when the interval is missing; n/a without a value."""
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
        return MISSING
    for unit in ("B", "kB", "MB", "GB"):
        if v < 1000 or unit == "GB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1000
    return str(n)


def fmt_seconds(s: Any) -> str:
    v = as_number(s)
    if v is None:
        return MISSING
    return f"{v:.1f} s" if v < 120 else f"{v / 60:.1f} min"
