"""The typed form of ``metrics.json``: what a run reports, written and read through one model.

The server builds a :class:`RunMetrics` and :mod:`fedsynth.rundir` writes it; the report,
``fedsynth compare``, the web app and the benchmarks read it back through the same model,
so writer and readers agree by construction, not by convention. Every document carries
``schema_version``; a file from before the schema (no version) reads as version 0, one
from a newer fedsynth is refused with a clear message.

Sections whose shape fedsynth owns are strict (an unknown key is an error). Sections that
carry a site's own statistics, whose detail depends on the generator family or the mode
(a release's generator report, a federated site's round info), keep their extra keys.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
Number = float | None  # NaN and infinities are written as null


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Figures(_Strict):
    """A classifier's figures on one real test split (``BinaryMetrics.to_dict``)."""

    n: int = Field(ge=0)
    n_positive: int = Field(ge=0)
    n_negative: int = Field(ge=0)
    auroc: Number
    auroc_ci: tuple[Number, Number]
    aupr: Number
    aupr_ci: tuple[Number, Number]
    threshold: Number
    sensitivity: Number
    sensitivity_ci: tuple[Number, Number]
    specificity: Number
    specificity_ci: tuple[Number, Number]
    tp: int = Field(ge=0)
    fp: int = Field(ge=0)
    tn: int = Field(ge=0)
    fn: int = Field(ge=0)
    ci_level: float
    note: str = ""


class BaselineFigures(Figures):
    """A site's own baseline classifier: its figures and how many images it trained on."""

    n_train: int | None = None


class Failure(_Strict):
    site: str
    stage: str
    reason: str


class SiteRecord(_Strict):
    """One site in the run: what it contributed, how it evaluated, why it failed."""

    status: Literal["ok", "failed"]
    release: dict[str, Any] | None = None  # substitution: the release's statistics (no ledger)
    training: dict[str, Any] | None = None  # federated modes: the last round's info and the rounds taken part in
    real_data: dict[str, Any] | None = None  # centralized-real: the class counts it pooled
    evaluation: Figures | None = None
    failures: list[Failure] = Field(default_factory=list)
    bytes_sent: int | None = None


class DataInfo(_Strict):
    source: str
    resolution: int
    phantom: bool


class SitePrivacy(_Open):
    """A site's privacy figures, read from its verified, signed ledger."""

    epsilon: Number = None  # this training's, from the accountant (None: not private)
    delta: Number = None
    spent_epsilon: Number = None  # composed over the site's whole ledger
    budget: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None  # the release gate's summary (substitution)
    membership_auc: Number = None
    membership_audit: dict[str, Any] | None = None  # auc, tpr_at_1pct_fpr, control_auc, sample sizes
    ledger_entries: int | None = None


class Privacy(_Strict):
    requested: dict[str, Any] | None = None  # the run's privacy section, or None (not private)
    sites: dict[str, SitePrivacy] = Field(default_factory=dict)


class Timings(_Open):
    """Seconds per stage; which stages exist depends on the mode."""

    total_s: Number = None


class UtilityFigures(_Strict):
    pooled: Figures | None = None
    sites: dict[str, BaselineFigures] = Field(default_factory=dict)


class Utility(_Strict):
    """Train-synthetic-test-real (the server's classifier) against the sites' own baselines."""

    tstr: UtilityFigures | None = None
    trtr: UtilityFigures | None = None
    real_plus_synthetic: UtilityFigures | None = None


class FidelityFigures(_Open):
    frechet_distance: Number = None
    precision: Number = None
    recall: Number = None
    density: Number = None
    coverage: Number = None
    encoder: str = ""
    n_real: int | None = None
    n_synthetic: int | None = None


class Fidelity(_Strict):
    pooled: FidelityFigures | None = None  # the sites' figures averaged, weighted by their real images
    sites: dict[str, dict[str, FidelityFigures]] = Field(default_factory=dict)  # site -> "pooled" / "own_release"


class ClassFigures(_Strict):
    """One class of the subtype task, one-vs-rest (fedsynth.classifier.multiclass)."""

    n: int
    auroc: float | None = None
    auroc_ci: list[float | None] = Field(default_factory=lambda: [None, None])
    aupr: float | None = None
    aupr_ci: list[float | None] = Field(default_factory=lambda: [None, None])
    recall: float | None = None
    recall_ci: list[float | None] = Field(default_factory=lambda: [None, None])
    precision: float | None = None


class SubtypeFigures(_Strict):
    """The subtype task's pooled figures (classifier.task: subtype) and each site's confusion matrix."""

    classes: list[str]
    n: int
    accuracy: float | None = None
    accuracy_ci: list[float | None] = Field(default_factory=lambda: [None, None])
    balanced_accuracy: float | None = None
    macro_auroc: float | None = None
    macro_auroc_ci: list[float | None] = Field(default_factory=lambda: [None, None])
    per_class: dict[str, ClassFigures] = Field(default_factory=dict)
    confusion: list[list[int]] = Field(default_factory=list)  # rows: true class, columns: most probable
    ci_level: float = 0.95
    sites: dict[str, list[list[int]]] = Field(default_factory=dict)  # each site's confusion matrix


class RunMetrics(_Strict):
    """The whole ``metrics.json``."""

    schema_version: int = 0  # 0: written before the schema existed
    run_id: str
    mode: str
    fedsynth_version: str = "?"
    created: str = ""
    data: DataInfo
    private: bool
    privacy: Privacy = Field(default_factory=Privacy)
    warnings: list[str] = Field(default_factory=list)
    sites: dict[str, SiteRecord] = Field(default_factory=dict)
    pooled: Figures | None = None
    classifier: dict[str, Any] = Field(default_factory=dict)  # the classifier's header, without its history
    failures: list[Failure] = Field(default_factory=list)
    timings: Timings = Field(default_factory=Timings)
    utility: Utility = Field(default_factory=Utility)
    fidelity: Fidelity = Field(default_factory=Fidelity)
    alignment: dict[str, Any] | None = None  # substitution with alignment.enabled
    calibration: dict[str, Any] | None = None  # calibration.enabled: temperature, thresholds, ECE before/after
    subtype: SubtypeFigures | None = None  # classifier.task: subtype
    rounds: list[dict[str, Any]] | None = None  # federated modes: one entry per round
    resumed_from: int | None = None

    # ---- the questions readers ask -------------------------------------------------------
    def ok_sites(self) -> list[str]:
        return [name for name, s in self.sites.items() if s.status == "ok"]

    def failed_sites(self) -> list[str]:
        return sorted(name for name, s in self.sites.items() if s.status != "ok")

    def spent_epsilons(self) -> list[float]:
        return [p.spent_epsilon for p in self.privacy.sites.values() if p.spent_epsilon is not None]

    def generator_families(self) -> set[str]:
        return {str(s.release["generator"]["family"]) for s in self.sites.values()
                if s.release and isinstance(s.release.get("generator"), dict) and "family" in s.release["generator"]}
