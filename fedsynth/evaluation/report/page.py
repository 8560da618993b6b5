"""The report page: its sections in order, its stylesheet, and writing ``report.html``.

The page has no script and no external resource: images are PNG data URIs and the CSS is
inline, so it can be mailed, archived or opened offline. A section that cannot be built
is logged and replaced by a note: a report bug never fails a finished run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from fedsynth.evaluation.report.format import esc
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

CSS = """
:root{--ink:#1d2330;--muted:#5b6472;--line:#d5dae1;--head:#eef1f5;--accent:#1f4e9c}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--ink);
 max-width:1180px;margin:0 auto;padding:1.2em 1.5em 3em;background:#fff}
h1{font-size:1.7em;margin:.2em 0 .4em}h2{font-size:1.3em;margin:1.8em 0 .4em;padding-bottom:.2em;
 border-bottom:2px solid var(--accent);color:var(--accent)}h3{font-size:1.08em;margin:1.2em 0 .3em}
h4{margin:1em 0 .2em;font-size:1em}
.facts{display:flex;flex-wrap:wrap;gap:.3em 1.8em;margin:0 0 .6em}.facts div{display:flex;gap:.4em}
.facts dt{color:var(--muted)}.facts dd{margin:0;font-weight:600}
.mode{margin:.2em 0 .8em;color:var(--ink)}
.banner{padding:.55em .9em;margin:.35em 0;border-radius:6px;font-size:1.02em;border-left:8px solid rgba(0,0,0,.25)}
.banner strong{letter-spacing:.04em;margin-right:.5em}
.banner.phantom{background:#fff1d6;color:#6b3a00;border-left-color:#e08a00}
.banner.danger{background:#b3261e;color:#fff}
.banner.dropped{background:#fde7e4;color:#8c1d18;border-left-color:#d93025}
.banner.central{background:#ede4f7;color:#4a2477;border-left-color:#7b3fbf}
.note{background:#f6f7f9;border:1px dashed var(--line);padding:.4em .7em;color:var(--muted)}
.explain{color:var(--muted);margin:.3em 0;max-width:70em}
.cards{display:flex;flex-wrap:wrap;gap:.7em;margin:.5em 0}
.card{flex:1 1 180px;border:1px solid var(--line);border-radius:8px;padding:.55em .8em;background:#fafbfc}
.card .k{color:var(--muted);font-size:.85em}.card .v{font-size:1.15em;font-weight:700;margin:.15em 0}
.card .s{color:var(--muted);font-size:.8em}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.88em}
th,td{border:1px solid var(--line);padding:.3em .55em;text-align:left;vertical-align:top}
th{background:var(--head);font-weight:600}
table.wide{width:100%}table.wide td:first-child{white-space:nowrap}
table.kv td:first-child{white-space:nowrap;font-weight:600;background:#fafbfc}
table.audit{font-size:.8em}table.confusion td:first-child{font-weight:600}
.ok{color:#1b6e2a;font-weight:700}.bad{color:#b3261e;font-weight:700}.warn{color:#a05a00;font-weight:700}
.muted{color:var(--muted)}.reason{font-size:.85em;color:var(--muted);font-weight:400;max-width:28em}
.reason.bad{color:#b3261e}
img.plot{max-width:100%;border:1px solid var(--line);border-radius:6px}
.grids{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0;flex:0 1 560px;max-width:100%}
img.grid{width:100%;border:1px solid var(--line)}figcaption{font-size:.8em;color:var(--muted)}
details{margin:.5em 0}summary{cursor:pointer;color:var(--accent)}
pre{background:#f6f7f9;padding:.7em;overflow:auto;font-size:.8em;max-height:30em}
footer{margin-top:2.5em;color:var(--muted);font-size:.8em;border-top:1px solid var(--line);padding-top:.6em}
@media print{.banner{-webkit-print-color-adjust:exact;print-color-adjust:exact}}
"""


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
    run_id = data.metrics.run_id or data.path.name
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>fedsynth report: {esc(run_id)}</title><style>{CSS}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")


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
