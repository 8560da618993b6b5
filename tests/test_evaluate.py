"""`fedsynth evaluate`: a hospital validates the classifier on its own labelled X-rays; calibration,
operating points, subgroups; out-of-distribution flags (fedsynth.evaluation.calibration / external)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
from typer.testing import CliRunner

from fedsynth.classifier.train import Classifier, train_classifier
from fedsynth.cli import app
from fedsynth.config import ClassifierSection
from fedsynth.data.dataset import to_uint8
from fedsynth.data.ingest import load_source
from fedsynth.data.phantom import make_phantoms
from fedsynth.evaluation.calibration import (
    age_bands,
    brier_score,
    calibration_report,
    expected_calibration_error,
    operating_point,
    reliability_bins,
    subgroup_metrics,
    threshold_for_sensitivity,
)

RES = 16
BOOT = 30  # bootstrap resamples: enough to produce intervals, few enough for seconds
runner = CliRunner()


def said(result) -> str:
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def clf_path(tmp_path_factory, phantoms16) -> Path:
    ds = phantoms16  # 120 phantoms at 16 px (conftest)
    clf = train_classifier(ds.images, ds.labels, ClassifierSection(epochs=2, batch_size=32), arch="small-cnn",
                           resolution=RES, seed=0, device="cpu")
    path = tmp_path_factory.mktemp("clf") / "classifier.safetensors"
    clf.save(path)
    return path


@pytest.fixture(scope="module")
def clf(clf_path) -> Classifier:
    return Classifier.load(clf_path)


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    """A hospital's labelled bundle, no metadata."""
    ds = make_phantoms(48, RES, seed=5)
    path = tmp_path_factory.mktemp("hospital") / "site_a.npz"
    np.savez(path, images=to_uint8(ds.images), labels=ds.labels.astype(np.uint8))
    return path


META = {"source": ["scanner-1", "scanner-2"], "view": ["PA", "AP"], "sex": ["F", "M"], "age": ["7", "30", "52", "80"]}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """PNGs (24 px, not the classifier's 16) with a labels.csv carrying all four metadata columns, and a
    broken file."""
    ds = make_phantoms(32, 24, seed=6)
    root = tmp_path_factory.mktemp("hospital") / "xrays"
    root.mkdir()
    lines = ["path,label,source,view,sex,age"]
    for i, (image, label) in enumerate(zip(ds.images, ds.labels)):
        Image.fromarray(to_uint8(image)).save(root / f"img{i:02d}.png")
        cells = [META[k][i % len(META[k])] for k in ("source", "view", "sex", "age")]
        lines.append(f"img{i:02d}.png,{'pneumonia' if label else 'normal'},{','.join(cells)}")
    (root / "broken.png").write_bytes(b"not an image")
    lines.append("broken.png,normal,scanner-1,PA,F,")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def evaluate(*args: str):
    return runner.invoke(app, ["evaluate", *map(str, args), "--bootstrap", str(BOOT)])


