"""One run's record on the server: what each stage took, who failed, who contributed, bytes sent.

Every mode fills one :class:`RunRecord` as it goes and hands it to
:func:`fedsynth.server.results.evaluate_and_report`, instead of threading a timings dict,
failure lists and counters through every call.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class SiteFailure:
    site: str
    stage: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class Contribution:
    """What one site contributed to training, as the run's outputs report it."""

    site: str
    key: str  # "release" (synthetic images), "training" (federated rounds) or "real_data" (centralized)
    info: dict
    private: bool
    privacy: dict
    phantom: bool


@dataclass
class RunRecord:
    started: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)
    failures: list[SiteFailure] = field(default_factory=list)
    contributions: list[Contribution] = field(default_factory=list)
    bytes_sent: dict[str, int] = field(default_factory=dict)  # per site, everything its replies carried
    extra: dict[str, Any] = field(default_factory=dict)  # mode-specific sections of metrics.json
    warnings: list[str] = field(default_factory=list)  # mode-specific warnings, shown first

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Record the seconds a stage takes as ``timings[<stage>_s]``."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timings[f"{stage}_s"] = time.perf_counter() - t

    def mark(self, stage: str) -> None:
        """Record the seconds since the run started as ``timings[<stage>_s]``."""
        self.timings[f"{stage}_s"] = time.perf_counter() - self.started

    def fail(self, site: str, stage: str, reason: str) -> None:
        self.failures.append(SiteFailure(site, stage, reason))

    def count_bytes(self, site: str, n: int) -> None:
        self.bytes_sent[site] = self.bytes_sent.get(site, 0) + int(n)
