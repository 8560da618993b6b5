"""Secure aggregation (SecAgg+, Flower's own protocol code) in the federated modes: the
server gets the sites' average and never one site's update; a site that drops out is
unmasked by the others' shares; a contribution that fails a check voids the round."""

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message
from flwr.clientapp import ClientApp
from flwr.common.serde import message_to_proto

from fedsynth.client import client_app as real_app
from fedsynth.config import load_config
from fedsynth.errors import ConfigError
from fedsynth.privacy.keys import load_public_key
from fedsynth.privacy.ledger import verify_ledger
from fedsynth.protocol import ModelUpdate, RoundRequest, decode_secure_round, encode_secure_update
from fedsynth.rundir import RunDir
from fedsynth.server.secure_aggregation import secure_round
from fedsynth.simulation.engine import serve_simulation
from fedsynth.simulation.inprocess import InProcessGrid


def test_config_switches_it_on_and_refuses_what_cannot_work():
    cfg = load_config(overrides=["run.mode=federated", "federation.secure_aggregation=true"])
    assert cfg.federation.secure_aggregation.clipping_range == 8.0
    assert load_config(overrides=["federation.secure_aggregation=false"]).federation.secure_aggregation is None
    with pytest.raises(ConfigError, match="federated and fedavg-classifier"):
        load_config(overrides=["federation.secure_aggregation=true"])  # substitution: releases are public
    with pytest.raises(ConfigError, match="client_dp"):
        load_config(overrides=["run.mode=federated", "federation.secure_aggregation=true",
                               "federation.client_dp={noise_multiplier: 1.0, clipping_norm: 1.0}"])
    with pytest.raises(ConfigError, match="at least 3 sites"):
        load_config(overrides=["run.mode=federated", "federation.secure_aggregation=true",
                               "federation.num_sites=2"])


