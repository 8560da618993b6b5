"""Image grids (PNG): real against synthetic at a site, synthetic-only at the server."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedsynth.presentation import figure_png, pyplot

PHANTOM_NOTE = "PHANTOM DATA - not medical images"


def image_grid(
    rows: list[tuple[str, np.ndarray]],
    path: str | Path,
    title: str,
    *,
    phantom: bool = False,
) -> Path:
    """Write a grid with one titled row per ``(name, images)``; images (k, S, S) in [0, 1]."""
    cols = max((len(imgs) for _, imgs in rows), default=1) or 1
    fig, axes = pyplot().subplots(len(rows), cols, figsize=(1.3 * cols, 1.45 * len(rows) + 0.5), squeeze=False)
    for r, (name, imgs) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(imgs):
                ax.imshow(imgs[c], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes[r][0].set_title(name, loc="left", fontsize=8)
    fig.suptitle(f"{title}\n{PHANTOM_NOTE}" if phantom else title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(figure_png(fig, dpi=110))
    return path
