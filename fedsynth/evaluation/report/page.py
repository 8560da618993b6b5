"""The report page: its sections in order, and writing ``report.html``.

The page has no script and no external resource: images are PNG data URIs and the page
shell carries the stylesheet inline (:mod:`fedsynth.presentation`), so it can be mailed,
archived or opened offline. A section that cannot be built is logged and replaced by a
note: a report bug never fails a finished run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from fedsynth.evaluation.report.images import section_footer, section_grids
from fedsynth.evaluation.report.overview import (
    section_config,
    section_glance,
    section_header,
    section_pooled,
    section_sites,
)
from fedsynth.evaluation.report.privacy import section_privacy, section_rounds
from fedsynth.evaluation.report.results import section_curves, section_fidelity, section_subtype, section_utility
from fedsynth.evaluation.report.run_data import RunData, load_run
from fedsynth.presentation import esc, page_shell
from fedsynth.rundir import REPORT_FILE

log = logging.getLogger("fedsynth.report")


SECTIONS: list[tuple[str, Callable[[RunData], str]]] = [
    ("header", section_header),
    ("at a glance", section_glance),
    ("configuration", section_config),
    ("sites", section_sites),
    ("pooled results", section_pooled),
    ("curves", section_curves),
    ("subtype", section_subtype),
    ("utility", section_utility),
    ("fidelity", section_fidelity),
    ("privacy", section_privacy),
    ("rounds", section_rounds),
    ("images", section_grids),
    ("footer", section_footer),
]

def render(data: RunData) -> str:
    parts = []
    for name, build in SECTIONS:
        try:
            parts.append(build(data))
        except Exception as err:  # noqa: BLE001 - a report bug must never fail a finished run
            log.warning("report: the %s section could not be built: %s: %s", name, type(err).__name__, err,
                        exc_info=log.isEnabledFor(logging.DEBUG))
            parts.append(f"<section><h2>{esc(name.capitalize())}</h2><p class='note'>This part of the report could "
                         f"not be built ({esc(type(err).__name__)}: {esc(err)}).</p></section>")
    return page_shell(f"fedsynth report: {data.metrics.run_id or data.path.name}", "\n".join(parts))


def write_report(run_dir: str | Path, *, include_real: bool = True) -> Path:
    """Build ``RUN_DIR/report.html`` from the run directory's files; return its path.
    ``include_real=False`` leaves out the sites' real-vs-synthetic grids (a page to share).

    Raises :class:`ReportError` only when ``run_dir`` is not a finished run; a problem in
    any optional part (fidelity, utility, curves, images, ledgers, config) is logged and
    shown as a note in that part of the page."""
    data = load_run(run_dir, include_real=include_real)
    page = render(data)
    out = data.path / REPORT_FILE
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    log.debug("report: %s", out)
    return out