class WatchedGrid(InProcessGrid):
    """Keeps every reply as it would travel (Flower's wire format), to look for leaks."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.wire: list[bytes] = []

    def send_and_receive(self, messages, *, timeout=None):
        replies = super().send_and_receive(messages, timeout=timeout)
        self.wire += [message_to_proto(r).SerializeToString() for r in replies]
        return replies


GLOBAL = {"w": np.linspace(-1, 1, 20, dtype=np.float32).reshape(4, 5), "b": np.zeros(3, np.float32),
          "steps": np.asarray(10.0)}


def _delta(i: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    return {"w": rng.normal(0, 0.1, (4, 5)).astype(np.float32), "b": rng.normal(0, 0.1, 3).astype(np.float32),
            "steps": np.asarray(float(i + 1))}


def known_updates_app(refuse: int | None = None):
    """Site i adds _delta(i) to the global weights; site ``refuse`` refuses the round."""
    app = ClientApp()

    @app.train(mods=[real_app.secure_aggregation_mod])
    def train(msg, ctx):
        i = ctx.node_config["partition-id"]
        if i == refuse:
            return real_app._error_reply(msg, ctx, RuntimeError("budget exhausted"))
        req = decode_secure_round(msg.content)
        d = _delta(i)
        upd = ModelUpdate(f"site-{i}", {k: req.weights[k] + d[k] for k in req.weights}, 10, {"ledger": []})
        return Message(encode_secure_update(upd, req.weights, 8.0), reply_to=msg)

    return app


def _round(tmp_path, app, sites=3):
    cfg = load_config(overrides=["run.mode=federated", "federation.secure_aggregation=true",
                                 f"federation.num_sites={sites}", f"run.output_dir={tmp_path}"])
    grid = WatchedGrid(app, sites)
    try:
        req = RoundRequest("run-1", cfg, 1, "generator-round", dict(GLOBAL))
        return grid, secure_round(cfg, grid, req, {})
    finally:
        grid.close()


def test_the_server_gets_the_average_and_never_a_sites_update(tmp_path, flower_identity):
    grid, out = _round(tmp_path, known_updates_app(), sites=4)
    assert out.problem is None and not out.failures
    deltas = [_delta(i) for i in range(4)]
    for k in ("w", "b"):  # quantized to 2**22 levels over [-8, 8]: exact to ~1e-5
        expected = GLOBAL[k] + np.mean([d[k] for d in deltas], axis=0)
        np.testing.assert_allclose(out.weights[k], expected, atol=2e-5)
        assert out.weights[k].dtype == GLOBAL[k].dtype
    assert float(out.weights["steps"]) == 10.0 + np.mean([1, 2, 3, 4])  # counters travel in the clear
    assert sorted(u.site for u in out.contributions.values()) == ["site-0", "site-1", "site-2", "site-3"]
    # no reply carries a site's update (or its new weights) in the clear: only masked integers
    blob = b"".join(grid.wire)
    assert len(blob) > 4 * 20 * 4, "the replies were recorded"
    for d in deltas:
        for k in ("w", "b"):
            assert d[k].tobytes() not in blob
            assert (GLOBAL[k] + d[k]).astype(np.float32).tobytes() not in blob


def test_a_site_that_refuses_is_unmasked_by_the_others_shares(tmp_path, flower_identity):
    _, out = _round(tmp_path, known_updates_app(refuse=1), sites=4)
    assert [site for _, site, _ in out.failures] == ["site-1"]
    assert out.failures[0][2].endswith("budget exhausted"), "the site's own reason reaches the server"
    expected = GLOBAL["w"] + np.mean([_delta(i)["w"] for i in (0, 2, 3)], axis=0)
    np.testing.assert_allclose(out.weights["w"], expected, atol=2e-5)


def test_an_update_beyond_the_clipping_range_is_refused_not_clipped():
    big = ModelUpdate("site-0", {"w": GLOBAL["w"] + 9.0, "b": GLOBAL["b"], "steps": GLOBAL["steps"]}, 10, {})
    with pytest.raises(ValueError, match="clipping_range=8"):
        encode_secure_update(big, GLOBAL, 8.0)


def _secure(cfg, rounds=2, **extra):
    data = cfg.model_dump()
    data["run"]["mode"] = "federated"
    data["federation"].update(rounds=rounds, local_epochs=1, secure_aggregation={})
    return cfg.model_validate({**data, **extra})


def _serve(cfg, app=None):
    run_dir = RunDir.create(cfg)
    grid = InProcessGrid(app or real_app.app, cfg.federation.num_sites)
    try:
        return run_dir, serve_simulation(grid, cfg, run_dir).model_dump(mode="json")
    finally:
        grid.close()


def test_federated_run_with_secure_aggregation_and_dp(tiny_config):
    cfg = _secure(tiny_config, privacy={"epsilon": 8.0})
    run_dir, m = _serve(cfg)
    assert [(r["round"], r["secure_aggregation"], r["sites"]) for r in m["rounds"]] == [
        (1, "SecAgg+", ["site-0", "site-1", "site-2"]), (2, "SecAgg+", ["site-0", "site-1", "site-2"])]
    assert m["pooled"]["auroc"] is not None
    for site in ("site-0", "site-1", "site-2"):
        assert m["sites"][site]["status"] == "ok" and m["sites"][site]["bytes_sent"] > 0
        ledger = run_dir.path / "ledgers" / f"{site}.jsonl"
        entries = [json.loads(line) for line in ledger.read_text().splitlines()]
        assert [e["type"] for e in entries] == ["dp-training", "release"] * 2
        assert all(e["epsilon"] > 0 for e in entries if e["type"] == "dp-training")
        assert all(e["kind"] == "model-update" for e in entries if e["type"] == "release")
        assert verify_ledger(ledger, load_public_key(Path(str(ledger)[:-len(".jsonl")] + ".pub"))).ok


def test_a_contribution_failing_its_checks_voids_the_rounds_average(tiny_config):
    app = ClientApp()

    @app.train(mods=[real_app.secure_aggregation_mod])
    def train(msg, ctx):
        reply = real_app.train(msg, ctx)
        if ctx.node_config["partition-id"] == 1 and not reply.has_error():
            metrics = reply.content.config_records["fitres.metrics"]
            meta = json.loads(metrics["meta"])
            meta["ledger"][-1]["round"] = 99  # a signed entry altered: its signature no longer verifies
            metrics["meta"] = json.dumps(meta)
        return reply

    @app.evaluate()
    def evaluate(msg, ctx):
        return real_app.evaluate(msg, ctx)

    cfg = _secure(tiny_config)
    run_dir, m = _serve(cfg, app)
    first = m["rounds"][0]
    assert "rejected update (site-1)" in first["skipped"]
    assert m["rounds"][1]["sites"] == ["site-0", "site-2"] and "skipped" not in m["rounds"][1]
    assert m["sites"]["site-1"]["status"] != "ok"
    assert "ledger does not verify" in json.dumps(m["failures"])


def test_fedavg_classifier_rounds_run_under_secure_aggregation_too(tiny_config):
    cfg = _secure(tiny_config, rounds=1)
    cfg = cfg.model_validate({**cfg.model_dump(), "run": {**cfg.run.model_dump(), "mode": "fedavg-classifier"}})
    _, m = _serve(cfg)
    assert m["mode"] == "fedavg-classifier"
    assert [(r["secure_aggregation"], r["sites"]) for r in m["rounds"]] == [("SecAgg+", ["site-0", "site-1", "site-2"])]
    assert m["pooled"]["auroc"] is not None
