"""fedsynth stress: a model scored on controlled synthetic sets along shift and edit axes."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedsynth.classifier.train import train_classifier
from fedsynth.cli import app
from fedsynth.config import ClassifierSection, GANSection
from fedsynth.data.phantom import make_phantoms
from fedsynth.errors import DataError
from fedsynth.evaluation.stress import _to_probability, load_model, stress_test
from fedsynth.generators import build_generator, load_generator


class Brightness(torch.nn.Module):
    """A model whose pneumonia logit is the mean brightness: its response to each shift is known."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.mean(dim=(1, 2, 3)) - 0.4) * 20


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("stress")
    ds = make_phantoms(120, 16, seed=5)
    gen = build_generator(GANSection(epochs=1, base_channels=8, latent_dim=16, batch_size=32), 16, seed=0,
                          device="cpu")
    gen.fit(ds.images, ds.labels)
    gen.save(root / "generator.safetensors")
    clf = train_classifier(ds.images, ds.labels, ClassifierSection(epochs=1), arch="small-cnn", resolution=16,
                           device="cpu")
    clf.save(root / "classifier.safetensors")
    with warnings.catch_warnings():  # TorchScript is deprecated upstream, and still what many models ship as
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(Brightness()).save(str(root / "brightness.pt"))
    return root


def test_a_fedsynth_classifier_is_stressed_along_every_axis(files, tmp_path):
    out = tmp_path / "s"
    r = CliRunner().invoke(app, ["stress", str(files / "generator.safetensors"), str(files / "classifier.safetensors"),
                                 "--n", "20", "--n-edit", "4", "--bootstrap", "20", "--out", str(out)])
    assert r.exit_code == 0, r.output
    result = json.loads((out / "stress.json").read_text())
    assert set(result["shifts"]) == {"contrast", "gamma", "noise", "blur", "resolution"}
    for rows in result["shifts"].values():
        assert len(rows) == 3
        for row in rows.values():
            assert 0 <= row["auroc"] <= 1 and 0 <= row["flipped"] <= 1
            assert row["auroc_drop"] == pytest.approx(result["unshifted"]["auroc"] - row["auroc"])
    assert set(result["edits"]) == {"normal->pneumonia", "pneumonia->normal"}
    assert len(result["edits"]["normal->pneumonia"]) == 4
    page = (out / "stress.html").read_text()
    assert "Acquisition shifts" in page and "Edits towards the other class" in page
    # nothing is overwritten
    again = CliRunner().invoke(app, ["stress", str(files / "generator.safetensors"),
                                     str(files / "classifier.safetensors"), "--out", str(out)])
    assert again.exit_code == 2 and "already holds a stress test" in " ".join(again.output.split())


def test_a_torchscript_model_responds_to_shifts_as_it_should(files):
    model = load_model(files / "brightness.pt", input_size=16)
    gen = load_generator(files / "generator.safetensors", device="cpu")
    result = stress_test(gen, model, n_per_class=20, n_edit=2, n_boot=0,
                         shifts={"gamma": (2.0,), "noise": (0.0,)}, strengths=(0.5,))
    base, dark = result["unshifted"], result["shifts"]["gamma"]["2.0"]
    # gamma 2 darkens every image: a brightness model scores every class lower
    for c in ("normal", "pneumonia"):
        assert dark["mean_score"][c] < base["mean_score"][c]
    # zero noise changes nothing
    still = result["shifts"]["noise"]["0.0"]
    assert still["flipped"] == 0 and still["auroc"] == pytest.approx(base["auroc"])


def test_a_model_at_another_resolution_gets_resized_images(files):
    model = load_model(files / "brightness.pt", input_size=32)
    gen = load_generator(files / "generator.safetensors", device="cpu")
    result = stress_test(gen, model, n_per_class=5, n_edit=1, n_boot=0, shifts={}, strengths=(0.5,))
    assert result["model"]["resolution"] == 32 and 0 <= result["unshifted"]["auroc"] <= 1


def test_outputs_become_probabilities():
    np.testing.assert_allclose(_to_probability(np.array([0.0, 100.0]), "logit"), [0.5, 1.0])
    np.testing.assert_allclose(_to_probability(np.array([[0.0, 0.0], [0.0, np.log(3)]]), "logit"), [0.5, 0.75])
    np.testing.assert_allclose(_to_probability(np.array([[0.2, 0.8]]), "probability"), [0.8])
    with pytest.raises(DataError, match="shape"):
        _to_probability(np.zeros((2, 3)), "logit")


@pytest.mark.parametrize("kwargs, message", [
    ({}, "--input-size"),
    ({"input_size": 16, "input_range": "bytes"}, "input_range"),
    ({"input_size": 16, "output": "softmax"}, "output"),
    ({"input_size": 16, "threshold": 2.0}, "threshold"),
])
def test_bad_model_arguments_are_named(files, kwargs, message):
    with pytest.raises(DataError, match=message):
        load_model(files / "brightness.pt", **kwargs)


def test_files_that_are_not_models_are_refused(files, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not torchscript")
    with pytest.raises(DataError, match="TorchScript"):
        load_model(junk, input_size=16)
    other = tmp_path / "model.h5"
    other.write_bytes(b"x")
    with pytest.raises(DataError, match="not a model"):
        load_model(other, input_size=16)


def test_probabilities_out_of_range_are_refused(files, tmp_path):
    model = load_model(files / "brightness.pt", input_size=16, output="probability")  # it returns logits
    gen = load_generator(files / "generator.safetensors", device="cpu")
    with pytest.raises(DataError, match="probabilities"):
        stress_test(gen, model, n_per_class=5, n_boot=0, shifts={}, strengths=())