def ece_by_hand(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> float:
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = (probs >= lo) & ((probs < hi) if b < n_bins - 1 else (probs <= hi))
        if inside.any():
            total += inside.sum() / len(labels) * abs(labels[inside].mean() - probs[inside].mean())
    return total


# ---- the command -----------------------------------------------------------------------------------


def test_evaluate_npz_figures_equal_an_independent_computation(clf_path, clf, npz, tmp_path):
    out = tmp_path / "out"
    result = evaluate(clf_path, npz, "--out", out)
    assert result.exit_code == 0, result.output
    assert "AUROC" in said(result) and "evaluation.html" in said(result)
    r = json.loads((out / "evaluation.json").read_text())
    ds, _ = load_source(npz, RES)
    y, p = ds.labels, clf.predict_proba(ds.images).astype(np.float64)
    m = r["metrics"]
    assert m["n"] == 48 and m["n_positive"] == int(y.sum())
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    assert m["aupr"] == pytest.approx(average_precision_score(y, p), abs=1e-9)
    assert m["auroc_ci"][0] <= m["auroc"] <= m["auroc_ci"][1]
    assert r["calibration"]["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-9)
    assert r["calibration"]["ece"] == pytest.approx(ece_by_hand(y, p), abs=1e-9)
    assert sum(b["n"] for b in r["calibration"]["bins"]) == 48 and len(r["calibration"]["bins"]) == 10
    pred = p >= clf.threshold
    assert m["sensitivity"] == pytest.approx(pred[y == 1].mean()) and m["specificity"] == pytest.approx(
        (~pred[y == 0]).mean())
    run, at90, at95 = r["operating_points"]
    assert run["threshold"] == pytest.approx(clf.threshold) and not run["descriptive"]
    for point, target in ((at90, 0.90), (at95, 0.95)):
        assert point["descriptive"] and "chosen on the evaluated data" in point["chosen_on"]
        assert point["sensitivity"] >= target and point["sensitivity"] == pytest.approx(
            (p[y == 1] >= point["threshold"]).mean())
    assert r["subgroups"] == {}  # no metadata column in this bundle
    ood = r["ood"]
    assert ood["available"] and ood["n_flagged"] == int(clf.is_ood(ds.images).sum())
    assert ood["metrics_in_distribution"]["n"] == 48 - ood["n_flagged"]
    assert any("PHANTOM" in w for w in r["warnings"]) is False  # this classifier's header says nothing of phantoms
    page = (out / "evaluation.html").read_text()
    assert "<script" not in page and not re.search(r"https?://", page)
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r"src='([^']*)'", page))
    assert "reliability diagram" in page and "descriptive" in page and "Out-of-distribution" in page


