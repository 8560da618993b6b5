"""The report's one plot: pooled ROC and precision-recall curves with bootstrap bands,
drawn from the sites' score histograms (never per-image scores)."""

from __future__ import annotations

import numpy as np

from fedsynth.evaluation.report.run_data import RunData, dig
from fedsynth.evaluation.report.wording import BASELINES, MAIN_LABEL
from fedsynth.presentation import figure_png, pyplot

MAX_CURVE_BOOTSTRAP = 1000  # resamples for the curve bands (the run's evaluation.bootstrap, at most this)


def _curve_sets(data: RunData) -> list[tuple[str, str, dict]]:
    """(key, label, {site: counts}) for each classifier with histograms."""
    out = []
    for key, label in (("main", MAIN_LABEL.get(data.mode, "server's classifier")),
                       ("trtr", BASELINES["trtr"][0]), ("real_plus_synthetic", BASELINES["real_plus_synthetic"][0])):
        sites = data.histograms.get(key) or {}
        if isinstance(sites, dict) and sites:
            out.append((key, label, sites))
    return out


def curves_png(data: RunData) -> bytes | None:
    from fedsynth.evaluation.curves import pooled_curves

    sets = _curve_sets(data)
    if not sets:
        return None
    n_boot = min(int(dig(data.config, "evaluation", "bootstrap") or 0), MAX_CURVE_BOOTSTRAP)
    seed = int(dig(data.config, "run", "seed") or 0)
    edges = data.histograms.get("edges") if isinstance(data.histograms.get("edges"), dict) else {}
    curves = [pooled_curves(label, list(sites.values()), n_boot=n_boot, level=data.level, seed=seed,
                            edges=edges.get(key))
              for key, label, sites in sets]
    plt = pyplot()
    colours = {"main": "#1f4e9c", "trtr": "#2e7d32", "real_plus_synthetic": "#c76b00"}
    styles = {"main": "-", "trtr": "--", "real_plus_synthetic": ":"}
    fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(11, 4.6))
    prevalence = None
    for (key, _, _), c in zip(sets, curves):
        col, ls = colours[key], styles[key]
        lw = 2.2 if key == "main" else 1.6
        band_alpha = 0.22 if key == "main" else 0.10
        if not np.isnan(c.roc.fpr).all():
            ax_roc.plot(c.roc.fpr, c.roc.tpr, ls, color=col, lw=lw, label=f"{c.name}: AUROC {c.roc.auc():.3f}")
            if c.bands is not None:
                ax_roc.fill_between(c.bands.fpr_grid, c.bands.tpr_low, c.bands.tpr_high, color=col, alpha=band_alpha,
                                    lw=0)
        if not np.isnan(c.pr.recall).all():
            r, p = c.pr.recall[::-1], c.pr.precision[::-1]  # recall increasing; r[0] = 0 is sklearn's end point
            r, p = np.concatenate([[0.0], r[1:]]), np.concatenate([[p[1]], p[1:]])  # first step starts at recall 0
            ax_pr.plot(r, p, ls, color=col, lw=lw, drawstyle="steps-pre",
                       label=f"{c.name}: AUPR {c.pr.average_precision():.3f}")
            if c.bands is not None:
                ax_pr.fill_between(c.bands.recall_grid, c.bands.precision_low, c.bands.precision_high, color=col,
                                   alpha=band_alpha, lw=0, step="pre")
            prevalence = c.pr.prevalence if key == "main" or prevalence is None else prevalence
    ax_roc.plot([0, 1], [0, 1], color="#999", lw=0.8, ls=(0, (2, 2)), label="chance")
    if prevalence is not None:
        ax_pr.axhline(prevalence, color="#999", lw=0.8, ls=(0, (2, 2)), label=f"chance ({prevalence:.2f})")
    n_pos, n_neg = curves[0].n_positive, curves[0].n_negative
    band = (f"shaded: {data.level:.0%} bootstrap band ({curves[0].bands.n_boot} resamples)"
            if curves[0].bands is not None else "no bootstrap band (bootstrap off)")
    ax_roc.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)",
               title=f"ROC, pooled over {curves[0].n_sites} site(s): {n_pos} pneumonia, {n_neg} normal",
               xlim=(0, 1), ylim=(0, 1.01))
    ax_pr.set(xlabel="recall (sensitivity)", ylabel="precision (positive predictive value)",
              title=f"Precision-recall, pooled; {band}", xlim=(0, 1), ylim=(0, 1.01))
    for ax in (ax_roc, ax_pr):
        ax.grid(alpha=0.25)
        ax.legend(loc="lower right" if ax is ax_roc else "lower left", fontsize=8, framealpha=0.9)
        ax.title.set_fontsize(9.5)
    if data.metrics.data.phantom:
        fig.suptitle("PHANTOM DATA - not medical images", color="#b35900", fontsize=10, fontweight="bold")
    fig.tight_layout()
    return figure_png(fig, dpi=100)
