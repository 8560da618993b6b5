"""The report's result sections: curves, utility against the sites' own baselines, fidelity."""

from __future__ import annotations

from fedsynth.evaluation.report.figures import _curve_sets, curves_png
from fedsynth.evaluation.report.overview import metrics_row
from fedsynth.evaluation.report.run_data import RunData
from fedsynth.evaluation.report.wording import BASELINES, MAIN_LABEL
from fedsynth.presentation import esc, explain, fmt, fmt_ci, img, table


def section_curves(data: RunData) -> str:
    png = curves_png(data)
    if png is None:
        return ("<section id='curves'><h2>ROC and precision-recall curves</h2><p class='note'>No score "
                "histograms in this run (histograms.json): no curves.</p></section>")
    baselines = [k for k, _, _ in _curve_sets(data) if k != "main"]
    text = ["Each point is one decision threshold. ROC: how many pneumonia X-rays are caught (up) against how many "
            "normal X-rays are falsely flagged (right); the closer to the top-left corner, the better. "
            "Precision-recall: of the X-rays flagged, how many truly show pneumonia, as more cases are caught.",
            f"Curves pool all sites' real test X-rays; the shaded band is the {data.level:.0%} bootstrap band "
            "(each site's class-wise counts resampled)."]
    if baselines:
        text.append("Dashed and dotted lines: the sites' own baselines, " + "; ".join(
            BASELINES[k][1] for k in baselines) + ". Their scores are pooled over the sites, each site's model "
            "on its own test split.")
    return ("<section id='curves'><h2>ROC and precision-recall curves</h2>" + explain(*text)
            + img(png, "ROC and precision-recall curves", "plot") + "</section>")


def section_subtype(data: RunData) -> str:
    """The subtype task (classifier.task: subtype): per-class one-vs-rest figures and the confusion matrix."""
    st = data.metrics.subtype
    if st is None:
        return ""
    rows = [[esc(name), str(f.n), fmt_ci(f.auroc, f.auroc_ci), fmt_ci(f.aupr, f.aupr_ci),
             fmt_ci(f.recall, f.recall_ci), fmt(f.precision)] for name, f in st.per_class.items()]
    rows.append(["<strong>all classes</strong>", str(st.n), "macro " + fmt_ci(st.macro_auroc, st.macro_auroc_ci),
                 "", "balanced accuracy " + fmt(st.balanced_accuracy), "accuracy " + fmt_ci(st.accuracy,
                                                                                          st.accuracy_ci)])
    confusion = [[esc(st.classes[i])] + [str(v) for v in row] for i, row in enumerate(st.confusion)]
    return ("<section id='subtype'><h2>Subtype task</h2>"
            + explain(f"The classifier predicts one of {len(st.classes)} classes ({', '.join(st.classes)}); "
                      f"the binary figures above use 1 - P({st.classes[0]}) as the pneumonia score. "
                      "Per class: one-vs-rest AUROC and AUPR from the sites' histograms of that class's "
                      "probability, and recall / precision at the most probable class, pooled over the sites' "
                      f"real test X-rays ({st.ci_level:.0%} intervals).")
            + table(["class", "n", "AUROC (one-vs-rest) [CI]", "AUPR [CI]", "recall [CI]", "precision"], rows, "wide",
                    raw=True)
            + "<h3>Confusion matrix (rows: true class, columns: predicted)</h3>"
            + table(["true class / predicted", *st.classes], confusion, "confusion", raw=True)
            + "</section>")


def section_utility(data: RunData) -> str:
    u = data.metrics.utility
    blocks = {k: getattr(u, k) for k in ("tstr", "trtr", "real_plus_synthetic")}
    present = [k for k, b in blocks.items() if b is not None]
    if not present or present == ["tstr"]:
        return ("<section id='utility'><h2>Utility: synthetic against real</h2><p class='note'>No site baselines "
                "in this run (evaluation.site_baselines off, or no site could train one): the server's classifier "
                "is in Pooled results.</p></section>")
    sites = sorted({s for k in present for s in blocks[k].sites})
    rows = []
    labels = {"tstr": f"server's classifier: {MAIN_LABEL.get(data.mode, data.mode)}",
              "trtr": f"{BASELINES['trtr'][0]} (train-real-test-real)",
              "real_plus_synthetic": BASELINES["real_plus_synthetic"][0]}
    for k in present:
        row = metrics_row(labels[k], blocks[k].pooled)
        row += [fmt_ci(blocks[k].sites[s].auroc, blocks[k].sites[s].auroc_ci) if s in blocks[k].sites else "n/a"
                for s in sites]
        rows.append(row)
    tstr_name = ("Train-synthetic-test-real (TSTR)" if data.mode in ("substitution", "federated")
                 else "The server's classifier")
    return ("<section id='utility'><h2>Utility: synthetic against real</h2>"
            + explain(f"{tstr_name} against what each hospital could do alone with its own real images "
                      "(train-real-test-real, TRTR) and with its real images plus the synthetic ones. All are "
                      "tested on the same real test X-rays. A synthetic-only classifier close to TRTR means the "
                      "synthetic images carry the useful signal; the pooled baselines combine each site's own "
                      "model on its own test split.")
            + table(["classifier", "n", "pooled AUROC [CI]", "pooled AUPR [CI]", "sensitivity [CI]",
                     "specificity [CI]"] + [f"AUROC {s}" for s in sites], rows, "wide")
            + "</section>")


def section_fidelity(data: RunData) -> str:
    f = data.metrics.fidelity
    if f.pooled is None and not f.sites:
        return ("<section id='fidelity'><h2>Fidelity: how real the synthetic images look</h2><p class='note'>"
                "Fidelity was not measured in this run (evaluation.fidelity off, or no synthetic images).</p>"
                "</section>")
    rows = []
    keys = ("frechet_distance", "precision", "recall", "density", "coverage")
    for site, d in sorted(f.sites.items()):
        for which, label in (("pooled", "pooled synthetic sample"), ("own_release", "its own release"),
                             ("real_reference", "reference: its real test images against its real training "
                                                "images")):
            r = d.get(which)
            if r is not None:
                rows.append([site, label, r.encoder or "?", f"{r.n_real if r.n_real is not None else '–'} / "
                             f"{r.n_synthetic if r.n_synthetic is not None else '–'}"]
                            + [fmt(getattr(r, k), 2 if k == "frechet_distance" else 3) for k in keys])
    p = f.pooled
    if p is not None:
        rows.append(["pooled", "average over sites (weighted by real images)", p.encoder or "?", "–"]
                    + [fmt(getattr(p, k), 2 if k == "frechet_distance" else 3) for k in keys])
    return ("<section id='fidelity'><h2>Fidelity: how real the synthetic images look</h2>"
            + explain("Measured at each hospital, against its own real X-rays, in an encoder's feature space (the "
                      "encoder is named: Inception-v3 when its weights are available, else a small X-ray encoder "
                      "trained at the site; figures from different encoders cannot be compared).",
                      "Fréchet distance: how far apart the real and synthetic feature distributions are (lower is "
                      "closer; 0 is identical). Its scale depends on the encoder: read it against the reference "
                      "row, two sets of one site's real images (its test against its training images), which no "
                      "generator can be expected to beat. Precision: share of synthetic images that look like "
                      "some real image (realism). Recall: share of the real images' variety the synthetic ones cover "
                      "(diversity). Density and coverage: sturdier versions of precision and recall (density can "
                      "exceed 1).")
            + table(["site", "synthetic images", "encoder", "real / synthetic n", "Fréchet distance", "precision",
                     "recall", "density", "coverage"], rows, "wide") + "</section>")