def test_evaluate_folder_with_metadata_gives_exactly_those_subgroups(clf_path, folder, tmp_path):
    result = evaluate(clf_path, folder, "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert "skipped" in said(result) and "broken.png" in said(result)
    r = json.loads((tmp_path / "o" / "evaluation.json").read_text())
    assert r["data"]["n"] == 32 and [Path(s["path"]).name for s in r["data"]["skipped"]] == ["broken.png"]
    assert set(r["subgroups"]) == {"source", "view", "sex", "age"}
    assert [g["group"] for g in r["subgroups"]["age"]] == ["0-17", "18-39", "40-64", "65+"]
    assert [g["group"] for g in r["subgroups"]["view"]] == ["AP", "PA"]
    for groups in r["subgroups"].values():
        assert sum(g["n"] for g in groups) == 32
        for g in groups:
            assert g["prevalence"] == pytest.approx(g["n_positive"] / g["n"])
    page = (tmp_path / "o" / "evaluation.html").read_text()
    assert all(f"id='subgroup-{c}'" in page for c in ("source", "view", "sex", "age"))


def test_subgroups_only_for_the_columns_given(clf_path, tmp_path):
    ds = make_phantoms(24, RES, seed=9)
    path = tmp_path / "views.npz"
    np.savez(path, images=to_uint8(ds.images), labels=ds.labels, view=np.array(["PA", "AP"] * 12))
    result = evaluate(clf_path, path, "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    r = json.loads((tmp_path / "o" / "evaluation.json").read_text())
    assert list(r["subgroups"]) == ["view"] and r["data"]["metadata_columns"] == ["view"]


def test_default_out_folder_is_beside_the_data_and_never_overwritten(clf_path, npz, tmp_path):
    data = tmp_path / "site_b.npz"
    data.write_bytes(npz.read_bytes())
    for expected in ("evaluation-site_b", "evaluation-site_b-2"):
        result = evaluate(clf_path, data)
        assert result.exit_code == 0, result.output
        assert {p.name for p in (tmp_path / expected).iterdir()} == {"evaluation.json", "evaluation.html"}
    before = (tmp_path / "evaluation-site_b" / "evaluation.json").read_text()
    result = evaluate(clf_path, data, "--out", tmp_path / "evaluation-site_b")
    assert result.exit_code == 2 and "nothing is overwritten" in said(result) and "Traceback" not in result.output
    assert (tmp_path / "evaluation-site_b" / "evaluation.json").read_text() == before


def test_evaluate_errors_are_one_clear_line(clf_path, tmp_path):
    ds = make_phantoms(20, RES, seed=2)
    one_class = tmp_path / "normal_only.npz"
    np.savez(one_class, images=to_uint8(ds.images), labels=np.zeros(20, np.uint8))
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, images=to_uint8(ds.images))
    no_labels = tmp_path / "pngs"
    no_labels.mkdir()
    Image.fromarray(to_uint8(ds.images[0])).save(no_labels / "a.png")
    (tmp_path / "empty_run").mkdir()
    cases = [
        ((clf_path, one_class), "normal X-rays only"),
        ((tmp_path / "empty_run", one_class), "no classifier at"),
        ((tmp_path / "missing_run", one_class), "no classifier at"),
        ((clf_path, unlabelled), "needs a 'labels' array"),
        ((clf_path, no_labels), "no label"),
        ((clf_path, tmp_path / "nothing_here"), "not found"),
    ]
    for (run, data), message in cases:
        result = evaluate(run, data, "--out", tmp_path / "never")
        assert result.exit_code == 2, (message, result.output)
        assert message in said(result) and "Traceback" not in result.output
        assert said(result).startswith("error:")
    assert not (tmp_path / "never").exists()


# ---- calibration, operating points, subgroups ------------------------------------------------------


def test_ece_is_about_zero_when_calibrated_and_large_when_overconfident():
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    y = (rng.random(p.size) < p).astype(int)
    assert expected_calibration_error(y, p) < 0.01
    # the truth is 60 / 40, the classifier says 0.99 / 0.01
    truth = rng.random(20_000) < 0.5
    y2 = np.where(truth, rng.random(truth.size) < 0.6, rng.random(truth.size) < 0.4).astype(int)
    over = np.where(truth, 0.99, 0.01)
    assert expected_calibration_error(y2, over) == pytest.approx(0.39, abs=0.02)
    assert brier_score(y2, over) == pytest.approx(brier_score_loss(y2, over))
    report = calibration_report(y2, over)
    assert [b["n"] for b in report["bins"]][1:-1] == [0] * 8 and report["bins"][0]["mean_probability"] == 0.01


def test_reliability_bins_edges_and_the_closed_last_bin():
    bins = reliability_bins([0, 1, 1, 0], [0.0, 0.1, 1.0, 0.95])
    assert [b["n"] for b in bins] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    assert bins[9]["fraction_positive"] == 0.5 and bins[2]["mean_probability"] is None


@pytest.mark.parametrize("labels, probs, message", [
    ([0, 1], [0.2, 1.5], r"\[0, 1\]"),
    ([0, 1], [0.2, float("nan")], "finite"),
    ([0, 2], [0.2, 0.3], "0 \\(normal\\) or 1"),
    ([0, 1, 1], [0.2, 0.3], "one length"),
    ([], [], "0 images"),
])
def test_bad_inputs_are_clear_errors(labels, probs, message):
    for fn in (expected_calibration_error, brier_score, reliability_bins):
        with pytest.raises(ValueError, match=message):
            fn(np.array(labels), np.array(probs))


def test_threshold_for_sensitivity_is_the_highest_that_reaches_it():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.15), 0, 1)
    for target in (0.9, 0.95, 1.0):
        t = threshold_for_sensitivity(y, p, target)
        assert operating_point(y, p, t)["sensitivity"] >= target
        higher = np.unique(p[p > t])
        assert higher.size == 0 or operating_point(y, p, higher[0])["sensitivity"] < target
    with pytest.raises(ValueError, match="no pneumonia"):
        threshold_for_sensitivity(np.zeros(4), np.full(4, 0.5), 0.9)


def test_age_bands():
    ages = [5, 17, 17.5, 18, 39, 40, 64, 65, 99, "", "nan", "40-49", "52"]
    assert age_bands(ages).tolist() == ["0-17", "0-17", "0-17", "18-39", "18-39", "40-64", "40-64", "65+", "65+",
                                        "(missing)", "(missing)", "40-49", "40-64"]


