"""Federated modes and faults, on the in-process Grid (the real ServerApp and ClientApp logic,
without Ray): crashes, hangs, budget refusals and malformed replies drop a site with its
reason; too few sites stop the run; a restarted server resumes after the last round."""

import json

import numpy as np
import pytest
from flwr.app import Message
from flwr.clientapp import ClientApp

from fedsynth.client import client_app as real_app
from fedsynth.config import PrivacySection
from fedsynth.errors import FederationError
from fedsynth.privacy.accounting import epsilon
from fedsynth.privacy.dp import plan_training
from fedsynth.privacy.keys import load_public_key
from fedsynth.privacy.ledger import verify_ledger
from fedsynth.protocol import (
    arrays_record,
    decode_release,
    decode_update,
    encode_release,
    is_round_request,
)
from fedsynth.rundir import RunDir
from fedsynth.simulation.engine import serve_simulation
from fedsynth.simulation.inprocess import InProcessGrid


def _federated(cfg, rounds=2):
    cfg.run.mode = "federated"
    cfg.federation.rounds = rounds
    cfg.federation.local_epochs = 1
    return cfg


def _serve(cfg, app=None, workers=1, run_dir=None, on_round=None):
    run_dir = run_dir or RunDir.create(cfg)
    grid = InProcessGrid(app or real_app.app, cfg.federation.num_sites, workers=workers)
    try:
        return run_dir, serve_simulation(grid, cfg, run_dir, on_round=on_round).model_dump(mode="json")
    finally:
        grid.close()


def faulty_app(behaviour):
    """A ClientApp that misbehaves at partition 1 as ``behaviour(msg, ctx)`` says, else is fedsynth's."""
    app = ClientApp()

    @app.train()
    def train(msg, ctx):
        if ctx.node_config["partition-id"] == 1:
            out = behaviour(msg, ctx)
            if out is not None:
                return out
        return real_app.train(msg, ctx)

    @app.evaluate()
    def evaluate(msg, ctx):
        return real_app.evaluate(msg, ctx)

    return app


def test_federated_mode_end_to_end(tiny_config):
    run_dir, m = _serve(_federated(tiny_config))
    assert m["mode"] == "federated"
    assert [r["round"] for r in m["rounds"]] == [1, 2]
    assert all(r["sites"] == ["site-0", "site-1", "site-2"] for r in m["rounds"])
    assert all(s["status"] == "ok" and s["bytes_sent"] > 0 for s in m["sites"].values())
    assert m["pooled"]["auroc"] is not None
    for name in ("generator.safetensors", "classifier.safetensors", "grids/synthetic_global.png",
                 "checkpoints/round-002.safetensors", "checkpoints/state.json"):
        assert (run_dir.path / name).is_file(), name
    # each round is in each site's ledger: 2 trainings and 2 signed model updates
    ledger = run_dir.path / "ledgers" / "site-0.jsonl"
    entries = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [(e["type"], e.get("kind")) for e in entries] == [("training", None), ("release", "model-update")] * 2
    assert verify_ledger(ledger, load_public_key(run_dir.path / "ledgers" / "site-0.pub")).ok


def test_budgets_compose_across_rounds_and_an_exhausted_site_stops(tiny_config):
    cfg = _federated(tiny_config, rounds=2)
    cfg.sites.budget = cfg.sites.budget.model_copy(update={"delta": 1e-3, "epsilon": 100.0})
    cfg.privacy = PrivacySection(epsilon=3.0, delta=1e-3)
    n = 38  # each site's training images in the tiny config (checked below)
    # privacy.epsilon is the target of all rounds together: each round's noise is calibrated for both
    plan = plan_training(cfg.privacy, n, cfg.generator.batch_size, 1, calibrate_epochs=2)
    one, two = epsilon([plan.mechanism()], 1e-3), epsilon([plan.mechanism()] * 2, 1e-3)
    assert two <= 3.0 + 1e-9
    cfg.sites.budgets = {"site-2": cfg.sites.budget.model_copy(update={"epsilon": (one + two) / 2})}
    run_dir, m = _serve(cfg)
    assert m["rounds"][0]["sites"] == ["site-0", "site-1", "site-2"]
    assert m["rounds"][1]["sites"] == ["site-0", "site-1"], "site-2 may afford one round only"
    failure = m["sites"]["site-2"]["failures"][0]
    assert failure["stage"] == "round 2" and "BudgetExceeded" in failure["reason"]
    spent = m["privacy"]["sites"]["site-0"]["spent_epsilon"]
    assert spent == pytest.approx(two, rel=1e-6), "site-0's ledger composes both rounds"
    assert m["sites"]["site-0"]["training"]["rounds"] == [1, 2]
    from fedsynth.client.site_data import simulated_sites

    assert len(simulated_sites(cfg)[0].train) == n


def test_a_crashing_site_is_dropped_with_its_reason(tiny_config):
    def crash(msg, ctx):
        raise RuntimeError("GPU fell off the bus")

    _, m = _serve(_federated(tiny_config), faulty_app(crash))
    f = m["failures"][0]
    assert f["site"].startswith("node-") and "GPU fell off the bus" in f["reason"] and f["stage"] == "round 1"
    assert m["rounds"][1]["sites"] == ["site-0", "site-2"]
    assert m["pooled"] is not None


