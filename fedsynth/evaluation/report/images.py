"""The report's image section (the synthetic grids, and in a simulation the sites' real-vs-
synthetic grids) and its footer."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from fedsynth.evaluation.report.run_data import RunData
from fedsynth.presentation import esc, explain, img

log = logging.getLogger("fedsynth.report")


def section_grids(data: RunData) -> str:
    server, sites = data.image_files()
    out = ["<section id='grids'><h2>Images</h2>"]
    if not data.include_real:
        out.append("<p class='note'>Built without the sites' real-vs-synthetic grids (--no-real-images): this "
                   "page holds no real image.</p>")
    if not server and not sites:
        out.append("<p class='note'>No image grids in this run (no synthetic images, e.g. a baseline mode).</p>")
    if server:
        out.append("<h3>Synthetic images the classifier was trained on, per class</h3>")
        out.append(explain(("Sampled by the server from the global generator after federated averaging."
                            if data.mode == "federated" else "As each site released them.")
                           + " Each row is one class (normal, pneumonia)."))
        out.append("<div class='grids'>" + "".join(_figure(p) for p in server) + "</div>")
    if sites:
        out.append("<h3>Real against synthetic, at each site</h3>")
        out.append(explain("Real X-rays next to synthetic ones of the same class, drawn by each site. In this "
                           "simulation these grids are in the run directory; in a deployment they stay at each "
                           "hospital, because they contain real pixels, and never reach the server."))
        out.append("<div class='grids'>" + "".join(_figure(p, f"{p.parent.name}: ") for p in sites) + "</div>")
    out.append("</section>")
    return "".join(out)


def _figure(path: Path, prefix: str = "") -> str:
    try:
        raw = path.read_bytes()
        if not raw.startswith(b"\x89PNG\r\n\x1a\n"):
            raise ValueError("not a PNG file")
    except (OSError, ValueError) as err:
        log.warning("report: image %s skipped: %s", path, err)
        return f"<figure><p class='note'>{esc(path.name)}: could not be read ({esc(err)})</p></figure>"
    caption = prefix + path.stem.replace("_", " ")
    return f"<figure>{img(raw, caption, 'grid')}<figcaption>{esc(caption)}</figcaption></figure>"


def section_footer(data: RunData) -> str:
    return ("<footer>" + esc(f"Built {time.strftime('%Y-%m-%d %H:%M:%S %z')} from the files in "
                             f"{data.path.name}/ (config.yaml, metrics.json, histograms.json, grids/, sites/, "
                             "ledgers/). Rebuild with `fedsynth report RUN_DIR`; compare runs with "
                             "`fedsynth compare RUN_DIR...`.") + "</footer>")
