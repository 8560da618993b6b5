"""The subtype task: a finer label set (normal / bacteria / virus) conditions every generator,
labels every release and trains a three-class classifier, end to end on phantoms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.classifier.metrics import ScoreHistogram, auroc, evaluate_scores, uniform_edges
from fedsynth.classifier.models import pneumonia_logit
from fedsynth.classifier.multiclass import (
    class_histograms,
    confusion_matrix,
    pooled_class_metrics,
)
from fedsynth.classifier.train import Classifier, train_classifier
from fedsynth.config import ClassifierSection, DDPMSection, GANSection, MeanEmbeddingSection, load_config
from fedsynth.data.dataset import ImageSet
from fedsynth.data.labels import SUBTYPES, binary_labels, check_label_set, class_indices
from fedsynth.data.phantom import make_phantoms
from fedsynth.errors import ConfigError, DataError
from fedsynth.generators import build_generator, load_generator
from fedsynth.protocol import EvalResult, Release, decode_eval_result, encode_eval_result
from fedsynth.rundir import RunDir
from fedsynth.server.checks import check_eval_result, check_release
from fedsynth.simulation import simulate

SUBTYPE_OVERRIDES = ["data.label_set=[normal,bacteria,virus]", "classifier.task=subtype", "data.phantom.virus=0.5"]


# ---- data -------------------------------------------------------------------------------------


def test_phantoms_carry_subtypes_and_virus_leaves_the_others_unchanged():
    plain = make_phantoms(80, 16, seed=4)
    viral = make_phantoms(80, 16, seed=4, virus=0.5)
    assert set(plain.meta["subtype"]) == {"normal", "bacteria"}
    assert set(viral.meta["subtype"]) == {"normal", "bacteria", "virus"}
    np.testing.assert_array_equal(plain.labels, viral.labels)  # same patients, same binary labels
    same = viral.meta["subtype"] != "virus"
    np.testing.assert_array_equal(plain.images[same], viral.images[same])
    changed = viral.meta["subtype"] == "virus"
    assert np.abs(plain.images[changed] - viral.images[changed]).mean() > 0.005
    assert (viral.labels[changed] == 1).all()


def test_class_indices_follow_the_label_set():
    ds = make_phantoms(60, 16, seed=1, virus=0.5)
    np.testing.assert_array_equal(class_indices(ds, ("normal", "pneumonia")), ds.labels)
    idx = class_indices(ds, SUBTYPES)
    np.testing.assert_array_equal(np.array(SUBTYPES)[idx], ds.meta["subtype"])
    np.testing.assert_array_equal(binary_labels(idx), ds.labels)


def _with_subtypes(values: list[str], labels: list[int]) -> ImageSet:
    n = len(values)
    return ImageSet(np.zeros((n, 4, 4), np.float32), np.array(labels), meta={"subtype": np.array(values)})


@pytest.mark.parametrize("ds, message", [
    (ImageSet(np.zeros((2, 4, 4), np.float32), np.array([0, 1])), "no 'subtype' column"),
    (_with_subtypes(["normal", "fungal"], [0, 1]), "outside the set: 'fungal'"),
    (_with_subtypes(["normal", "virus"], [0, 0]), "disagrees with their binary label"),
    (_with_subtypes(["bacteria", "virus"], [0, 1]), "disagrees"),
])
def test_class_indices_refuse_data_that_does_not_fit(ds, message):
    with pytest.raises(DataError, match=message):
        class_indices(ds, SUBTYPES)


def test_subtype_column_is_read_from_npz(tmp_path):
    from fedsynth.data.dataset import save_npz
    from fedsynth.data.ingest import load_source

    ds = make_phantoms(30, 16, seed=2, virus=0.5)
    save_npz(ds, str(tmp_path / "x.npz"))
    back, _ = load_source(str(tmp_path / "x.npz"), 16)
    np.testing.assert_array_equal(class_indices(back, SUBTYPES), class_indices(ds, SUBTYPES))


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(st.one_of(st.text(max_size=10), st.lists(st.one_of(st.text(max_size=12), st.integers()), max_size=20)))
def test_a_label_set_is_valid_or_refused_with_a_reason(names):
    try:
        out = check_label_set(names)
    except ValueError as err:
        assert str(err)
    else:
        assert 2 <= len(out) <= 16 and len(set(out)) == len(out) and all(n == n.lower() for n in out)


@pytest.mark.parametrize("overrides, message", [
    (["classifier.task=subtype"], "finer data.label_set"),
    (SUBTYPE_OVERRIDES + ["run.mode=fedavg-classifier"], "fedavg-classifier trains the binary task"),
    (["data.label_set=[normal,bacteria,virus]", "alignment.enabled=true"], "does not take a finer"),
    (["data.label_set=[normal,normal]"], "distinct"),
    (["data.label_set=[normal]"], "2 to 16"),
])
def test_config_refuses_what_the_subtype_task_cannot_run(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


# ---- generators -------------------------------------------------------------------------------


@pytest.mark.parametrize("section", [
    GANSection(epochs=1, base_channels=8, latent_dim=16, batch_size=32),
    MeanEmbeddingSection(steps=3, batch_size=8),
    DDPMSection(epochs=1, block_out_channels=[16, 32], norm_num_groups=8, sampling_steps=2, batch_size=32),
], ids=lambda s: s.family)
def test_every_family_conditions_on_the_label_set(section, tmp_path):
    ds = make_phantoms(90, 16, seed=0, virus=0.5)
    gen = build_generator(section, 16, seed=0, device="cpu", classes=SUBTYPES)
    gen.fit(ds.images, class_indices(ds, SUBTYPES))
    images = gen.sample(6, np.array([0, 1, 2, 0, 1, 2]), seed=1)
    assert images.shape == (6, 16, 16) and np.isfinite(images).all()
    with pytest.raises(ValueError, match=r"class indices 0 \(normal\), 1 \(bacteria\), 2 \(virus\)"):
        gen.sample(2, 3)
    with pytest.raises(ValueError, match="class indices"):
        gen.fit(ds.images, np.full(len(ds), 3))
    gen.save(tmp_path / "g.safetensors")
    back = load_generator(tmp_path / "g.safetensors", device="cpu")
    assert back.classes == SUBTYPES
    np.testing.assert_allclose(back.sample(3, 2, seed=5), gen.sample(3, 2, seed=5), atol=1e-5)


def test_a_warm_start_of_another_label_set_is_refused(tmp_path):
    pub = make_phantoms(40, 16, seed=0)
    binary = build_generator(GANSection(epochs=1, base_channels=8, latent_dim=16), 16, device="cpu")
    binary.fit(pub.images, pub.labels)
    binary.save_pretrained(tmp_path / "w.safetensors", "phantoms")
    finer = build_generator(GANSection(epochs=1, base_channels=8, latent_dim=16), 16, device="cpu", classes=SUBTYPES)
    with pytest.raises(ValueError, match="conditions on"):
        finer.load_pretrained(tmp_path / "w.safetensors")


# ---- classifier -------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None, derandomize=True, database=None)
@given(st.lists(st.floats(-20, 20), min_size=3, max_size=3))
def test_the_pneumonia_logit_is_the_logit_of_one_minus_p_normal(logits):
    out = torch.tensor([logits], dtype=torch.float64)
    p_normal = torch.softmax(out, dim=1)[0, 0]
    assert torch.sigmoid(pneumonia_logit(out))[0].item() == pytest.approx(1 - p_normal.item(), abs=1e-9)


def test_a_subtype_classifier_learns_the_three_phantom_classes(tmp_path):
    train = make_phantoms(600, 16, seed=0, virus=0.5)
    test = make_phantoms(200, 16, seed=1, virus=0.5)
    clf = train_classifier(train.images, class_indices(train, SUBTYPES), ClassifierSection(epochs=6),
                           arch="small-cnn", resolution=16, seed=0, device="cpu", classes=SUBTYPES)
    assert clf.classes == SUBTYPES
    p = clf.predict_class_proba(test.images)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(clf.predict_proba(test.images), 1 - p[:, 0], atol=1e-5)
    truth = class_indices(test, SUBTYPES)
    macro = np.mean([auroc((truth == c).astype(int), p[:, c]) for c in range(3)])
    assert macro > 0.7  # chance is 0.5: normal, patchy and perihilar pneumonia differ in the phantoms
    clf.save(tmp_path / "c.safetensors")
    back = Classifier.load(tmp_path / "c.safetensors")
    assert back.classes == SUBTYPES
    np.testing.assert_allclose(back.predict_class_proba(test.images[:5]), p[:5], atol=1e-5)


# ---- pooled figures and the checks of a site's reply ------------------------------------------


def test_pooled_class_metrics_match_the_per_image_figures():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 300)
    probs = rng.dirichlet([1, 1, 1], 300)
    probs[np.arange(300), truth] += 0.5  # informative
    probs /= probs.sum(axis=1, keepdims=True)
    edges = uniform_edges(2000)
    halves = [slice(0, 150), slice(150, 300)]  # two sites
    pooled = pooled_class_metrics(SUBTYPES, [class_histograms(truth[h], probs[h], edges) for h in halves],
                                  [confusion_matrix(truth[h], probs[h]) for h in halves], n_boot=50, seed=0)
    for c, name in enumerate(SUBTYPES):
        exact = auroc((truth == c).astype(int), probs[:, c])
        assert pooled["per_class"][name]["auroc"] == pytest.approx(exact, abs=2e-3)
        lo, hi = pooled["per_class"][name]["auroc_ci"]
        assert lo <= pooled["per_class"][name]["auroc"] <= hi
    assert pooled["accuracy"] == pytest.approx((probs.argmax(1) == truth).mean())
    assert pooled["confusion"] == confusion_matrix(truth, probs).tolist()
    assert pooled["n"] == 300


def _subtype_reply(**change):
    truth = np.array([0, 0, 1, 2, 1, 2])
    probs = np.array([[.8, .1, .1], [.6, .3, .1], [.2, .7, .1], [.1, .2, .7], [.3, .4, .3], [.5, .2, .3]])
    binary = (truth > 0).astype(int)
    metrics = evaluate_scores(binary, 1 - probs[:, 0], 0.5, n_boot=0).to_dict()
    main = ScoreHistogram.from_scores(binary, 1 - probs[:, 0], np.array([-20.0, 0.0, 20.0]))
    block = {"classes": list(SUBTYPES), "confusion": confusion_matrix(truth, probs).tolist()}
    res = EvalResult("site-0", metrics, main, subtype=block,
                     class_histograms=class_histograms(truth, probs, uniform_edges(10)))
    for k, v in change.items():
        setattr(res, k, v)
    return res


def test_a_consistent_subtype_reply_passes_and_survives_the_wire():
    res = _subtype_reply()
    assert check_eval_result(res, 2, 10, SUBTYPES) is None
    back = decode_eval_result(encode_eval_result(res))
    assert back.subtype == res.subtype
    assert [h.positive.tolist() for h in back.class_histograms] == [h.positive.tolist() for h in res.class_histograms]
    assert check_eval_result(back, 2, 10, SUBTYPES) is None


@pytest.mark.parametrize("change, message", [
    ({"subtype": {"classes": ["normal", "virus", "bacteria"], "confusion": [[0] * 3] * 3}}, "not the run's label"),
    ({"subtype": {"classes": list(SUBTYPES), "confusion": [[1, 1], [1, 1]]}}, "3x3 matrix"),
    ({"subtype": {"classes": list(SUBTYPES), "confusion": [[2, 0, 0], [0, 2, 0], [0, 0, -2]]}}, "non-negative"),
    ({"subtype": {"classes": list(SUBTYPES), "confusion": [[1, 0, 0], [0, 2, 0], [0, 0, 2]]}}, "does not add up"),
    ({"subtype": {"classes": list(SUBTYPES), "confusion": [[2, 0, 0], [0, 2, 0], [0, 0, 2]], "x": 1}},
     "not as {classes, confusion}"),
    ({"class_histograms": []}, "0 class histograms"),
    ({"class_histograms": [ScoreHistogram(np.ones(10, int), np.ones(10, int))] * 3}, "does not add up to its row"),
    ({"class_histograms": [ScoreHistogram(np.ones(4, int), np.ones(4, int))] * 3}, "bins"),
])
def test_an_inconsistent_subtype_reply_is_refused(change, message):
    problem = check_eval_result(_subtype_reply(**change), 2, 10, SUBTYPES)
    assert problem is not None and message in problem


def test_subtype_figures_a_binary_run_did_not_ask_for_are_refused():
    assert "did not ask for" in check_eval_result(_subtype_reply(), 2, 10, None)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(st.lists(st.lists(st.integers(-3, 10**19), min_size=0, max_size=4), max_size=4),
       st.lists(st.text(max_size=8), max_size=4))
@pytest.mark.slow  # over 1 s: outside the quick subset
def test_the_subtype_check_never_raises(confusion, classes):
    res = _subtype_reply(subtype={"classes": classes, "confusion": confusion})
    problem = check_eval_result(res, 2, 10, SUBTYPES)
    assert isinstance(problem, str)


def _release(labels, label_set=("normal", "bacteria", "virus")):
    n = len(labels)
    return Release("site-0", np.zeros((n, 16, 16), np.uint8), np.asarray(labels, np.uint8),
                   {"label_set": list(label_set)})


@pytest.mark.parametrize("release, message", [
    (_release([0, 1, 3]), "class indices 0..2"),
    (_release([0, 1, 2], ("normal", "pneumonia")), "labelled with the label set"),
    (Release("site-0", np.zeros((2, 16, 16), np.uint8), np.array([0, 1], np.uint8), {}), "labelled with"),
])
def test_the_server_refuses_a_release_of_another_label_set(release, message, tiny_config):
    cfg = load_config(None, ["data.resolution=16", *SUBTYPE_OVERRIDES])
    assert message in check_release(release, cfg)
    assert check_release(_release([0, 1, 2]), cfg) is None


# ---- end to end -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["substitution", "federated-merf"])
def test_the_subtype_task_runs_end_to_end_on_phantoms(mode, tmp_path, seeded_dp_noise):
    from tests.conftest import tiny_overrides

    extra = (["run.mode=federated", "generator.family=dp-merf", "generator.steps=20", "federation.rounds=1",
              "privacy.epsilon=10"] if mode == "federated-merf" else [])
    base = [o for o in tiny_overrides(tmp_path) if not (extra and o.startswith("generator."))]
    cfg = load_config(None, [*base, "data.phantom.n_images=240", *SUBTYPE_OVERRIDES, *extra])
    run_dir, m = simulate(cfg, engine="inprocess")
    assert m.subtype is not None and m.subtype.classes == list(SUBTYPES)
    assert set(m.subtype.per_class) == set(SUBTYPES)
    assert m.subtype.n == m.pooled.n  # every test image of every site, once
    assert np.asarray(m.subtype.confusion).sum() == m.subtype.n
    assert set(m.subtype.sites) == set(m.ok_sites())
    assert m.classifier["classes"] == list(SUBTYPES)
    releases = RunDir.open(run_dir.path).load_releases()
    assert releases and all(set(np.unique(y)) <= {0, 1, 2} for _, y in releases.values())
    assert any(2 in np.unique(y) for _, y in releases.values())  # viral images were generated and released
    html = (run_dir.path / "report.html").read_text()
    assert "<section id='subtype'>" in html and "bacteria" in html
    if mode == "federated-merf":
        assert m.private and all(e <= 10 + 1e-6 for e in m.spent_epsilons())
    else:
        metrics = json.loads(Path(run_dir.path / "metrics.json").read_text())
        assert all(s["release"]["label_set"] == list(SUBTYPES) for s in metrics["sites"].values())
        _generate_edit_and_stress(run_dir.path, tmp_path)


def _generate_edit_and_stress(run: Path, tmp_path: Path) -> None:
    """The CLI samples, edits and stress-tests with the run's three classes."""
    from typer.testing import CliRunner

    from fedsynth.cli import app
    from fedsynth.data.ingest import load_source

    runner = CliRunner()
    out = tmp_path / "virus.npz"
    res = runner.invoke(app, ["generate", str(run), "--site", "site-0", "--label", "virus", "--n", "4", "--out",
                              str(out)])
    assert res.exit_code == 0, res.output
    back, _ = load_source(str(out), 16)  # an ingestible bundle: binary labels and the subtype column
    assert (back.labels == 1).all() and (class_indices(back, SUBTYPES) == 2).all()
    res = runner.invoke(app, ["generate", str(run), "--site", "site-0", "--label", "normal", "--edit-to", "virus",
                              "--n", "4", "--out", str(tmp_path / "edit.npz")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "edit.json").read_text())
    assert summary["target"] == "virus" and 0 <= summary["target_probability_after_mean"] <= 1
    res = runner.invoke(app, ["stress", str(run), str(run), "--site", "site-0", "--n", "4", "--n-edit", "2",
                              "--bootstrap", "0", "--out", str(tmp_path / "stress")])
    assert res.exit_code == 0, res.output
    stress = json.loads((tmp_path / "stress" / "stress.json").read_text())
    assert stress["classes"] == list(SUBTYPES)
    assert set(stress["unshifted"]["mean_score"]) == set(SUBTYPES)
    assert {"normal->bacteria", "normal->virus", "virus->normal"} <= set(stress["edits"])
    res = runner.invoke(app, ["generate", str(run), "--site", "site-0", "--label", "fungal", "--n", "2"])
    assert res.exit_code != 0 and "normal, bacteria, virus" in res.output


def test_a_site_under_evaluation_epsilon_returns_no_subtype_figures(tmp_path):
    from fedsynth.client.evaluation import evaluate_at_site
    from fedsynth.client.site import Site
    from fedsynth.client.site_data import simulated_site_state, simulated_sites
    from fedsynth.config import SitePolicy

    cfg = load_config(None, ["data.resolution=16", "data.phantom.n_images=150", *SUBTYPE_OVERRIDES])
    split = simulated_sites(cfg)[0]
    train = split.train
    clf = train_classifier(train.images, class_indices(train, SUBTYPES), ClassifierSection(epochs=1),
                           arch="small-cnn", resolution=16, device="cpu", classes=SUBTYPES)
    states = [simulated_site_state(cfg, tmp_path / d, split.name) for d in ("a", "b")]
    for state in states:
        state.ensure_keys()
    open_site = Site(split, states[0])
    assert evaluate_at_site(open_site, clf, cfg).subtype["classes"] == list(SUBTYPES)
    noisy = Site(split, states[1], policy=SitePolicy(evaluation_epsilon=1.0))
    res = evaluate_at_site(noisy, clf, cfg)
    assert res.subtype == {} and res.class_histograms == []
