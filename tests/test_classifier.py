import csv

import numpy as np
import pytest
from PIL import Image

from fedsynth.classifier.predict import load_run_classifier, predict, write_csv
from fedsynth.classifier.train import Classifier, train_classifier
from fedsynth.config import ClassifierSection
from fedsynth.data.dataset import save_npz
from fedsynth.data.phantom import make_phantoms
from fedsynth.errors import DataError

CFG = ClassifierSection(epochs=2, batch_size=32)


@pytest.fixture(scope="module")
def clf():
    ds = make_phantoms(160, 16, seed=8)
    return train_classifier(ds.images, ds.labels, CFG, arch="small-cnn", resolution=16, seed=0, device="cpu")


def test_training_selects_on_validation_and_sets_threshold(clf):
    assert 0.0 <= clf.threshold <= 1.0
    assert clf.meta["n_val"] > 0 and clf.meta["best_epoch"] in (1, 2)
    assert len(clf.meta["history"]) == 2 and "val_auroc" in clf.meta["history"][0]
    assert clf.meta["trained_on"] == "synthetic"


def test_predict_proba_shape_and_range(clf):
    p = clf.predict_proba(make_phantoms(7, 16, seed=1).images)
    assert p.shape == (7,) and (p >= 0).all() and (p <= 1).all()
    with pytest.raises(ValueError, match="shape"):
        clf.predict_proba(np.zeros((2, 32, 32), np.float32))


def test_save_load_roundtrip(clf, tmp_path):
    path = tmp_path / "clf.safetensors"
    clf.save(path)
    again = Classifier.load(path)
    x = make_phantoms(5, 16, seed=2).images
    np.testing.assert_allclose(again.predict_proba(x), clf.predict_proba(x), atol=1e-6)
    assert again.threshold == clf.threshold and again.arch == "small-cnn"


def test_a_narrower_small_cnn_is_saved_with_its_width_and_loads_as_it_was(tmp_path):
    ds = make_phantoms(120, 16, seed=8)
    narrow = train_classifier(ds.images, ds.labels, CFG.model_copy(update={"width": 8}), arch="small-cnn",
                              resolution=16, seed=0, device="cpu")
    first = narrow.model.features[0][0]
    assert first.out_channels == 8 and narrow.header()["width"] == 8
    narrow.save(tmp_path / "narrow.safetensors")
    again = Classifier.load(tmp_path / "narrow.safetensors")
    assert again.model.features[0][0].out_channels == 8
    np.testing.assert_allclose(again.predict_proba(ds.images[:5]), narrow.predict_proba(ds.images[:5]), atol=1e-6)


def test_resnet18_on_one_channel_runs():
    ds = make_phantoms(40, 64, seed=0)
    cfg = ClassifierSection(epochs=1, batch_size=16)
    c = train_classifier(ds.images, ds.labels, cfg, arch="resnet18", resolution=64, seed=0, device="cpu")
    assert c.predict_proba(ds.images[:3]).shape == (3,)


def test_needs_both_classes_for_validation():
    ds = make_phantoms(30, 16, seed=0)
    with pytest.raises(ValueError, match="both classes"):
        train_classifier(ds.images, np.ones(30, dtype=np.int64), CFG, arch="small-cnn", resolution=16)


def test_predict_on_npz_of_another_size(clf, tmp_path):
    big = make_phantoms(6, 64, seed=4)
    path = tmp_path / "in.npz"
    save_npz(big, str(path))
    rows, _ = predict(clf, path)
    assert [r.index for r in rows] == list(range(6))
    # preprocessed exactly as in training: centre-crop + antialiased resize of the same pixels
    from fedsynth.data.dataset import from_uint8, to_uint8
    from fedsynth.data.preprocess import prepare_batch

    expected = clf.predict_proba(prepare_batch(from_uint8(to_uint8(big.images)), 16))
    np.testing.assert_allclose([r.probability for r in rows], expected, atol=1e-5)


def test_predict_on_png_folder_keeps_input_order_and_reports_bad_files(clf, tmp_path):
    imgs = make_phantoms(4, 48, seed=5).images
    folder = tmp_path / "pngs"
    folder.mkdir()
    names = ["a.png", "b.png", "c.png", "d.png"]
    for name, img in zip(names, imgs):
        Image.fromarray((img * 255).astype(np.uint8)).resize((60, 48)).save(folder / name)  # not square
    (folder / "bb_broken.png").write_bytes(b"not a png at all")
    rows, report = predict(clf, folder)
    assert [r.source.split("/")[-1] for r in rows] == ["a.png", "b.png", "bb_broken.png", "c.png", "d.png"]
    assert rows[2].probability is None and rows[2].status.startswith("skipped")
    assert all(r.status == "ok" and 0 <= r.probability <= 1 for i, r in enumerate(rows) if i != 2)
    out = write_csv(rows, tmp_path / "scores.csv")
    with out.open() as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 5 and table[0]["prediction"] in ("normal", "pneumonia")
    assert float(table[0]["probability"]) == pytest.approx(rows[0].probability, abs=1e-6)


def test_load_run_classifier_errors(tmp_path):
    with pytest.raises(DataError, match="no classifier"):
        load_run_classifier(tmp_path)


def test_predict_flags_noise_as_out_of_distribution(clf, tmp_path):
    from typer.testing import CliRunner

    from fedsynth.cli import app
    from fedsynth.data.dataset import to_uint8

    images = np.concatenate([make_phantoms(4, 16, seed=6).images,
                             np.random.default_rng(0).random((2, 16, 16), dtype=np.float32), np.zeros((1, 16, 16))])
    path = tmp_path / "mixed.npz"
    np.savez(path, images=to_uint8(images))
    rows, _ = predict(clf, path)
    assert [r.ood for r in rows[4:]] == [True, True, True]
    assert all(isinstance(r.ood, bool) and r.ood_score >= 0 for r in rows)
    with write_csv(rows, tmp_path / "s.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [t["ood"] for t in table[4:]] == ["true"] * 3 and float(table[5]["ood_score"]) > clf.ood["threshold"]
    clf.save(tmp_path / "c.safetensors")
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "c.safetensors"), str(path), "--out",
                                      str(tmp_path / "cli.csv")])
    assert result.exit_code == 0, result.output
    n_ood = sum(r.ood for r in rows)
    assert f"{n_ood} of 7 image(s) look out of distribution" in " ".join(result.output.split())
