"""The run report (report.html), the curves behind it and `fedsynth compare`.

Two tiny runs are built once for the module with the in-process engine: a DP
substitution run in which one site's budget refuses the request (a failed site with its
reason; fidelity and utility on), and a federated run with the optional extras off.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import precision_recall_curve, roc_curve
from typer.testing import CliRunner

from fedsynth.classifier.metrics import LOGIT_RANGE, ScoreHistogram, _hist_aupr, _hist_auroc, pooled_metrics
from fedsynth.cli import app
from fedsynth.config import load_config
from fedsynth.evaluation import curves
from fedsynth.evaluation.report import REPORT_FILE, ReportError, write_report
from fedsynth.simulation import simulate
from tests.conftest import tiny_overrides

BINS = 2000

# ---- curves -------------------------------------------------------------------------------------


def _distinct_bin_scores(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities whose logits fall in n distinct bins (bin centres)."""
    idx = rng.choice(BINS, n, replace=False)
    logits = -LOGIT_RANGE + (idx + 0.5) * 2 * LOGIT_RANGE / BINS
    labels = (rng.random(n) < 1 / (1 + np.exp(-logits / 4))).astype(int)
    labels[:2] = [0, 1]  # both classes present
    return labels, 1 / (1 + np.exp(-logits))


def _site_histograms(labels, probs, n_sites=3):
    parts = np.array_split(np.arange(len(labels)), n_sites)
    return [ScoreHistogram.from_scores(labels[p], probs[p], BINS) for p in parts]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_curves_match_sklearn_when_scores_fall_in_distinct_bins(seed):
    labels, probs = _distinct_bin_scores(np.random.default_rng(seed), 80)
    hists = _site_histograms(labels, probs)
    roc = curves.roc_curve(hists)
    fpr, tpr, _ = roc_curve(labels, probs, drop_intermediate=False)
    np.testing.assert_allclose(roc.fpr, fpr)
    np.testing.assert_allclose(roc.tpr, tpr)
    pr = curves.pr_curve(hists)
    precision, recall, thresholds = precision_recall_curve(labels, probs)
    np.testing.assert_allclose(pr.precision, precision)
    np.testing.assert_allclose(pr.recall, recall)
    assert len(pr.thresholds) == len(thresholds) and np.all(np.diff(pr.thresholds) > 0)
    # thresholds are the lower bin edges, just below each score
    assert np.all(pr.thresholds <= thresholds + 1e-12)
    pos, neg = curves.pool(hists)
    assert roc.auc() == pytest.approx(_hist_auroc(pos, neg), abs=1e-12)
    assert pr.average_precision() == pytest.approx(_hist_aupr(pos, neg), abs=1e-12)


def test_curve_areas_equal_the_pooled_metrics_on_any_histogram():
    """Ties inside a bin count one half (trapezoid), as _hist_auroc does."""
    rng = np.random.default_rng(5)
    hists = [ScoreHistogram(rng.poisson(0.05, BINS), rng.poisson(0.05, BINS)) for _ in range(3)]
    hists[0].positive[1000] += 7  # a tie of both classes in one bin
    hists[1].negative[1000] += 5
    pos, neg = curves.pool(hists)
    assert curves.roc_curve(hists).auc() == pytest.approx(_hist_auroc(pos, neg), abs=1e-12)
    assert curves.pr_curve(hists).average_precision() == pytest.approx(_hist_aupr(pos, neg), abs=1e-12)
    # dicts as in histograms.json work the same
    as_json = [{"positive": h.positive.tolist(), "negative": h.negative.tolist()} for h in hists]
    assert curves.roc_curve(as_json).auc() == pytest.approx(_hist_auroc(pos, neg))


def test_bootstrap_bands_bracket_the_curve_and_follow_pooled_metrics():
    labels, probs = _distinct_bin_scores(np.random.default_rng(3), 150)
    hists = _site_histograms(labels, probs)
    bands = curves.bootstrap_bands(hists, n_boot=300, level=0.9, seed=1)
    assert bands is not None and bands.n_boot == 300 and bands.level == 0.9
    assert bands.fpr_grid[0] == 0 and bands.fpr_grid[-1] == 1 and bands.recall_grid[0] > 0
    assert np.all(bands.tpr_low <= bands.tpr_high) and np.all(bands.precision_low <= bands.precision_high)
    assert bands.tpr_high[-1] == 1 and bands.tpr_low[0] >= 0
    roc = curves.roc_curve(hists)
    observed = curves.tpr_at(roc.fpr, roc.tpr, bands.fpr_grid)
    inside = (bands.tpr_low - 1e-9 <= observed) & (observed <= bands.tpr_high + 1e-9)
    assert inside.mean() > 0.9
    # the band's width is of the order of the pooled AUROC's interval
    m = pooled_metrics(hists, [(0, 0, 0, 0)] * 3, 0.5, n_boot=300, level=0.9, seed=1)
    width = np.mean(bands.tpr_high - bands.tpr_low)
    assert 0.3 * (m.auroc_ci[1] - m.auroc_ci[0]) < width < 5 * (m.auroc_ci[1] - m.auroc_ci[0])
    # more test images, narrower band
    big = [ScoreHistogram(h.positive * 10, h.negative * 10) for h in hists]
    wide = curves.bootstrap_bands(big, n_boot=300, level=0.9, seed=1)
    assert np.mean(wide.tpr_high - wide.tpr_low) < width


