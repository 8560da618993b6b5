"""Matplotlib figures as PNG: the one place that picks the backend and saves a figure."""

from __future__ import annotations

import io
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend: figures render to files, never to a screen,
    so a headless site or server draws them like a laptop does."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig: Any, dpi: float | None = None) -> bytes:
    """The PNG bytes of ``fig`` (at ``dpi``, else the figure's own); the figure is closed."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi="figure" if dpi is None else dpi)
    finally:
        pyplot().close(fig)
    return buf.getvalue()
