import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.classifier.metrics import (
    BinaryMetrics,
    ScoreHistogram,
    aupr,
    auroc,
    choose_threshold,
    evaluate_scores,
    pooled_metrics,
    stratified_bootstrap,
    wilson_interval,
)

LABELS = np.array([0, 0, 1, 1])
SCORES = np.array([0.1, 0.4, 0.35, 0.8])


def test_auroc_by_hand():
    # positive-negative pairs won: (0.35>0.1), (0.8>0.1), (0.8>0.4); lost: (0.35<0.4) -> 3/4
    assert auroc(LABELS, SCORES) == pytest.approx(0.75)


def test_aupr_by_hand():
    # ranked: 0.8 (pos) 0.4 (neg) 0.35 (pos) 0.1 (neg): precision 1 at recall .5, 2/3 at recall 1
    assert aupr(LABELS, SCORES) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_auroc_undefined_with_one_class():
    assert math.isnan(auroc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_wilson_interval_known_value():
    lo, hi = wilson_interval(8, 10, 0.95)
    assert lo == pytest.approx(0.4902, abs=1e-3)
    assert hi == pytest.approx(0.9433, abs=1e-3)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


@pytest.mark.slow  # over 1 s: outside the quick subset
def test_bootstrap_is_stratified_and_brackets_estimate():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 30 + [1] * 10)
    scores = np.where(labels == 1, rng.normal(1, 1, 40), rng.normal(0, 1, 40))
    seen_counts = set()

    def positives(lab, sc):
        seen_counts.add(int(lab.sum()))
        return auroc(lab, sc)

    lo, hi = stratified_bootstrap(labels, scores, positives, n_boot=200, seed=1)
    assert seen_counts == {10}, "every resample must keep the class counts"
    assert lo < auroc(labels, scores) < hi
    assert stratified_bootstrap(labels, scores, auroc, n_boot=200, seed=1) == (lo, hi)  # deterministic


def test_threshold_rules_use_validation_scores():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([0.1, 0.2, 0.7, 0.9])
    assert choose_threshold(labels, probs, "youden") == pytest.approx(0.7)
    assert choose_threshold(labels, probs, "sensitivity-0.9") == pytest.approx(0.7)
    with pytest.raises(ValueError):
        choose_threshold(labels, probs, "nope")


def test_evaluate_scores_confusion_and_rates():
    m = evaluate_scores(LABELS, SCORES, threshold=0.3, n_boot=50)
    # predictions >= 0.3: [0, 1, 1, 1] -> tp=2, fp=1, tn=1, fn=0
    assert (m.tp, m.fp, m.tn, m.fn) == (2, 1, 1, 0)
    assert m.sensitivity == 1.0 and m.specificity == 0.5
    assert m.auroc == pytest.approx(0.75)
    assert BinaryMetrics.from_dict(m.to_dict()).to_dict() == m.to_dict()


def test_one_class_test_split_is_reported_not_crashed():
    m = evaluate_scores(np.array([1, 1, 1]), np.array([0.2, 0.6, 0.9]), 0.5, n_boot=20)
    assert math.isnan(m.auroc) and "one class" in m.note
    assert m.to_dict()["auroc"] is None  # JSON-safe


def _site(seed, n):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    # distinct logits within and across sites, far apart relative to the bin width (0.016)
    logits = rng.permutation(np.arange(n)) * 0.1 - n * 0.05 + labels * 1.52 + seed * 0.05
    return labels, 1 / (1 + np.exp(-logits))