def test_curves_without_a_class_or_bootstrap():
    only_neg = [ScoreHistogram(np.zeros(BINS, int), np.ones(BINS, int))]
    assert np.isnan(curves.roc_curve(only_neg).auc())
    assert np.isnan(curves.pr_curve(only_neg).average_precision())
    assert curves.bootstrap_bands(only_neg, n_boot=50) is None
    labels, probs = _distinct_bin_scores(np.random.default_rng(0), 30)
    assert curves.bootstrap_bands(_site_histograms(labels, probs), n_boot=0) is None
    with pytest.raises(ValueError):
        curves.roc_curve([])


# ---- run directories ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("report")
    out = {}
    dp = tiny_overrides(tmp) + [
        "run.name=dp", "privacy.epsilon=5", "privacy.delta=1e-3", "sites.budget.delta=1e-3",
        "sites.budgets.site-2.epsilon=1", "sites.budgets.site-2.delta=1e-3",  # site-2 refuses: a failed site
    ]
    fed = tiny_overrides(tmp) + [
        "run.name=fed", "run.mode=federated", "federation.rounds=2", "federation.local_epochs=1",
        "evaluation.fidelity=false", "evaluation.site_baselines=false",
    ]
    for name, overrides in (("dp", dp), ("fed", fed)):
        run_dir, _ = simulate(load_config(None, overrides), engine="inprocess")
        out[name] = run_dir.path
        out[f"{name}_had_report"] = (run_dir.path / REPORT_FILE).is_file()
        write_report(run_dir.path)
    return out


def _html(run: Path) -> str:
    return (run / REPORT_FILE).read_text(encoding="utf-8")


def _flat(text: str) -> str:
    return " ".join(text.split())


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r"src=['\"]data:image/png;base64,([A-Za-z0-9+/=]+)['\"]", page)]


def test_every_run_writes_its_report(runs):
    """evaluate_and_report calls write_report after metrics.json (fedsynth/server/results.py)."""
    assert runs["dp_had_report"] and runs["fed_had_report"]


