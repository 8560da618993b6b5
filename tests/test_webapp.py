"""The web app (fedsynth serve): scoring uploads with Grad-CAM, the reader study, every route.

Runs on a tiny run directory built here (a 16 px classifier trained for two epochs on
phantoms, two synthetic releases), without training a federation.
"""

from __future__ import annotations

import base64
import io
import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from fastapi.testclient import TestClient
from PIL import Image

from fedsynth.classifier.gradcam import grad_cam, target_layer
from fedsynth.classifier.models import ResNet18, SmallCNN
from fedsynth.classifier.train import Classifier, train_classifier
from fedsynth.config import ClassifierSection, load_config
from fedsynth.data.dataset import save_npz, to_uint8
from fedsynth.data.ingest import read_image_file
from fedsynth.data.phantom import make_phantoms
from fedsynth.data.preprocess import prepare
from fedsynth.errors import DataError
from fedsynth.rundir import RunDir
from fedsynth.webapp import create_app

RES = 16
STUDY_SIZE = 8  # 4 real + 4 synthetic

pytestmark = [
    pytest.mark.filterwarnings("ignore:The anyio.abc.BlockingPortal alias is deprecated"),
    pytest.mark.filterwarnings("ignore::UserWarning:pydicom.*"),  # the deliberately broken DICOM
]


def make_run(root: Path, *, phantom: bool = True, run_id: str = "webapp-test") -> Path:
    """A finished run directory: classifier, metrics.json, config.yaml, two synthetic releases."""
    path = root / run_id
    path.mkdir(parents=True)
    ds = make_phantoms(120, RES, seed=3)
    clf = train_classifier(ds.images, ds.labels, ClassifierSection(epochs=2, batch_size=32), arch="small-cnn",
                           resolution=RES, seed=0, device="cpu")
    clf.meta["phantom"] = phantom
    clf.save(path / "classifier.safetensors")
    (path / "metrics.json").write_text(json.dumps(  # the smallest document the metrics schema accepts
        {"run_id": run_id, "mode": "substitution", "private": False,
         "data": {"source": "phantom", "resolution": RES, "phantom": phantom}}))
    (path / "config.yaml").write_text(load_config(None, [f"data.resolution={RES}"]).to_yaml())
    run = RunDir(path, run_id)
    for site, (n, seed) in {"site-0": (6, 11), "site-1": (4, 12)}.items():
        syn = make_phantoms(n, RES, seed=seed)
        run.save_release(site, to_uint8(syn.images), syn.labels, phantom)
    return path


def make_real(path: Path) -> Path:
    """The site's 'real' images (phantoms here) as an npz bundle, at a larger size than the run."""
    save_npz(make_phantoms(12, 32, seed=21), str(path))
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("webapp"))


@pytest.fixture(scope="module")
def real_npz(tmp_path_factory) -> Path:
    return make_real(tmp_path_factory.mktemp("site") / "real.npz")


@pytest.fixture(scope="module")
def client(run_dir) -> TestClient:
    return TestClient(create_app(run_dir))


@pytest.fixture
def study_client(run_dir, real_npz, tmp_path) -> TestClient:
    return TestClient(create_app(run_dir, real_data=real_npz, db_path=tmp_path / "answers.sqlite",
                                 study_size=STUDY_SIZE, seed=0))


@pytest.fixture(scope="module")
def clf(run_dir) -> Classifier:
    return Classifier.load(run_dir / "classifier.safetensors")


@pytest.fixture(scope="module")
def xray() -> np.ndarray:
    """One 64 x 48 px phantom with pneumonia, in [0, 1] (not the run's 16 px square: the app must
    crop and resize)."""
    ds = make_phantoms(4, 64, seed=5)
    return ds.images[int(np.flatnonzero(ds.labels == 1)[0])][8:56, :]


