"""The web app's generate page: synthetic images of a class, and edits, from the run's generators."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from test_webapp import RES, make_run

from fedsynth.config import GANSection
from fedsynth.data.phantom import make_phantoms
from fedsynth.generators import build_generator
from fedsynth.rundir import GENERATOR_FILE
from fedsynth.webapp import create_app

pytestmark = pytest.mark.filterwarnings("ignore:The anyio.abc.BlockingPortal alias is deprecated")


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> TestClient:
    run_dir = make_run(tmp_path_factory.mktemp("gen-webapp"))
    ds = make_phantoms(80, RES, seed=4)
    gen = build_generator(GANSection(epochs=1, base_channels=8, latent_dim=16, batch_size=32), RES, seed=0,
                          device="cpu")
    gen.fit(ds.images, ds.labels)
    (run_dir / "sites" / "site-0").mkdir(parents=True)
    gen.save(run_dir / "sites" / "site-0" / GENERATOR_FILE)
    return TestClient(create_app(run_dir))


def test_the_form_lists_the_run_generators(client):
    r = client.get("/generate")
    assert r.status_code == 200
    assert "generate-form" in r.text and "site-0" in r.text


def test_sampling_returns_the_images_with_scores(client):
    r = client.get("/api/generate", params={"label": "pneumonia", "n": 3, "seed": 1})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["synthetic"] is True and len(body["images"]) == 3
    assert all(0 <= im["score"] <= 1 for im in body["images"])
    # the same seed draws the same images
    again = client.get("/api/generate", params={"label": "pneumonia", "n": 3, "seed": 1}).json()
    assert [im["png_base64"] for im in again["images"]] == [im["png_base64"] for im in body["images"]]


def test_an_edit_shows_each_pair_with_its_similarity(client):
    r = client.get("/api/generate", params={"label": "normal", "edit_to": "pneumonia", "strength": 0, "n": 2})
    assert r.status_code == 200, r.text
    for im in r.json()["images"]:
        assert im["ssim"] == pytest.approx(1.0, abs=1e-6)  # strength 0 changes nothing
        assert im["edited_score"] == pytest.approx(im["score"], abs=1e-6)
    page = client.get("/generate", params={"label": "normal", "edit_to": "pneumonia", "strength": 0.5, "n": 2})
    assert page.status_code == 200 and "SSIM" in page.text and "edited to pneumonia" in page.text


@pytest.mark.parametrize("params, name", [
    ({"label": "cat"}, "label"),
    ({"label": "normal", "n": 0}, "n"),
    ({"label": "normal", "n": 10_000}, "n"),
    ({"label": "normal", "n": "many"}, "n"),
    ({"label": "normal", "strength": "1.5"}, "strength"),
    ({"label": "normal", "strength": "nan"}, "strength"),
    ({"label": "normal", "edit_to": "virus"}, "edit_to"),
    ({"label": "normal", "source": "../../etc"}, "source"),
    ({"label": "normal", "seed": -1}, "seed"),
])
def test_bad_parameters_are_refused_by_name(client, params, name):
    r = client.get("/api/generate", params=params)
    assert r.status_code == 400 and name in r.json()["detail"]
    page = client.get("/generate", params=params)
    assert page.status_code == 400 and "id='error'" in page.text