def test_pooled_histograms_match_exact_pooled_metrics():
    (la, pa), (lb, pb) = _site(0, 120), _site(1, 80)
    ha, hb = ScoreHistogram.from_scores(la, pa), ScoreHistogram.from_scores(lb, pb)
    ma = evaluate_scores(la, pa, 0.5, n_boot=0)
    mb = evaluate_scores(lb, pb, 0.5, n_boot=0)
    pooled = pooled_metrics([ha, hb], [(ma.tp, ma.fp, ma.tn, ma.fn), (mb.tp, mb.fp, mb.tn, mb.fn)], 0.5, n_boot=100)
    labels, probs = np.concatenate([la, lb]), np.concatenate([pa, pb])
    assert pooled.auroc == pytest.approx(auroc(labels, probs), abs=1e-9)
    assert pooled.aupr == pytest.approx(aupr(labels, probs), abs=1e-9)
    exact = evaluate_scores(labels, probs, 0.5, n_boot=0)
    assert (pooled.tp, pooled.fp, pooled.tn, pooled.fn) == (exact.tp, exact.fp, exact.tn, exact.fn)
    assert pooled.n == 200 and pooled.auroc_ci[0] < pooled.auroc < pooled.auroc_ci[1]


def test_histogram_holds_no_per_image_order():
    labels, probs = _site(2, 50)
    h = ScoreHistogram.from_scores(labels, probs, bins=100)
    assert h.positive.sum() == labels.sum() and h.negative.sum() == (1 - labels).sum()
    assert h.positive.shape == (100,)
    with pytest.raises(ValueError):
        ScoreHistogram(np.array([1, -1]), np.array([0, 0]))


def test_adaptive_edges_keep_resolution_for_a_narrow_score_range():
    from fedsynth.classifier.metrics import adaptive_edges

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 300)
    logits = 0.001 * (rng.random(300) + labels)  # all scores within 0.002 of each other
    probs = 1 / (1 + np.exp(-logits))
    exact = auroc(labels, probs)
    coarse = ScoreHistogram.from_scores(labels, probs, 2000)
    fine = ScoreHistogram.from_scores(labels, probs, adaptive_edges(logits, 2000))
    coarse_auc = pooled_metrics([coarse], [(0, 0, 0, 0)], 0.5, n_boot=0).auroc
    fine_auc = pooled_metrics([fine], [(0, 0, 0, 0)], 0.5, n_boot=0).auroc
    assert coarse_auc == pytest.approx(0.5)  # one bin holds everything
    assert fine_auc == pytest.approx(exact, abs=0.01)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 6)), min_size=2, max_size=60),
       st.integers(0, 2**16))
def test_the_vectorised_bootstrap_statistics_equal_sklearn_on_each_resample(rows, seed):
    """AUROC and average precision computed from resample counts equal sklearn's on the resampled
    arrays themselves, ties included (scores on a coarse grid make many)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from fedsynth.classifier.metrics import _weighted_rank_statistic

    labels = np.array([r[0] for r in rows] + [0, 1])
    scores = np.array([r[1] for r in rows] + [3, 3], dtype=np.float64) / 6
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, labels.size, labels.size) for _ in range(5)]
    draws = [d for d in draws if 0 < labels[d].sum() < labels.size]  # both classes, as a stratified resample
    if not draws:
        return
    counts = np.stack([np.bincount(d, minlength=labels.size) for d in draws]).astype(np.float64)
    fast_auroc = _weighted_rank_statistic(labels, scores, counts, "auroc")
    fast_ap = _weighted_rank_statistic(labels, scores, counts, "aupr")
    for i, d in enumerate(draws):
        assert fast_auroc[i] == pytest.approx(roc_auc_score(labels[d], scores[d]), abs=1e-12)
        assert fast_ap[i] == pytest.approx(average_precision_score(labels[d], scores[d]), abs=1e-12)


def test_the_bootstrap_interval_is_the_one_the_resampling_loop_gives():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) * 20) / 20
    for statistic in (auroc, aupr):
        fast = stratified_bootstrap(labels, scores, statistic, 300, seed=7)
        loop = stratified_bootstrap(labels, scores, lambda y, s, f=statistic: f(y, s), 300, seed=7)  # generic path
        assert fast == pytest.approx(loop, abs=1e-12)