def test_subgroup_with_one_class_has_no_auroc():
    y = np.array([0, 1, 0, 1, 0, 0])
    p = np.array([0.1, 0.9, 0.2, 0.7, 0.3, 0.6])
    rows = subgroup_metrics(y, p, np.array(["a", "a", "a", "a", "b", "b"]), 0.5, column="source", n_boot=20)
    assert [r["group"] for r in rows] == ["a", "b"]
    assert rows[0]["auroc"] == 1.0 and rows[1]["auroc"] is None and "one class" in rows[1]["note"]
    assert rows[1]["sensitivity"] is None and rows[1]["specificity"] == 0.5


# ---- out-of-distribution ---------------------------------------------------------------------------


def test_ood_reference_is_in_the_header_and_small(clf_path, clf):
    ood = clf.ood
    assert ood["quantile"] == 0.99 and ood["reference"] == "the classifier's synthetic validation split"
    assert len(ood["mean"]) == len(ood["var"]) == 128 and min(ood["var"]) > 0 and ood["threshold"] > 0
    for x in [*ood["mean"], *ood["var"], ood["threshold"]]:
        assert x == float(f"{x:.6g}")
    from safetensors import safe_open

    with safe_open(str(clf_path), framework="pt") as fh:
        header = json.loads(fh.metadata()["fedsynth_classifier"])
    assert header["ood"] == ood and len(json.dumps(ood)) < 8000


def test_noise_and_blank_images_are_ood_and_phantoms_mostly_not(clf):
    rng = np.random.default_rng(0)
    noise = rng.random((16, RES, RES), dtype=np.float32)
    blank = np.stack([np.zeros((RES, RES)), np.ones((RES, RES)), np.full((RES, RES), 0.5)]).astype(np.float32)
    assert clf.is_ood(noise).all() and clf.is_ood(blank).all()
    phantoms = make_phantoms(100, RES, seed=77).images
    assert clf.is_ood(phantoms).mean() < 0.2
    scores = clf.ood_scores(phantoms)
    assert scores.shape == (100,) and np.isfinite(scores).all() and np.median(scores) < clf.ood["threshold"]


def test_a_classifier_saved_without_ood_flags_nothing(clf, tmp_path):
    old = Classifier(clf.model, clf.arch, clf.resolution, clf.threshold,
                     {k: v for k, v in clf.meta.items() if k != "ood"})
    path = tmp_path / "old.safetensors"
    old.save(path)
    again = Classifier.load(path)
    noise = np.random.default_rng(1).random((3, RES, RES), dtype=np.float32)
    assert again.ood is None and again.ood_scores(noise) is None and not again.is_ood(noise).any()
    ds = make_phantoms(20, RES, seed=4)
    data = tmp_path / "d.npz"
    np.savez(data, images=to_uint8(ds.images), labels=ds.labels)
    result = evaluate(path, data, "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    r = json.loads((tmp_path / "o" / "evaluation.json").read_text())
    assert r["ood"]["available"] is False and "no out-of-distribution reference" in r["ood"]["note"]


def test_a_malformed_ood_header_is_refused(clf, tmp_path):
    from fedsynth.classifier.predict import load_run_classifier
    from fedsynth.errors import DataError

    bad = Classifier(clf.model, clf.arch, clf.resolution, clf.threshold,
                     {**clf.meta, "ood": {"mean": [0.0], "var": [-1.0], "threshold": 1.0}})
    bad.save(tmp_path / "bad.safetensors")
    with pytest.raises(DataError, match="ood statistics"):
        load_run_classifier(tmp_path / "bad.safetensors")


def test_evaluate_reports_noise_as_ood(clf_path, tmp_path):
    ds = make_phantoms(30, RES, seed=12)
    images = ds.images.copy()
    images[:6] = np.random.default_rng(2).random((6, RES, RES), dtype=np.float32)
    data = tmp_path / "mixed.npz"
    np.savez(data, images=to_uint8(images), labels=ds.labels)
    result = evaluate(clf_path, data, "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    r = json.loads((tmp_path / "o" / "evaluation.json").read_text())
    assert r["ood"]["n_flagged"] >= 6 and math.isclose(r["ood"]["rate"], r["ood"]["n_flagged"] / 30)
    assert r["ood"]["metrics_in_distribution"]["n"] == 30 - r["ood"]["n_flagged"]
    assert any("out of distribution" in w for w in r["warnings"])
