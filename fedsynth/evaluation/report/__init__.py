"""``report.html``: one self-contained page per run, for a clinician and a privacy officer.

Built from the files in the run directory only (config, metrics, histograms, grids,
ledgers), so ``fedsynth report RUN_DIR`` rebuilds it at any time. The package:

* :mod:`~.run_data`: everything the page reads, read once (metrics through its schema,
  ledgers verified by the privacy audit's own code);
* :mod:`~.wording`: the plain-language text (modes, classifiers, what each figure means);
* :mod:`~.figures`: the ROC and precision-recall plot;
* :mod:`~.overview`, :mod:`~.results`, :mod:`~.privacy`, :mod:`~.images`: the sections;
* :mod:`~.page`: the sections in order, and writing the file.

Escaping, tables, numbers, the page shell and the stylesheet are :mod:`fedsynth.presentation`'s,
shared with every other HTML page.
"""

from fedsynth.evaluation.report.page import render, write_report
from fedsynth.evaluation.report.run_data import ReportError, RunData, load_run
from fedsynth.rundir import REPORT_FILE

__all__ = ["REPORT_FILE", "ReportError", "RunData", "load_run", "render", "write_report"]