@pytest.fixture
def uploads(tmp_path, monkeypatch) -> list[Path]:
    """Every temp file the app creates for an upload, in a private temp dir."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    created: list[Path] = []
    real = tempfile.NamedTemporaryFile

    def spy(*args, **kwargs):
        fh = real(*args, **kwargs)
        created.append(Path(fh.name))
        return fh

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", spy)
    return created


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def dicom(path: Path, image: np.ndarray) -> Path:
    """An uncompressed 12-bit MONOCHROME2 DICOM (pydicom 3), as tests/test_ingest.py writes them."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.77"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.rint(image * 4095).astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def expected_probability(clf: Classifier, path: Path) -> float:
    """What `fedsynth predict` would say: the same decoder and the same preprocessing."""
    return float(clf.predict_proba(prepare(read_image_file(path), clf.resolution)[None])[0])


def decode_png(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


# ---- Grad-CAM -----------------------------------------------------------------------------------


def test_grad_cam_shape_and_range(clf, xray):
    image = prepare(xray, RES)
    heat = grad_cam(clf, image)
    assert heat.shape == (RES, RES) and heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() <= 1
    assert heat.max() in (0.0, 1.0)  # scaled by its maximum (all zeros: nothing raised the score)
    assert not clf.model.training
    # hooks are removed: the model scores the same as before
    before = clf.predict_proba(image[None])
    grad_cam(clf, image)
    assert np.array_equal(clf.predict_proba(image[None]), before)
    assert not any(m._forward_hooks for m in clf.model.modules())
    with pytest.raises(ValueError, match="shape"):
        grad_cam(clf, np.zeros((RES * 2, RES * 2), np.float32))


def test_target_layers_are_the_last_feature_maps():
    small = SmallCNN(width=4)
    layer = target_layer(small)
    assert isinstance(layer, nn.ReLU) and layer is small.features[2][5]  # last conv block, before its pooling
    resnet = ResNet18(32)
    assert target_layer(resnet) is resnet.net.layer4
    clf = Classifier(resnet.eval(), "resnet18", 32, 0.5)
    heat = grad_cam(clf, make_phantoms(1, 32, seed=1).images[0])
    assert heat.shape == (32, 32) and 0 <= heat.min() and heat.max() <= 1


class RegionModel(nn.Module):
    """The logit is the sum of the input over one region R only.

    A 1x1 conv (the last Conv2d, so Grad-CAM's layer) maps [x, mask_R] to two channels,
    A0 = mask_R and A1 = x; the head multiplies them and sums, so logit = sum of x over R.
    """

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask[None, None].float())
        self.conv = nn.Conv2d(2, 2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 1] = 1.0  # A0 = mask
            self.conv.weight[1, 0] = 1.0  # A1 = x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv(torch.cat([x, self.mask.expand(len(x), -1, -1, -1)], 1))
        return (a[:, 0] * a[:, 1]).sum(dim=(1, 2))


def test_grad_cam_is_highest_where_the_logit_looks():
    size = 16
    mask = torch.zeros(size, size)
    mask[2:6, 9:13] = 1  # region R, top right
    clf = Classifier(RegionModel(mask), "region", size, 0.5)
    x = torch.randn(1, 1, size, size)
    assert torch.allclose(clf.model(x), (x[0, 0] * mask).sum())  # the logit only sees R
    # an image that is brightest OUTSIDE R: the map must still point at R
    image = np.full((size, size), 0.6, np.float32)
    image[10:15, 1:6] = 1.0
    heat = grad_cam(clf, image)
    inside, outside = heat[mask.bool().numpy()], heat[~mask.bool().numpy()]
    assert heat.max() == 1.0 and np.unravel_index(heat.argmax(), heat.shape) in set(zip(*np.nonzero(mask.numpy())))
    assert inside.min() > outside.max()
    assert inside.mean() > 3 * outside.mean()


# ---- scoring ----------------------------------------------------------------------------------


