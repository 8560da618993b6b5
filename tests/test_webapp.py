"""The web app (fedsynth serve): scoring uploads with Grad-CAM, the reader study, every route.

Runs on a tiny run directory built here (a 16 px classifier trained for two epochs on
phantoms, two synthetic releases), without training a federation. The study's access rules
(tokens, CSRF, headers) are tested in tests/test_webapp_security.py; here every request
carries the right token.
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
from fedsynth.webapp.study import StudyError, reader_key

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


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def invite(client: TestClient, name: str) -> str:
    """A reader's invitation token, as `fedsynth study invite` mints it."""
    return client.app.state.tokens.invite(name).token


def owner(client: TestClient) -> dict[str, str]:
    """The owner's Authorization header, as `fedsynth serve` mints the token."""
    return bearer(client.app.state.tokens.issue_owner().token)


def score_csrf(client: TestClient) -> str:
    """The score form's CSRF token, from the page (which also sets this client's session cookie)."""
    return re.search(r'action="/score\?csrf=([0-9a-f]+)"', client.get("/").text).group(1)


def decode_png(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


# ---- Grad-CAM -----------------------------------------------------------------------------------


@pytest.mark.slow  # over 0.6 s: outside the quick subset
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
    assert re.search(r'<form method="post" action="/score\?csrf=[0-9a-f]{64}" enctype="multipart/form-data"', r.text)
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

    # the app computes it on a worker thread, whose torch thread count may differ from this one's after
    # another test set it: the float sums may round differently, so allow a colour step or two
    served = np.asarray(decode_png(body["heatmap_png_base64"])).astype(int)
    assert np.abs(served - heat_rgb(heat).astype(int)).max() <= 2


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
    r = client.post("/score", params={"csrf": score_csrf(client)},
                    files={"file": ("chest.png", path.read_bytes(), "image/png")})
    assert r.status_code == 200
    shown = re.search(r'id="probability">([0-9.]+)<', r.text)
    assert shown and float(shown.group(1)) == pytest.approx(expected_probability(clf, path), abs=5e-4)
    assert re.search(r'id="threshold">([0-9.]+)<', r.text).group(1) == f"{clf.threshold:.3f}"
    assert 'id="overlay-image"' in r.text and 'id="input-image"' in r.text
    assert r.text.count("src=\"data:image/png;base64,") == 2
    assert "Result for chest.png" in r.text and 'id="phantom-warning"' in r.text
    assert len(uploads) == 1 and not uploads[0].exists()


def test_score_form_bad_file_shows_the_reason(client):
    r = client.post("/score", params={"csrf": score_csrf(client)},
                    files={"file": ("<b>x</b>.png", b"GIF89a not really", "image/png")})
    assert r.status_code == 422
    assert 'id="error"' in r.text and "corrupt or not an image" in r.text
    assert 'id="probability"' not in r.text


def test_out_of_distribution_uploads_are_flagged_on_the_page_and_in_the_api(client, clf, xray, tmp_path, uploads):
    import fedsynth.webapp.pages as pages

    noise = np.random.default_rng(0).random((RES, RES)).astype(np.float32)
    body = client.post("/api/score", files={"file": ("noise.png", png(noise), "image/png")}).json()
    assert body["out_of_distribution"] is True and body["ood_score"] > body["ood_threshold"]
    assert body["ood_threshold"] == pytest.approx(clf.ood["threshold"])
    r = client.post("/score", params={"csrf": score_csrf(client)},
                    files={"file": ("noise.png", png(noise), "image/png")})
    assert r.status_code == 200 and 'id="ood-warning"' in r.text and "Out of distribution." in r.text
    # an X-ray-like upload: the flag is the classifier's own verdict on the preprocessed image
    path = tmp_path / "chest.png"
    path.write_bytes(png(xray))
    body = client.post("/api/score", files={"file": ("chest.png", path.read_bytes(), "image/png")}).json()
    expected = clf.is_ood(prepare(read_image_file(path), RES)[None])[0]
    assert body["out_of_distribution"] is bool(expected) and isinstance(body["ood_score"], float)
    # a classifier without a reference (saved before fedsynth made one) says so, and flags nothing
    assert 'id="ood-unknown"' in pages.ood_notice({"out_of_distribution": None})
    assert pages.ood_notice({"out_of_distribution": False}) == ""


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
    for url in ("/api/study/answer", "/api/study/invitations"):
        r = client.post(url, json={"reader": "ann", "image_id": "x", "answer": "real"})
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
    r = study_client.get("/api/study", headers=bearer(invite(study_client, "Ann")))
    assert r.status_code == 200 and r.json()["you"] == {"role": "reader", "reader": "Ann"}
    assert r.json()["n_images"] == STUDY_SIZE and r.json()["positive_class"] == "synthetic"
    assert r.json()["composition"] == {"real": 4, "synthetic": 4} and "PHANTOM" in r.json()["phantom_warning"]
    big = create_app(run_dir, real_data=real_npz, db_path=tmp_path / "d.sqlite", study_size=100)
    assert big.state.study.counts() == {"real": 12, "synthetic": 10}  # everything there is, up to 50 each


def test_study_images_do_not_tell_real_from_synthetic(study_client):
    study = study_client.app.state.study
    study_client.headers.update(bearer(invite(study_client, "Ann")))
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


def _html_next(client: TestClient, token: str | None = None) -> tuple[str, str] | None:
    """The next image id and the form's CSRF token on the reader's page: from the invitation
    link (``token``) or, after it, from the cookie the link left."""
    r = client.get("/study", params={"token": token} if token else None)
    assert r.status_code == 200
    m = re.search(r'name="image_id" value="([0-9a-f]+)"', r.text)
    if m is None:
        assert 'id="study-done"' in r.text
        return None
    assert f'src="/study/image/{m.group(1)}.png"' in r.text
    return m.group(1), re.search(r'name="csrf" value="([0-9a-f]{64})"', r.text).group(1)


def test_reader_study_end_to_end_two_readers(study_client, real_npz):
    study = study_client.app.state.study
    truth = {im.id: im.kind for im in study.images}
    labels = {im.id: im.label for im in study.images}
    assert all(v in (0, 1) for v in labels.values())  # the site's npz has labels
    r = study_client.get("/study")
    assert r.status_code == 401 and 'id="invitation-needed"' in r.text and f"{STUDY_SIZE} chest X-rays" in r.text
    ann_token, bob_token = invite(study_client, "Ann"), invite(study_client, "Bob")

    # Ann, in the browser pages: right on everything except the first synthetic image (called real)
    # and the first two real images (called synthetic); pneumonia answered on her first four
    # images, right on three of them. Her invitation link once, then the cookie it left.
    first_syn = [i for i in truth if truth[i] == "synthetic"][:1]
    first_real = [i for i in truth if truth[i] == "real"][:2]
    order = []
    link = ann_token
    while (nxt := _html_next(study_client, link)) is not None:
        link = None
        image_id, csrf = nxt
        order.append(image_id)
        wrong = image_id in first_syn or image_id in first_real
        given = ("real" if truth[image_id] == "synthetic" else "synthetic") if wrong else truth[image_id]
        form = {"csrf": csrf, "image_id": image_id, "answer": given}
        if len(order) <= 4:
            correct = bool(labels[image_id])
            form["pneumonia"] = "yes" if (correct if len(order) <= 3 else not correct) else "no"
        r = study_client.post("/study/answer", data=form, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/study"
    assert order == [im.id for im in study.images]  # the study's fixed order, each image once

    # a second answer is refused and the first one kept
    r = study_client.post("/api/study/answer", json={"image_id": order[0], "answer": "real"},
                          headers=bearer(ann_token))
    assert r.status_code == 409 and "first answer is kept" in r.json()["detail"]
    r = study_client.post("/study/answer", data={"csrf": csrf, "image_id": order[0], "answer": "real"},
                          follow_redirects=False)
    assert r.status_code == 303 and "already=" + order[0] in r.headers["location"]

    # Bob, through the JSON API: calls everything synthetic, stops after six images
    for k in range(6):
        nxt = study_client.get("/api/study/next", headers=bearer(bob_token)).json()
        assert nxt["reader"] == "Bob"
        assert nxt["answered"] == k and nxt["done"] is False and nxt["image"]["position"] == k + 1
        r = study_client.post("/api/study/answer", headers=bearer(bob_token),
                              json={"image_id": nxt["image"]["id"], "answer": "synthetic"})
        assert r.status_code == 201 and r.json()["next"]["answered"] == k + 1
    bob_seen = order[:6]
    assert study_client.get("/api/study/next", headers=bearer(ann_token)).json()["done"] is True

    owner_auth = owner(study_client)
    res = study_client.get("/api/study/results", headers=owner_auth).json()
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

    owner_token = owner_auth["Authorization"].removeprefix("Bearer ")
    page = study_client.get("/study/results", params={"token": owner_token})
    assert page.status_code == 200 and 'id="results-table"' in page.text
    assert "Ann" in page.text and "62.5%" in page.text and "75.0%" in page.text and "50.0%" in page.text
    assert "Synthetic is the positive" in page.text and 'id="most-mistaken"' in page.text
    thumb = re.search(r'src="(/study/image/[0-9a-f]+\.png)"', page.text).group(1)
    assert study_client.get("/study/results").status_code == 200  # the owner's cookie, after the link
    assert study_client.get(thumb).status_code == 200
    done = study_client.get("/study")  # Ann's cookie
    assert 'id="study-done"' in done.text and "Thank you, Ann" in done.text


def test_answers_are_stored_in_one_sqlite_table_with_the_name_only(study_client, tmp_path):
    import os
    import sqlite3
    import stat

    image_id = study_client.app.state.study.images[0].id
    token = invite(study_client, "Dr. Émile Roux")
    r = study_client.post("/api/study/answer", json={"image_id": image_id, "answer": "real", "pneumonia": True},
                          headers={**bearer(token), "user-agent": "ZZAGENT", "x-forwarded-for": "10.9.8.7"})
    assert r.status_code == 201 and r.json()["stored"]["reader"] == "Dr. Émile Roux"
    db = sqlite3.connect(tmp_path / "answers.sqlite")
    tables = sorted(t[0] for t in db.execute("SELECT name FROM sqlite_master WHERE type='table'"))
    cols = [c[1] for c in db.execute("PRAGMA table_info(answers)")]
    rows = db.execute("SELECT * FROM answers").fetchall()
    readers = db.execute("SELECT reader, shown_as FROM readers").fetchall()
    hashes = [h for (h,) in db.execute("SELECT token_hash FROM tokens")]
    db.close()
    assert tables == ["answers", "readers", "token_secret", "tokens"]
    assert cols == ["reader", "image_id", "answer", "pneumonia", "answered_at"]
    # the reader's key (NFKC + casefold) with the answers, the name as typed beside it
    assert len(rows) == 1 and rows[0][:4] == ("dr. émile roux", image_id, "real", 1)
    assert readers == [("dr. émile roux", "Dr. Émile Roux")]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rows[0][4])
    raw = (tmp_path / "answers.sqlite").read_bytes()
    assert b"ZZAGENT" not in raw and b"10.9.8.7" not in raw and b"testclient" not in raw
    assert token.encode() not in raw and len(hashes) == 1 and re.fullmatch(r"[0-9a-f]{64}", hashes[0])
    assert stat.S_IMODE(os.stat(tmp_path / "answers.sqlite").st_mode) == 0o600  # owner only


BAD_NAMES = ["", "   ", "x" * 41, "<script>alert(1)</script>", "ann'); DROP TABLE answers;--", "../etc/passwd",
             "tab\tname", "-leading", "a@b.com",
             # look-alikes mixing scripts: Cyrillic А in a Latin name, Greek α and ο, Latin a in Cyrillic
             "\u0410nn", "P\u03b1ul", "J\u03bfhn", "\u0410\u043dna", "zero\u200bwidth"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_reader_names_are_refused(study_client, name):
    r = study_client.post("/api/study/invitations", json={"reader": name}, headers=owner(study_client))
    assert r.status_code == 400 and "reader name" in r.json()["detail"], r.json()
    if "\u0410" in name or "\u03b1" in name or "\u03bf" in name:
        assert "must not mix scripts" in r.json()["detail"]
    with pytest.raises(StudyError, match="reader name"):
        study_client.app.state.tokens.invite(name)
    page = study_client.get("/study", params={"reader": name})  # a name in the URL opens nothing
    assert page.status_code == 401 and 'id="invitation-needed"' in page.text and "<script>alert" not in page.text
    assert study_client.app.state.tokens.names() == {}
    assert study_client.get("/api/study/results", headers=owner(study_client)).json()["readers"] == {}


@pytest.mark.parametrize("name", ["Ann", "reader_2", "Dr. A-B", "x" * 40, "Émile", "Анна", "山田 太郎", "Σοφία"])
def test_good_reader_names_are_accepted(study_client, name):
    r = study_client.post("/api/study/invitations", json={"reader": f"  {name} "}, headers=owner(study_client))
    assert r.status_code == 201 and r.json()["reader"] == name
    assert r.json()["url"] == f"http://testserver/study?token={r.json()['token']}"
    r = study_client.get("/api/study/next", headers=bearer(r.json()["token"]))
    assert r.status_code == 200 and r.json()["reader"] == name and r.json()["answered"] == 0


@pytest.mark.parametrize("first, second", [("Ann", "ANN"), ("Ann", "\uff21\uff4e\uff4e"),  # full-width
                                           ("fiona", "\ufb01ona"),  # the ligature ﬁ
                                           ("Émile", "E\u0301mile"),  # combining acute accent
                                           ("Straße", "STRASSE"), ("Ann Lee", "ann  lee"), ("Ann", "ann\u00a0")])
def test_look_alike_names_are_one_reader(study_client, first, second):
    tokens = study_client.app.state.tokens
    inv = tokens.invite(first)
    with pytest.raises(StudyError, match="already has a valid invitation") as err:
        tokens.invite(second)
    assert err.value.status == 409
    again = tokens.invite(second, reissue=True)  # a new link for the same reader, under the first name
    assert again.shown_as == first and tokens.names() == {reader_key(first): first}
    assert reader_key(first) == reader_key(second)
    with pytest.raises(StudyError, match="unknown or revoked"):
        tokens.check(inv.token)  # the old link stopped working
    assert tokens.check(again.token).shown_as == first


def test_bad_answers_are_refused(study_client):
    image_id = study_client.app.state.study.images[0].id
    ann = bearer(token := invite(study_client, "Ann"))
    cases = [
        ({"image_id": "000000000000", "answer": "real"}, 404, "no image"),
        ({"image_id": image_id, "answer": "maybe"}, 400, "real' or 'synthetic"),
        ({"image_id": image_id, "answer": "real", "pneumonia": "perhaps"}, 400, "pneumonia"),
        ({"image_id": ["x"], "answer": {"a": 1}}, 404, "no image"),
        ({"reader": "Ann", "image_id": image_id, "answer": ["real"]}, 400, "real' or 'synthetic"),
    ]
    for body, status, message in cases:
        r = study_client.post("/api/study/answer", json=body, headers=ann)
        assert r.status_code == status and message in r.json()["detail"], body
    for content in (b"{not json", b"[1, 2]"):
        r = study_client.post("/api/study/answer", content=content,
                              headers={**ann, "content-type": "application/json"})
        assert r.status_code == 400 and "send" in r.json()["detail"] and "JSON" in r.json()["detail"]
    csrf = _html_next(study_client, token)[1]
    r = study_client.post("/study/answer", data={"csrf": csrf, "image_id": image_id, "answer": "maybe"})
    assert r.status_code == 400 and 'id="error"' in r.text
    r = study_client.post("/study/answer", data={"csrf": csrf, "image_id": image_id, "answer": "real"},
                          files={"file": ("x.png", b"123", "image/png")})  # the answer form takes no file
    assert r.status_code == 400 and "Too many files" in r.text
    assert study_client.get("/api/study/results", headers=owner(study_client)).json()["overall"]["answered"] == 0


def test_study_with_unlabelled_real_images(run_dir, tmp_path):
    folder = tmp_path / "site-images"  # PNGs with no labels.csv and no NORMAL/ PNEUMONIA/ folders
    folder.mkdir()
    for i, image in enumerate(make_phantoms(3, 40, seed=30).images):
        (folder / f"img{i}.png").write_bytes(png(image))
    client = TestClient(create_app(run_dir, real_data=folder, db_path=tmp_path / "u.sqlite", study_size=6))
    study = client.app.state.study
    assert study.counts() == {"real": 3, "synthetic": 3}
    assert all((im.label is None) == (im.kind == "real") for im in study.images)
    ann = bearer(invite(client, "Ann"))
    for im in study.images:
        r = client.post("/api/study/answer", json={"image_id": im.id, "answer": "real", "pneumonia": True},
                        headers=ann)
        assert r.status_code == 201
    ann = client.get("/api/study/results", headers=owner(client)).json()["readers"]["Ann"]
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
    assert "token" not in result.output
    result = CliRunner().invoke(app, ["serve", str(run_dir), "--real-data", str(real_npz), "--port", "8765",
                                      "--db", str(tmp_path / "s.sqlite")])
    assert result.exit_code == 0, result.output
    assert calls[1][1]["port"] == 8765 and calls[1][0].state.study is not None
    assert (tmp_path / "s.sqlite").is_file()
    # the owner's results link, printed once; it opens the results, nothing else does
    link = re.search(r"http://127\.0\.0\.1:8765/study/results\?token=([A-Za-z0-9_-]{43})", result.output)
    assert link and "fedsynth study invite" in result.output and f"--db {tmp_path / 's.sqlite'}" in result.output
    web = TestClient(calls[1][0])
    assert web.get("/api/study/results").status_code == 401
    assert web.get("/api/study/results", headers=bearer(link.group(1))).status_code == 200
    assert web.get("/study/results", params={"token": link.group(1)}).status_code == 200
    # a restart mints a new owner token: the old one stops working
    result = CliRunner().invoke(app, ["serve", str(run_dir), "--real-data", str(real_npz),
                                      "--db", str(tmp_path / "s.sqlite")])
    assert result.exit_code == 0 and link.group(1) not in result.output
    assert TestClient(calls[2][0]).get("/api/study/results", headers=bearer(link.group(1))).status_code == 401
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "not found" in result.output and len(calls) == 3


def test_cli_study_invite_revoke_and_owner_token(run_dir, real_npz, tmp_path):
    from typer.testing import CliRunner

    from fedsynth.cli.study import study_app

    db = tmp_path / "cli.sqlite"
    web = TestClient(create_app(run_dir, real_data=real_npz, db_path=db, study_size=STUDY_SIZE))
    run = CliRunner()
    result = run.invoke(study_app, ["invite", str(run_dir), "--reader", "Dr. Ann", "--db", str(db),
                                    "--url", "http://ws-12:8000"])
    assert result.exit_code == 0, result.output
    link = re.search(r"http://ws-12:8000/study\?token=([A-Za-z0-9_-]{43})", result.output)
    assert link and "invitation for Dr. Ann, valid until" in result.output
    token = link.group(1)
    assert token.encode() not in db.read_bytes()  # only its HMAC is stored
    page = web.get("/study", params={"token": token})  # the running app sees the new invitation at once
    assert page.status_code == 200 and "Dr. Ann, image 1 of" in page.text
    # the same reader again (another case): refused; --reissue makes a new link, the old one stops
    result = run.invoke(study_app, ["invite", str(run_dir), "--reader", "DR. ANN", "--db", str(db)])
    assert result.exit_code == 2 and "already has a valid invitation" in result.output
    result = run.invoke(study_app, ["invite", str(run_dir), "--reader", "dr. ann", "--db", str(db), "--reissue"])
    assert result.exit_code == 0 and "invitation for Dr. Ann" in result.output
    new = re.search(r"token=([A-Za-z0-9_-]{43})", result.output).group(1)
    assert web.get("/api/study/next", headers=bearer(token)).status_code == 401
    assert web.get("/api/study/next", headers=bearer(new)).json()["reader"] == "Dr. Ann"
    for bad, message in (("-x", "reader name"), ("\u0410nn", "must not mix scripts")):
        result = run.invoke(study_app, ["invite", str(run_dir), "--reader", bad, "--db", str(db)])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    result = run.invoke(study_app, ["invite", str(run_dir), "--reader", "Bob", "--db", str(db), "--days", "0"])
    assert result.exit_code == 2 and "more than 0" in result.output
    result = run.invoke(study_app, ["revoke", str(run_dir), "--reader", "DR. ann", "--db", str(db)])
    assert result.exit_code == 0 and web.get("/api/study/next", headers=bearer(new)).status_code == 401
    result = run.invoke(study_app, ["revoke", str(run_dir), "--reader", "Dr. Ann", "--db", str(db)])
    assert result.exit_code == 2 and "no valid invitation" in result.output
    result = run.invoke(study_app, ["owner-token", str(run_dir), "--db", str(db)])
    assert result.exit_code == 0
    owner_token = re.search(r"/study/results\?token=([A-Za-z0-9_-]{43})", result.output).group(1)
    assert web.get("/api/study/results", headers=bearer(owner_token)).status_code == 200
    result = run.invoke(study_app, ["invite", str(tmp_path / "missing"), "--reader", "Ann"])
    assert result.exit_code == 2 and "not found" in result.output
