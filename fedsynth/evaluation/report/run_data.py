"""Everything the report reads from a run directory, read once, through :mod:`fedsynth.rundir`.

``metrics.json`` is read through its schema; the ledgers are verified with the privacy
audit's own code (:func:`fedsynth.privacy.audit.check_ledger`: chain, signatures, every
epsilon recomputed) rather than trusting the figures in ``metrics.json``. Only a folder
that is not a finished run is an error; a damaged optional file becomes a note.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsynth.errors import FedsynthError
from fedsynth.metrics_schema import RunMetrics, SiteRecord
from fedsynth.privacy.audit import LedgerStatus, check_ledger
from fedsynth.rundir import RunDir, RunDirError

log = logging.getLogger("fedsynth.report")


def dig(d: Any, *keys: str, default: Any = None) -> Any:
    """A value deep inside the open (untyped) parts of a run: a config mapping, a site's release info."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


class ReportError(FedsynthError):
    """The folder is not a finished run: no report can be built."""


@dataclass
class RunData:
    run: RunDir
    metrics: RunMetrics
    config: dict
    histograms: dict
    problems: list[str] = field(default_factory=list)
    ledgers: dict[str, LedgerStatus] = field(default_factory=dict)
    include_real: bool = True  # embed the sites' real-vs-synthetic grids (simulation only)

    @property
    def path(self) -> Path:
        return self.run.path

    @property
    def mode(self) -> str:
        return str(self.metrics.mode or dig(self.config, "run", "mode") or "?")

    @property
    def sites(self) -> dict[str, SiteRecord]:
        return self.metrics.sites

    @property
    def level(self) -> float:
        return float(dig(self.config, "evaluation", "ci_level") or 0.95)

    def image_files(self) -> tuple[list[Path], list[Path]]:
        """(server's synthetic grids, sites' real-vs-synthetic grids when included)."""
        return self.run.grid_files(), self.run.site_grid_files() if self.include_real else []


def load_run(run_dir: str | Path, include_real: bool = True) -> RunData:
    """Read a finished run; ReportError when ``run_dir`` is not one."""
    try:
        run = RunDir.open_finished(run_dir)
        metrics, problems = run.read_metrics_salvaged()
    except RunDirError as err:
        raise ReportError(str(err)) from None
    data = RunData(run, metrics, {}, {}, problems=problems, include_real=include_real)
    try:
        data.config = run.read_config()
    except RunDirError as err:
        data.problems.append(f"{err}; the configuration is not shown")
    try:
        data.histograms = run.read_histograms()
    except RunDirError as err:
        data.problems.append(f"{err}; no curves")
    try:
        data.ledgers = {site: check_ledger(ledger, pub, metrics.run_id, site=site)
                        for site, ledger, pub in run.ledger_files()}
    except Exception as err:  # noqa: BLE001 - a report problem must never fail a run
        log.warning("report: ledgers could not be verified: %s", err, exc_info=True)
        data.problems.append(f"the ledgers could not be verified ({type(err).__name__}: {err})")
    return data


__all__ = ["RunData", "ReportError", "load_run"]