def test_report_is_one_self_contained_file(runs):
    page = _html(runs["dp"])
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    low = page.lower()
    assert "<script" not in low and "src=\"http" not in low and "src='http" not in low
    assert "href=\"http" not in low and "href='http" not in low and "@import" not in low and "url(" not in low
    srcs = re.findall(r"src=['\"]([^'\"]*)['\"]", page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    images = _images(page)
    # curves + 2 released grids + 4 real-vs-synthetic grids (site-2 failed before training)
    assert len(images) >= 7
    for raw in images:
        assert raw.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(io.BytesIO(raw)) as im:
            im.verify()


def test_report_has_every_section_and_the_warnings(runs):
    page = _html(runs["dp"])
    for section in ("glance", "config", "sites", "pooled", "curves", "utility", "fidelity", "privacy", "grids"):
        assert f"id='{section}'" in page, section
    assert "id='rounds'" not in page  # substitution has no rounds
    assert "PHANTOM DATA" in page and "SITES DROPPED" in page
    assert "NOT PRIVATE</strong>" not in page  # every contributing site trained with DP
    for words in ("AUROC", "AUPR", "Fréchet distance", "coverage", "membership-inference AUC", "gate dropped",
                  "train-real-test-real", "VERIFIED", "stay at each hospital", "epsilon 5.0 at delta 0.001"):
        assert words in page, words
    fed = _html(runs["fed"])
    assert "NOT PRIVATE</strong>" in fed
    assert "Fidelity was not measured" in fed and "No site baselines" in fed


def test_a_failed_site_appears_with_its_reason(runs):
    metrics = json.loads((runs["dp"] / "metrics.json").read_text())
    reason = metrics["sites"]["site-2"]["failures"][0]["reason"]
    assert metrics["sites"]["site-2"]["status"] == "failed"
    page = _html(runs["dp"])
    assert "site-2" in page and "failed" in page
    assert reason[:40].replace("'", "&#x27;") in page


def test_a_federated_run_shows_its_rounds(runs):
    page = _html(runs["fed"])
    assert "id='rounds'" in page and "Federated rounds" in page
    rows = re.findall(r"<tr><td>(\d)</td><td>(site-[^<]*)</td>", page)
    assert [r[0] for r in rows] == ["1", "2"]
    assert all(r[1] == "site-0, site-1, site-2" for r in rows)
    assert "model updates, rounds 1, 2" in page


def test_missing_or_damaged_optional_parts_never_fail_the_report(runs, tmp_path, caplog):
    run = tmp_path / "damaged"
    shutil.copytree(runs["dp"], run)
    for part in ("histograms.json", "grids", "sites"):
        p = run / part
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["fidelity"] = {"pooled": "garbage", "sites": {"site-0": 3}}
    metrics["utility"] = {"tstr": {"pooled": None}, "trtr": {"pooled": {"auroc": "x"}, "sites": []}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "config.yaml").write_text("{not: [valid")
    ledger = run / "ledgers" / "site-0.jsonl"  # a changed byte in a ledger is a finding, not a crash
    ledger.write_text(ledger.read_text().replace('"private":true', '"private":false', 1))
    page = write_report(run).read_text()
    assert "No score histograms" in page and "No image grids" in page and "config.yaml could not be read" in page
    assert "LEDGER VERIFICATION FAILED" in page and "FAILED" in page
    assert "id='privacy'" in page and "id='sites'" in page
    # no ledgers at all
    shutil.rmtree(run / "ledgers")
    page = write_report(run).read_text()
    assert "no ledger received" in page


def test_fedsynth_report_rebuilds_it_and_refuses_a_non_run(runs, tmp_path):
    target = runs["fed"] / REPORT_FILE
    target.unlink()
    result = CliRunner().invoke(app, ["report", str(runs["fed"])])
    assert result.exit_code == 0, result.output
    assert target.is_file() and "Federated rounds" in target.read_text()
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not a fedsynth run directory" in _flat(result.output)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("run: {}\n")
    result = CliRunner().invoke(app, ["report", str(unfinished)])
    assert result.exit_code == 2 and "unfinished run" in _flat(result.output)
    with pytest.raises(ReportError):
        write_report(tmp_path / "nowhere")


def test_fedsynth_compare_writes_one_table_of_both_runs(runs, tmp_path):
    md, table_csv = tmp_path / "table.md", tmp_path / "table.csv"
    result = CliRunner().invoke(app, ["compare", str(runs["dp"]), str(runs["fed"]), "--out", str(md),
                                      "--csv", str(table_csv)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    ids = [p.name for p in (runs["dp"], runs["fed"])]
    text = md.read_text()
    assert all(i in text for i in ids) and all(i in result.output for i in ids)
    assert "pooled AUROC [CI]" in text and "PHANTOM" in text and "DROPPED" in text and "NOT-PRIVATE" in text
    rows = list(csv.DictReader(table_csv.open()))
    assert [r["run_id"] for r in rows] == ids
    assert rows[0]["mode"] == "substitution" and rows[1]["mode"] == "federated"
    assert float(rows[0]["dp_epsilon"]) == 5 and 0 < float(rows[0]["max_spent_epsilon"]) <= 5
    assert rows[1]["dp_epsilon"] == "" and rows[0]["sites_ok"] == "2" and rows[0]["sites_total"] == "3"
    assert 0 <= float(rows[0]["auroc"]) <= 1 and rows[0]["trtr_auroc"] != "" and rows[1]["trtr_auroc"] == ""
    assert float(rows[1]["bytes_per_site"]) > 0 and rows[0]["generators"] == "gan"
    result = CliRunner().invoke(app, ["compare", str(runs["dp"]), str(tmp_path)])
    assert result.exit_code == 2 and "not a fedsynth run directory" in _flat(result.output)


@pytest.mark.parametrize("mode", ["fedavg-classifier", "centralized-real"])
def test_report_for_the_baseline_modes(tmp_path, mode):
    overrides = tiny_overrides(tmp_path) + [f"run.mode={mode}", "federation.rounds=2", "federation.local_epochs=1",
                                            "evaluation.fidelity=false", "evaluation.site_baselines=false"]
    if mode == "fedavg-classifier":  # client-level DP: its epsilon per round goes in the privacy section
        overrides += ["federation.client_dp.noise_multiplier=0.8", "federation.client_dp.clipping_norm=1.0"]
    run_dir, _ = simulate(load_config(None, overrides), engine="inprocess")
    page = write_report(run_dir.path).read_text()
    assert "This part of the report could not be built" not in page
    assert "id='pooled'" in page and "id='curves'" in page and "PHANTOM DATA" in page
    if mode == "centralized-real":
        assert "CENTRALIZED</strong>" in page and "real images (pooled centrally)" in page
    else:
        assert "Federated rounds" in page and "NOT PRIVATE</strong>" in page
        assert "Client-level DP on the averaged update" in page
        metrics = json.loads((run_dir.path / "metrics.json").read_text())
        assert f"{metrics['rounds'][1]['client_dp']['epsilon']:.4g}" in page


def test_real_images_are_flagged_and_can_be_left_out(runs, tmp_path):
    run = tmp_path / "real"
    shutil.copytree(runs["dp"], run)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["data"]["phantom"] = False  # as for a run on real X-rays
    (run / "metrics.json").write_text(json.dumps(metrics))
    with_real = write_report(run).read_text()
    assert "CONTAINS REAL IMAGES" in with_real and "real vs synthetic" in with_real
    result = CliRunner().invoke(app, ["report", str(run), "--no-real-images"])
    assert result.exit_code == 0, result.output
    without = (run / REPORT_FILE).read_text()
    assert "CONTAINS REAL IMAGES" not in without and "real vs synthetic" not in without
    assert len(_images(without)) == len(_images(with_real)) - 4  # the 2 sites' 2 real-vs-synthetic grids