def test_a_hanging_site_is_dropped_after_the_timeout(tiny_config):
    import threading

    release = threading.Event()

    def hang(msg, ctx):
        release.wait(120)  # far longer than the timeout
        return None

    cfg = _federated(tiny_config, rounds=1)
    # long enough that the two healthy sites' round finishes inside it on a loaded machine (the tests
    # run in parallel): at 8 s a slow healthy site could be dropped too
    cfg.federation.site_timeout_s = 30
    try:
        _, m = _serve(cfg, faulty_app(hang), workers=3)
    finally:
        release.set()
    reasons = [f["reason"] for f in m["failures"]]
    assert any("no reply within 30 s" in r for r in reasons)
    assert m["rounds"][0]["sites"] == ["site-0", "site-2"]


def test_too_few_sites_stop_the_run(tiny_config):
    cfg = _federated(tiny_config)
    cfg.federation.min_sites = 3

    def crash(msg, ctx):
        raise RuntimeError("out of memory")

    with pytest.raises(FederationError, match="min_sites=3.*out of memory"):
        _serve(cfg, faulty_app(crash))


def _poisoned_update(transform):
    def poison(msg, ctx):
        if not is_round_request(msg.content):
            return None
        reply = real_app.train(msg, ctx)
        upd = decode_update(reply.content)
        key = sorted(upd.weights)[0]
        reply.content["arrays"] = arrays_record({**upd.weights, key: transform(upd.weights[key])})
        return reply

    return poison


@pytest.mark.parametrize(
    "transform, expected",
    [
        (lambda a: np.full_like(a, np.nan), "non-finite"),
        (lambda a: np.zeros((3, 3), a.dtype), "shape"),
        (lambda a: a + 0.5, "signed hash"),  # a well-formed update that is not what the site signed
    ],
)
def test_malformed_updates_are_rejected_not_averaged(tiny_config, transform, expected):
    _, m = _serve(_federated(tiny_config, rounds=1), faulty_app(_poisoned_update(transform)))
    assert m["rounds"][0]["sites"] == ["site-0", "site-2"]
    assert expected in m["sites"]["site-1"]["failures"][0]["reason"]


def test_malformed_release_with_wrong_labels_is_rejected(tiny_config):
    def bad_labels(msg, ctx):
        reply = real_app.train(msg, ctx)
        rel = decode_release(reply.content)
        rel.labels = np.full_like(rel.labels, 7)
        return Message(encode_release(rel), reply_to=msg)

    _, m = _serve(tiny_config, faulty_app(bad_labels))
    assert "labels must be class indices 0..1" in m["sites"]["site-1"]["failures"][0]["reason"]
    assert m["classifier"]["sites"] == ["site-0", "site-2"]


def test_a_restarted_server_resumes_after_the_last_completed_round(tiny_config):
    cfg = _federated(tiny_config, rounds=3)

    class Crash(Exception):
        pass

    def crash_after_two(round_no, state):
        if round_no == 2:
            raise Crash("the server's machine rebooted")

    run_dir = RunDir.create(cfg)
    with pytest.raises(Crash):
        _serve(cfg, run_dir=run_dir, on_round=crash_after_two)
    state = json.loads((run_dir.path / "checkpoints" / "state.json").read_text())
    assert state["completed"] == 2 and not (run_dir.path / "metrics.json").exists()
    _, m = _serve(cfg, run_dir=run_dir)
    assert m["resumed_from"] == 2
    assert [r["round"] for r in m["rounds"]] == [1, 2, 3]
    ledger = (run_dir.path / "ledgers" / "site-1.jsonl").read_text().splitlines()
    assert len(ledger) == 6, "no round was trained twice"


def test_fedavg_classifier_and_centralized_baselines(tiny_config):
    cfg = tiny_config
    cfg.run.mode = "fedavg-classifier"
    cfg.federation.rounds = 2
    cfg.federation.local_epochs = 1
    _, m = _serve(cfg)
    assert m["classifier"]["trained_on"] == "real (federated averaging)" and m["pooled"]["auroc"] is not None
    assert m["sites"]["site-0"]["bytes_sent"] > 100_000  # classifier weights travel in classic FL
    cfg.run.mode = "centralized-real"
    _, m = _serve(cfg)
    assert "CENTRALIZED" in m["warnings"][0] and m["classifier"]["trained_on"].startswith("real (pooled")


def test_client_level_dp_is_accounted_by_flowers_accountant(tiny_config):
    cfg = _federated(tiny_config)
    from fedsynth.config import ClientDPSection

    cfg.federation.client_dp = ClientDPSection(noise_multiplier=0.8, clipping_norm=1.0, delta=1e-3)
    _, m = _serve(cfg)
    eps = [r["client_dp"]["epsilon"] for r in m["rounds"]]
    assert 0 < eps[0] < eps[1], "client-level epsilon grows with every aggregated round"
