"""The federation without Flower (LocalTransport), and the Grid adapter against a fake Grid."""

import json

import numpy as np
import pytest
from flwr.app import Error, Message, MessageType, RecordDict

from fedsynth.client.site import Site
from fedsynth.client.site_data import simulated_site_state, simulated_sites
from fedsynth.errors import FederationError
from fedsynth.protocol import (
    Release,
    TrainRequest,
    decode_eval_result,
    decode_release,
    decode_train_request,
    encode_eval_result,
    encode_release,
    encode_train_request,
)
from fedsynth.rundir import RunDir
from fedsynth.server.checks import check_release
from fedsynth.server.record import RunRecord
from fedsynth.server.substitution import run_substitution
from fedsynth.server.transport import GridTransport
from fedsynth.simulation.local import LocalTransport
from fedsynth.simulation.registry import simulation_registry


def _sites(cfg, run_dir):
    simulation_registry(cfg, run_dir.sites_dir)  # every simulated site gets its key pair
    return [Site(s, simulated_site_state(cfg, run_dir.sites_dir, s.name), run_dir.site_dir(s.name), device="cpu")
            for s in simulated_sites(cfg)]


def _run(cfg, sites, run_dir):
    return run_substitution(cfg, LocalTransport(sites), run_dir,
                            simulation_registry(cfg, run_dir.sites_dir)).model_dump(mode="json")


class BrokenSite(Site):
    def release(self, config, run_id):
        raise RuntimeError("disk full")


@pytest.mark.slow  # over 1 s: outside the quick subset
def test_local_federation_end_to_end(tiny_config):
    run_dir = RunDir.create(tiny_config)
    metrics = _run(tiny_config, _sites(tiny_config, run_dir), run_dir)
    assert set(metrics["sites"]) == {"site-0", "site-1", "site-2"}
    for site in metrics["sites"].values():
        assert site["status"] == "ok"
        assert site["release"]["n_released"] == 48
        assert 0 <= site["evaluation"]["auroc"] <= 1
    assert metrics["pooled"]["n"] == sum(s["evaluation"]["n"] for s in metrics["sites"].values())
    assert metrics["data"]["phantom"] is True
    assert any("PHANTOM" in w for w in metrics["warnings"]) and any("NOT PRIVATE" in w for w in metrics["warnings"])
    # outputs
    assert json.loads((run_dir.path / "metrics.json").read_text())["run_id"] == run_dir.run_id
    assert (run_dir.path / "classifier.safetensors").is_file()
    assert (run_dir.path / "config.yaml").is_file()
    assert (run_dir.path / "grids" / "synthetic_site-0.png").is_file()
    site_dir = run_dir.site_dir("site-0")
    assert (site_dir / "real_vs_synthetic_normal.png").is_file()
    assert (site_dir / "generator.safetensors").is_file()


@pytest.mark.slow  # over 1 s: outside the quick subset
def test_failed_site_is_dropped_with_its_reason(tiny_config):
    run_dir = RunDir.create(tiny_config)
    sites = _sites(tiny_config, run_dir)
    sites[1] = BrokenSite(sites[1].data, sites[1].state, None, device="cpu")
    metrics = _run(tiny_config, sites, run_dir)
    assert metrics["sites"]["site-1"]["status"] == "failed"
    assert "disk full" in metrics["sites"]["site-1"]["failures"][0]["reason"]
    assert metrics["sites"]["site-0"]["status"] == "ok"
    assert any("site-1" in w for w in metrics["warnings"])


@pytest.mark.slow  # over 1 s: outside the quick subset
def test_too_few_sites_stops_with_a_clear_error(tiny_config):
    tiny_config.federation.min_sites = 3
    run_dir = RunDir.create(tiny_config)
    sites = _sites(tiny_config, run_dir)
    sites[0] = BrokenSite(sites[0].data, sites[0].state, None, device="cpu")
    with pytest.raises(FederationError, match="min_sites=3.*disk full"):
        _run(tiny_config, sites, run_dir)


def test_malformed_releases_are_rejected(tiny_config):
    good = Release("s", np.zeros((4, 16, 16), np.uint8), np.array([0, 1, 0, 1], np.uint8))
    assert check_release(good, tiny_config) is None
    bad = [
        Release("s", np.zeros((4, 16, 16), np.float32), good.labels),
        Release("s", np.zeros((4, 32, 32), np.uint8), good.labels),
        Release("s", good.images, np.array([0, 1, 2, 1], np.uint8)),
        Release("s", good.images, good.labels[:3]),
        Release("s", np.zeros((0, 16, 16), np.uint8), np.zeros(0, np.uint8)),
        Release("s", np.zeros((500, 16, 16), np.uint8), np.zeros(500, np.uint8)),
    ]
    reasons = [check_release(r, tiny_config) for r in bad]
    assert all(reasons), reasons


def test_protocol_roundtrip(tiny_config):
    from fedsynth.classifier.metrics import ScoreHistogram
    from fedsynth.protocol import EvalResult

    req = TrainRequest("run-1", tiny_config)
    back = decode_train_request(encode_train_request(req))
    assert back.config == tiny_config and back.run_id == "run-1"
    rel = Release("site-0", np.arange(2 * 16 * 16, dtype=np.uint8).reshape(2, 16, 16), np.array([0, 1], np.uint8),
                  {"k": [1, 2]})
    rel2 = decode_release(encode_release(rel))
    np.testing.assert_array_equal(rel2.images, rel.images)
    assert rel2.meta == rel.meta and rel2.site == "site-0"
    res = EvalResult("site-0", {"auroc": 0.5}, ScoreHistogram(np.array([1, 0]), np.array([0, 2])), {})
    res2 = decode_eval_result(encode_eval_result(res))
    np.testing.assert_array_equal(res2.histogram.negative, [0, 2])


class FakeGrid:
    """Grid double: replies with a release from node 1, an error from node 2, nothing from 3."""

    def __init__(self, release_content: RecordDict):
        self.release_content = release_content
        self.sent = []

    def get_node_ids(self):
        return [1, 2, 3]

    def send_and_receive(self, messages, timeout=None):
        self.sent = list(messages)
        replies = []
        for m in self.sent:
            node = m.metadata.dst_node_id
            if node == 1:
                r = Message(self.release_content, reply_to=m)
            elif node == 2:
                r = Message(Error(code=1001, reason="site-b: BudgetExceeded: epsilon 12 > 10"), reply_to=m)
            else:
                continue
            r.metadata.__dict__["_src_node_id"] = node
            replies.append(r)
        return replies


def test_grid_transport_reports_errors_and_silence(tiny_config, flower_identity):
    rel = encode_release(Release("site-a", np.zeros((2, 16, 16), np.uint8), np.array([0, 1], np.uint8)))
    grid = FakeGrid(rel)
    transport = GridTransport(grid, expected_sites=3, timeout_s=5, connect_timeout_s=0)
    record = RunRecord()
    ok = transport.release(TrainRequest("r", tiny_config), record)
    failed = record.failures
    assert [r.site for r in ok] == ["site-a"]
    assert {m.metadata.message_type for m in grid.sent} == {MessageType.TRAIN}
    by_site = {f.site: f.reason for f in failed}
    assert by_site["site-b"] == "BudgetExceeded: epsilon 12 > 10"
    assert "no reply within 5 s" in by_site["node-3"]