def test_health(client, clf):
    r = client.get("/api/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["run_id"] == "webapp-test"
    assert body["arch"] == "small-cnn" and body["resolution"] == RES
    assert body["threshold"] == pytest.approx(clf.threshold)
    assert body["phantom"] is True and "PHANTOM" in body["phantom_warning"]
    assert body["reader_study"] is False and body["max_upload_mb"] == 20


def test_score_page_has_the_form_and_the_phantom_warning(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert '<form method="post" action="/score" enctype="multipart/form-data"' in r.text
    assert 'type="file" name="file"' in r.text
    assert 'id="phantom-warning"' in r.text and "PHANTOMS" in r.text
    assert "http://" not in r.text.replace("http://HOST:PORT", "")  # no external resources
    assert r.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("kind", ["png", "jpeg", "dicom", "dicom-no-suffix"])
def test_api_score_formats(client, clf, xray, tmp_path, uploads, kind):
    if kind == "png":
        path = tmp_path / "chest.png"
        path.write_bytes(png(xray))
    elif kind == "jpeg":
        path = tmp_path / "chest.JPG"
        path.write_bytes(jpeg(xray))
    else:
        path = dicom(tmp_path / ("chest.dcm" if kind == "dicom" else "chest"), xray)
    r = client.post("/api/score", files={"file": (path.name, path.read_bytes(), "application/octet-stream")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["probability"] == pytest.approx(expected_probability(clf, path), abs=1e-6)
    assert body["threshold"] == pytest.approx(clf.threshold)
    assert body["prediction"] == ("pneumonia" if body["probability"] >= clf.threshold else "normal")
    assert body["resolution"] == RES and body["filename"] == path.name
    assert "PHANTOM" in body["phantom_warning"]
    heat, overlay, image = (decode_png(body[k]) for k in ("heatmap_png_base64", "overlay_png_base64",
                                                          "image_png_base64"))
    assert heat.format == "PNG" and heat.mode == "RGB" and heat.size == (320, 320)
    assert overlay.mode == "RGB" and overlay.size == (320, 320) and image.size == (320, 320)
    # the temp file kept the original suffix and is gone
    assert len(uploads) == 1 and not uploads[0].exists()
    assert uploads[0].suffix == path.suffix.lower()
    assert not any(Path(tempfile.gettempdir()).iterdir())


def test_api_score_heatmap_is_grad_cam_of_the_preprocessed_image(client, clf, xray, tmp_path):
    path = tmp_path / "chest.png"
    path.write_bytes(png(xray))
    body = client.post("/api/score", files={"file": ("chest.png", path.read_bytes(), "image/png")}).json()
    heat = grad_cam(clf, prepare(read_image_file(path), RES))
    from fedsynth.webapp.scoring import heat_rgb

    assert np.array_equal(np.asarray(decode_png(body["heatmap_png_base64"])), heat_rgb(heat))


@pytest.mark.parametrize(
    "name, data, status, message",
    [
        ("garbage.png", b"this is not a PNG at all", 422, "corrupt or not an image"),
        ("truncated.png", None, 422, "corrupt or truncated"),
        ("notes.txt", b"hello, I am text", 422, "not an image"),
        ("broken.dcm", b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage", 422, "DICOM"),
        ("empty.png", b"", 400, "is empty"),
    ],
)
def test_api_score_bad_files_get_a_clear_message(client, xray, uploads, name, data, status, message):
    if data is None:
        data = png(xray)[:200]
    r = client.post("/api/score", files={"file": (name, data, "application/octet-stream")})
    assert r.status_code == status, r.text
    assert message in r.json()["detail"] and "PHANTOM" in r.json()["phantom_warning"]
    assert all(not p.exists() for p in uploads)
    assert not any(Path(tempfile.gettempdir()).iterdir())


def test_api_score_refuses_a_decompression_bomb_from_its_header(client, uploads):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    for side, message in ((9_000, "9000 x 9000 pixels"), (20_000, "far too many pixels")):  # 81 and 400 MP
        header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grey
        bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        r = client.post("/api/score", files={"file": ("bomb.png", bomb, "image/png")})
        assert r.status_code == 413 and message in r.json()["detail"] and "at most 64 megapixels" in r.json()["detail"]
    assert len(uploads) == 2 and not any(p.exists() for p in uploads)


def test_api_score_requests_without_a_file(client):
    r = client.post("/api/score", data={"other": "x"}, files={"notfile": ("a.png", b"123", "image/png")})
    assert r.status_code == 400 and "no file uploaded" in r.json()["detail"]
    r = client.post("/api/score", content=b"raw bytes", headers={"content-type": "application/octet-stream"})
    assert r.status_code == 400 and "multipart/form-data" in r.json()["detail"]


def test_api_score_oversize_is_413_and_leaves_nothing(run_dir, uploads):
    client = TestClient(create_app(run_dir, max_upload_mb=0.01))  # 10,485 bytes
    rng = np.random.default_rng(0)
    noisy = png(rng.random((80, 80)).astype(np.float32))  # incompressible noise: about 6.5 kB
    assert len(noisy) < 10_485
    assert client.post("/api/score", files={"file": ("ok.png", noisy, "image/png")}).status_code == 200
    for n_bytes in (10_486, 200_000):  # caught while streaming; caught by Content-Length before reading
        r = client.post("/api/score", files={"file": ("big.png", b"\x89PNG" + b"\0" * (n_bytes - 4), "image/png")})
        assert r.status_code == 413, r.text
        assert "larger than the 0.01 MB limit" in r.json()["detail"]
    assert len(uploads) == 2  # the good one and the one caught while streaming; none for the early refusal
    assert all(not p.exists() for p in uploads)
    assert not any(Path(tempfile.gettempdir()).iterdir())


def test_score_form_shows_probability_image_and_overlay(client, clf, xray, tmp_path, uploads):
    path = tmp_path / "chest.png"
    path.write_bytes(png(xray))
    r = client.post("/score", files={"file": ("chest.png", path.read_bytes(), "image/png")})
    assert r.status_code == 200
    shown = re.search(r'id="probability">([0-9.]+)<', r.text)
    assert shown and float(shown.group(1)) == pytest.approx(expected_probability(clf, path), abs=5e-4)
    assert re.search(r'id="threshold">([0-9.]+)<', r.text).group(1) == f"{clf.threshold:.3f}"
    assert 'id="overlay-image"' in r.text and 'id="input-image"' in r.text
    assert r.text.count("src=\"data:image/png;base64,") == 2
    assert "Result for chest.png" in r.text and 'id="phantom-warning"' in r.text
    assert len(uploads) == 1 and not uploads[0].exists()


def test_score_form_bad_file_shows_the_reason(client):
    r = client.post("/score", files={"file": ("<b>x</b>.png", b"GIF89a not really", "image/png")})
    assert r.status_code == 422
    assert 'id="error"' in r.text and "corrupt or not an image" in r.text
    assert 'id="probability"' not in r.text


def test_non_phantom_run_says_nothing_about_phantoms(run_dir, tmp_path, xray):
    import shutil

    other = shutil.copytree(run_dir, tmp_path / "real-run")
    clf = Classifier.load(other / "classifier.safetensors")
    clf.meta["phantom"] = False
    clf.save(other / "classifier.safetensors")
    metrics = json.loads((other / "metrics.json").read_text())
    metrics["data"]["phantom"] = False
    (other / "metrics.json").write_text(json.dumps(metrics))
    client = TestClient(create_app(other))
    assert "phantom_warning" not in client.get("/api/health").json()
    assert client.get("/api/health").json()["phantom"] is False
    assert 'id="phantom-warning"' not in client.get("/").text
    body = client.post("/api/score", files={"file": ("x.png", png(xray), "image/png")}).json()
    assert "phantom_warning" not in body and 0 <= body["probability"] <= 1
    metrics["data"]["phantom"] = True  # either the classifier's header or metrics.json marks a phantom run
    (other / "metrics.json").write_text(json.dumps(metrics))
    assert "PHANTOM" in TestClient(create_app(other)).get("/api/health").json()["phantom_warning"]


def test_create_app_rejects_what_is_not_a_finished_run(tmp_path, run_dir):
    with pytest.raises(DataError, match="not found"):
        create_app(tmp_path / "nope")
    with pytest.raises(DataError, match="no classifier"):
        create_app(tmp_path)
    half = tmp_path / "half"
    half.mkdir()
    (half / "classifier.safetensors").write_bytes((run_dir / "classifier.safetensors").read_bytes())
    with pytest.raises(DataError, match="metrics.json"):
        create_app(half)


def test_unknown_routes(client):
    r = client.get("/api/nope")
    assert r.status_code == 404 and r.json()["detail"] == "Not Found" and "phantom_warning" in r.json()
    r = client.get("/nope")
    assert r.status_code == 404 and "text/html" in r.headers["content-type"]


# ---- reader study --------------------------------------------------------------------------------


def test_study_disabled_without_real_data(client, run_dir):
    for url in ("/study", "/study?reader=ann", "/study/results"):
        r = client.get(url)
        assert r.status_code == 404 and 'id="study-disabled"' in r.text and "--real-data" in r.text, url
    for url in ("/api/study", "/api/study/next?reader=ann", "/api/study/results", "/study/image/abc.png"):
        r = client.get(url)
        assert r.status_code == 404 and "--real-data" in r.json()["detail"], url
    r = client.post("/api/study/answer", json={"reader": "ann", "image_id": "x", "answer": "real"})
    assert r.status_code == 404 and "not available" in r.json()["detail"]
    r = client.post("/study/answer", data={"reader": "ann", "image_id": "x", "answer": "real"})
    assert r.status_code == 404 and 'id="study-disabled"' in r.text
    assert not (run_dir / "reader_study.sqlite").exists()


def test_study_set_is_a_fixed_seeded_mix(run_dir, real_npz, tmp_path, study_client):
    study = study_client.app.state.study
    assert len(study) == STUDY_SIZE and study.counts() == {"real": 4, "synthetic": 4}
    kinds = [im.kind for im in study.images]
    assert kinds != sorted(kinds) and kinds != sorted(kinds, reverse=True)  # shuffled together
    assert {im.origin for im in study.images if im.kind == "synthetic"} <= {"synthetic (site-0)",
                                                                           "synthetic (site-1)"}
    assert all(im.pixels.shape == (RES, RES) and im.pixels.dtype == np.uint8 for im in study.images)
    again = create_app(run_dir, real_data=real_npz, db_path=tmp_path / "b.sqlite", study_size=STUDY_SIZE, seed=0)
    assert [im.id for im in again.state.study.images] == [im.id for im in study.images]  # stable ids and order
    other = create_app(run_dir, real_data=real_npz, db_path=tmp_path / "c.sqlite", study_size=STUDY_SIZE, seed=1)
    assert [im.id for im in other.state.study.images] != [im.id for im in study.images]
    r = study_client.get("/api/study")
    assert r.status_code == 200
    assert r.json()["n_images"] == STUDY_SIZE and r.json()["positive_class"] == "synthetic"
    assert r.json()["composition"] == {"real": 4, "synthetic": 4} and "PHANTOM" in r.json()["phantom_warning"]
    big = create_app(run_dir, real_data=real_npz, db_path=tmp_path / "d.sqlite", study_size=100)
    assert big.state.study.counts() == {"real": 12, "synthetic": 10}  # everything there is, up to 50 each


def test_study_images_do_not_tell_real_from_synthetic(study_client):
    study = study_client.app.state.study
    seen = {}
    for im in study.images:
        r = study_client.get(f"/study/image/{im.id}.png")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        img = Image.open(io.BytesIO(r.content))
        assert img.size == (448, 448) and img.mode == "L"
        seen.setdefault(im.kind, set()).add((img.size, img.mode, tuple(sorted(img.info))))
        assert re.fullmatch(r"[0-9a-f]{12}", im.id)
    assert seen["real"] == seen["synthetic"]  # same size, mode and metadata for both kinds
    assert study_client.get("/study/image/000000000000.png").status_code == 404


def _html_next(client: TestClient, reader: str) -> str | None:
    r = client.get("/study", params={"reader": reader})
    assert r.status_code == 200
    m = re.search(r'name="image_id" value="([0-9a-f]+)"', r.text)
    if m is None:
        assert 'id="study-done"' in r.text
        return None
    assert f'src="/study/image/{m.group(1)}.png"' in r.text
    return m.group(1)


def test_reader_study_end_to_end_two_readers(study_client, real_npz):
    study = study_client.app.state.study
    truth = {im.id: im.kind for im in study.images}
    labels = {im.id: im.label for im in study.images}
    assert all(v in (0, 1) for v in labels.values())  # the site's npz has labels
    r = study_client.get("/study")
    assert r.status_code == 200 and 'name="reader"' in r.text and f"{STUDY_SIZE} chest X-rays" in r.text

    # Ann, in the browser pages: right on everything except the first synthetic image (called real)
    # and the first two real images (called synthetic); pneumonia answered on her first four
    # images, right on three of them.
    first_syn = [i for i in truth if truth[i] == "synthetic"][:1]
    first_real = [i for i in truth if truth[i] == "real"][:2]
    order = []
    while (image_id := _html_next(study_client, "Ann")) is not None:
        order.append(image_id)
        wrong = image_id in first_syn or image_id in first_real
        given = ("real" if truth[image_id] == "synthetic" else "synthetic") if wrong else truth[image_id]
        form = {"reader": "Ann", "image_id": image_id, "answer": given}
        if len(order) <= 4:
            correct = bool(labels[image_id])
            form["pneumonia"] = "yes" if (correct if len(order) <= 3 else not correct) else "no"
        r = study_client.post("/study/answer", data=form, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/study?reader=Ann"
    assert order == [im.id for im in study.images]  # the study's fixed order, each image once

    # a second answer is refused and the first one kept
    r = study_client.post("/api/study/answer", json={"reader": "Ann", "image_id": order[0], "answer": "real"})
    assert r.status_code == 409 and "first answer is kept" in r.json()["detail"]
    r = study_client.post("/study/answer", data={"reader": "Ann", "image_id": order[0], "answer": "real"},
                          follow_redirects=False)
    assert r.status_code == 303 and "already=" + order[0] in r.headers["location"]

    # Bob, through the JSON API: calls everything synthetic, stops after six images
    for k in range(6):
        nxt = study_client.get("/api/study/next", params={"reader": "Bob"}).json()
        assert nxt["answered"] == k and nxt["done"] is False and nxt["image"]["position"] == k + 1
        r = study_client.post("/api/study/answer",
                              json={"reader": "Bob", "image_id": nxt["image"]["id"], "answer": "synthetic"})
        assert r.status_code == 201 and r.json()["next"]["answered"] == k + 1
    bob_seen = order[:6]
    assert study_client.get("/api/study/next", params={"reader": "Ann"}).json()["done"] is True

    res = study_client.get("/api/study/results").json()
    assert res["positive_class"] == "synthetic" and res["n_images"] == STUDY_SIZE and res["ignored_answers"] == 0
    ann = res["readers"]["Ann"]
    # synthetic: 3 of 4 called synthetic; real: 2 of 4 called real
    assert ann["answered"] == 8 and ann["complete"] is True and ann["correct"] == 5
    assert ann["accuracy"] == pytest.approx(5 / 8)
    assert ann["sensitivity"] == pytest.approx(3 / 4) and ann["specificity"] == pytest.approx(2 / 4)
    assert ann["confusion"] == {"synthetic_called_synthetic": 3, "synthetic_called_real": 1, "real_called_real": 2,
                                "real_called_synthetic": 2}
    assert ann["pneumonia_answered"] == 4 and ann["pneumonia_accuracy"] == pytest.approx(3 / 4)
    bob = res["readers"]["Bob"]
    n_syn = sum(truth[i] == "synthetic" for i in bob_seen)
    assert bob["answered"] == 6 and bob["complete"] is False
    assert bob["accuracy"] == pytest.approx(n_syn / 6)
    assert bob["sensitivity"] == 1.0 and bob["specificity"] == 0.0
    assert bob["pneumonia_answered"] == 0 and bob["pneumonia_accuracy"] is None
    overall = res["overall"]
    assert overall["answered"] == 14 and overall["correct"] == 5 + n_syn

    # most mistaken: the two reals both got wrong come first (2 of 2), then the single mistakes
    expected = {}
    for image_id in order:
        wrong = int(image_id in first_syn or image_id in first_real)
        seen = 1 + (image_id in bob_seen)
        wrong += image_id in bob_seen and truth[image_id] == "real"
        if wrong:
            expected[image_id] = (wrong, seen)
    got = {m["image_id"]: (m["mistaken"], m["answers"]) for m in res["most_mistaken"]}
    assert got == expected
    counts = [m["mistaken"] for m in res["most_mistaken"]]
    assert counts == sorted(counts, reverse=True)
    assert {m["image_id"] for m in res["most_mistaken"] if m["mistaken"] == 2} == set(first_real) & set(bob_seen)
    assert all(m["truth"] == truth[m["image_id"]] for m in res["most_mistaken"])

    page = study_client.get("/study/results")
    assert page.status_code == 200 and 'id="results-table"' in page.text
    assert "Ann" in page.text and "62.5%" in page.text and "75.0%" in page.text and "50.0%" in page.text
    assert "Synthetic is the positive" in page.text and 'id="most-mistaken"' in page.text
    done = study_client.get("/study", params={"reader": "Ann"})
    assert 'id="study-done"' in done.text


def test_answers_are_stored_in_one_sqlite_table_with_the_name_only(study_client, tmp_path):
    import sqlite3

    image_id = study_client.app.state.study.images[0].id
    r = study_client.post("/api/study/answer", json={"reader": "Dr. Émile Roux", "image_id": image_id,
                                                     "answer": "real", "pneumonia": True},
                          headers={"user-agent": "ZZAGENT", "x-forwarded-for": "10.9.8.7"})
    assert r.status_code == 201
    db = sqlite3.connect(tmp_path / "answers.sqlite")
    tables = [t[0] for t in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    cols = [c[1] for c in db.execute("PRAGMA table_info(answers)")]
    rows = db.execute("SELECT * FROM answers").fetchall()
    db.close()
    assert tables == ["answers"] and cols == ["reader", "image_id", "answer", "pneumonia", "answered_at"]
    assert len(rows) == 1 and rows[0][:4] == ("Dr. Émile Roux", image_id, "real", 1)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rows[0][4])
    raw = (tmp_path / "answers.sqlite").read_bytes()
    assert b"ZZAGENT" not in raw and b"10.9.8.7" not in raw and b"testclient" not in raw


@pytest.mark.parametrize("name", ["", "   ", "x" * 41, "<script>alert(1)</script>", "ann'); DROP TABLE answers;--",
                                  "../etc/passwd", "tab\tname", "-leading", "a@b.com"])
def test_bad_reader_names_are_refused(study_client, name):
    image_id = study_client.app.state.study.images[0].id
    r = study_client.get("/api/study/next", params={"reader": name})
    assert r.status_code == 400 and "reader name" in r.json()["detail"]
    r = study_client.post("/api/study/answer", json={"reader": name, "image_id": image_id, "answer": "real"})
    assert r.status_code == 400 and "reader name" in r.json()["detail"]
    page = study_client.get("/study", params={"reader": name})
    assert page.status_code == 400 and 'id="error"' in page.text and "<script>alert" not in page.text
    assert study_client.get("/api/study/results").json()["readers"] == {}


@pytest.mark.parametrize("name", ["Ann", "reader_2", "Dr. A-B", "x" * 40, "Émile"])
def test_good_reader_names_are_accepted(study_client, name):
    r = study_client.get("/api/study/next", params={"reader": f"  {name} "})
    assert r.status_code == 200 and r.json()["reader"] == name and r.json()["answered"] == 0


def test_bad_answers_are_refused(study_client):
    image_id = study_client.app.state.study.images[0].id
    cases = [
        ({"reader": "Ann", "image_id": "000000000000", "answer": "real"}, 404, "no image"),
        ({"reader": "Ann", "image_id": image_id, "answer": "maybe"}, 400, "real' or 'synthetic"),
        ({"reader": "Ann", "image_id": image_id, "answer": "real", "pneumonia": "perhaps"}, 400, "pneumonia"),
    ]
    for body, status, message in cases:
        r = study_client.post("/api/study/answer", json=body)
        assert r.status_code == status and message in r.json()["detail"], body
    r = study_client.post("/api/study/answer", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "send JSON" in r.json()["detail"]
    r = study_client.post("/study/answer", data={"reader": "Ann", "image_id": image_id, "answer": "maybe"})
    assert r.status_code == 400 and 'id="error"' in r.text
    r = study_client.post("/study/answer", data={"reader": "Ann", "image_id": image_id, "answer": "real"},
                          files={"file": ("x.png", b"123", "image/png")})  # the answer form takes no file
    assert r.status_code == 400 and "Too many files" in r.text
    assert study_client.get("/api/study/results").json()["overall"]["answered"] == 0


def test_study_with_unlabelled_real_images(run_dir, tmp_path):
    folder = tmp_path / "site-images"  # PNGs with no labels.csv and no NORMAL/ PNEUMONIA/ folders
    folder.mkdir()
    for i, image in enumerate(make_phantoms(3, 40, seed=30).images):
        (folder / f"img{i}.png").write_bytes(png(image))
    client = TestClient(create_app(run_dir, real_data=folder, db_path=tmp_path / "u.sqlite", study_size=6))
    study = client.app.state.study
    assert study.counts() == {"real": 3, "synthetic": 3}
    assert all((im.label is None) == (im.kind == "real") for im in study.images)
    for im in study.images:
        r = client.post("/api/study/answer", json={"reader": "Ann", "image_id": im.id, "answer": "real",
                                                   "pneumonia": True})
        assert r.status_code == 201
    ann = client.get("/api/study/results").json()["readers"]["Ann"]
    assert ann["accuracy"] == 0.5 and ann["sensitivity"] == 0.0 and ann["specificity"] == 1.0
    assert ann["pneumonia_answered"] == 3  # only the synthetic images have a class to check against


def test_study_needs_real_images_and_releases(run_dir, tmp_path):
    empty = tmp_path / "run"
    empty.mkdir()
    for name in ("classifier.safetensors", "metrics.json"):
        (empty / name).write_bytes((run_dir / name).read_bytes())
    real = make_real(tmp_path / "real.npz")
    with pytest.raises(DataError, match="no released synthetic images"):
        create_app(empty, real_data=real, db_path=tmp_path / "x.sqlite")
    with pytest.raises(DataError, match="not found"):
        create_app(run_dir, real_data=tmp_path / "missing.npz", db_path=tmp_path / "x.sqlite")


# ---- CLI ----------------------------------------------------------------------------------------


def test_cli_serve_binds_localhost_by_default(run_dir, real_npz, tmp_path, monkeypatch):
    import uvicorn
    from typer.testing import CliRunner

    from fedsynth.cli import app

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda application, **kw: calls.append((application, kw)))
    result = CliRunner().invoke(app, ["serve", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert calls[0][1]["host"] == "127.0.0.1" and calls[0][1]["port"] == 8000
    assert calls[0][1]["access_log"] is False  # no client addresses or reader names in logs
    assert calls[0][0].state.study is None and "http://127.0.0.1:8000" in result.output
    result = CliRunner().invoke(app, ["serve", str(run_dir), "--real-data", str(real_npz), "--port", "8765",
                                      "--db", str(tmp_path / "s.sqlite")])
    assert result.exit_code == 0, result.output
    assert calls[1][1]["port"] == 8765 and calls[1][0].state.study is not None
    assert (tmp_path / "s.sqlite").is_file()
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "not found" in result.output and len(calls) == 2
