"""Real pixels never leave a site.

Every message a site's Flower ClientApp sends is recorded, exactly as it goes on the wire
(the reply's RecordDict), and every array and every value in it is checked against the
site's real images. A planted copy proves the detector catches a leak.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context, Message, MessageType, RecordDict

from fedsynth.client.client_app import app as client_app
from fedsynth.client.site_data import simulated_sites
from fedsynth.protocol import (
    EvaluateRequest,
    TrainRequest,
    decode_release,
    encode_evaluate_request,
    encode_train_request,
)


def _context(partition_id: int, n: int) -> Context:
    return Context(
        run_id=1,
        node_id=100 + partition_id,
        node_config={"partition-id": partition_id, "num-partitions": n},
        state=RecordDict(),
        run_config={},
    )


def _everything_sent(content: RecordDict) -> tuple[list[np.ndarray], list[object]]:
    """All arrays and all scalar/list values in a reply."""
    arrays = [arr.numpy() for rec in content.array_records.values() for arr in rec.values()]
    values: list[object] = []
    for group in (content.config_records, content.metric_records):
        for rec in group.values():
            values.extend(rec.values())
    return arrays, values


def _as_images(arr: np.ndarray, size: int) -> np.ndarray | None:
    if arr.ndim >= 2 and arr.shape[-2:] == (size, size):
        flat = arr.reshape(-1, size, size).astype(np.float32)
        return flat / 255.0 if arr.dtype == np.uint8 else flat
    return None


def leaked(arrays: list[np.ndarray], real: np.ndarray) -> int:
    """Count sent images equal to a real image (up to uint8 rounding)."""
    size = real.shape[-1]
    real_flat = real.reshape(len(real), -1)
    hits = 0
    for arr in arrays:
        imgs = _as_images(arr, size)
        if imgs is None:
            continue
        for img in imgs.reshape(len(imgs), -1):
            if (np.abs(real_flat - img).max(axis=1) <= 1.0 / 255 + 1e-6).any():
                hits += 1
    return hits


def nearest_distance(arrays: list[np.ndarray], real: np.ndarray) -> float:
    size = real.shape[-1]
    real_flat = real.reshape(len(real), -1)
    best = np.inf
    for arr in arrays:
        imgs = _as_images(arr, size)
        if imgs is None:
            continue
        d = ((imgs.reshape(len(imgs), 1, -1) - real_flat[None]) ** 2).mean(axis=2)
        best = min(best, float(np.sqrt(d.min())))
    return best


@pytest.fixture
def recorded(tiny_config, flower_identity, tmp_path):
    """Run every site's ClientApp on real Flower messages; keep what each sends back."""
    cfg = tiny_config
    sites = simulated_sites(cfg)
    sent: dict[str, list[RecordDict]] = {}
    releases = []
    for pid, site in enumerate(sites):
        msg = Message(encode_train_request(TrainRequest("run", cfg)), 100 + pid, MessageType.TRAIN)
        reply = client_app(msg, _context(pid, len(sites)))
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        sent.setdefault(site.name, []).append(reply.content)
        releases.append(decode_release(reply.content))
    # a classifier for the evaluation round (any weights will do: we audit what comes back)
    from fedsynth.classifier.train import train_classifier

    imgs = np.concatenate([r.images for r in releases]).astype(np.float32) / 255
    labels = np.concatenate([r.labels for r in releases]).astype(np.int64)
    clf = train_classifier(imgs, labels, cfg.classifier, arch="small-cnn", resolution=16, seed=0, device="cpu")
    for pid, site in enumerate(sites):
        req = EvaluateRequest("run", cfg, clf.header(), clf.state_dict())
        msg = Message(encode_evaluate_request(req), 100 + pid, MessageType.EVALUATE)
        reply = client_app(msg, _context(pid, len(sites)))
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        sent[site.name].append(reply.content)
    return sites, sent


def test_no_real_image_leaves_any_site(recorded):
    sites, sent = recorded
    for site in sites:
        real = np.concatenate([site.train.images, site.test.images])
        arrays = [a for content in sent[site.name] for a in _everything_sent(content)[0]]
        assert any(_as_images(a, 16) is not None for a in arrays), "the release must carry images"
        assert leaked(arrays, real) == 0
        # not even a near copy: every released image is farther from every real image than rounding
        assert nearest_distance(arrays, real) > 2.0 / 255


def test_the_leak_detector_catches_a_planted_copy(recorded):
    sites, sent = recorded
    site = sites[0]
    arrays = [a for content in sent[site.name] for a in _everything_sent(content)[0]]
    planted = arrays + [np.rint(site.train.images[:1] * 255).astype(np.uint8)]
    assert leaked(planted, site.train.images) == 1
    assert nearest_distance(planted, site.train.images) <= 1.0 / 255


def test_evaluation_returns_no_per_image_scores_or_ids(recorded):
    sites, sent = recorded
    for site in sites:
        n_test = len(site.test)
        arrays, values = _everything_sent(sent[site.name][1])
        assert arrays == [], "an evaluation reply carries no arrays"
        for v in values:
            if isinstance(v, list):
                # only fixed-size histograms: never one entry per test image
                assert len(v) != n_test
        # and no histogram bin pins down one image's score: every occupied bin holds >= 5 images
        from fedsynth.protocol import decode_eval_result

        result = decode_eval_result(sent[site.name][1])
        for h in [result.histogram, *result.extra_histograms.values()]:
            occupied = (h.positive + h.negative)[(h.positive + h.negative) > 0]
            assert occupied.sum() == n_test and occupied.min() >= 5
        patients = set(site.train.patient.tolist()) | set(site.test.patient.tolist())
        for content in sent[site.name]:
            for v in _everything_sent(content)[1]:
                text = str(v)
                assert not any(p in text for p in patients), "a patient id left the site"
