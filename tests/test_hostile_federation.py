"""A hostile site, a hostile ledger file, a server querying for free: each is refused with a
reason, costs only itself, and never crashes the run or the officer's tools (issue 14)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fedsynth.classifier.metrics import ScoreHistogram, evaluate_scores
from fedsynth.cli import app
from fedsynth.client.site import Site
from fedsynth.client.site_data import simulated_site_state, simulated_sites
from fedsynth.privacy.accounting import Mechanism, epsilon
from fedsynth.privacy.keys import generate_keypair, load_private_key, load_public_key, sign
from fedsynth.privacy.ledger import (
    DP_TRAINING,
    EVALUATION,
    Ledger,
    LedgerError,
    canonical,
    entry_hash,
    read_ledger,
    verify_entries,
    verify_ledger,
)
from fedsynth.protocol import EvalResult
from fedsynth.rundir import RunDir
from fedsynth.server.checks import check_eval_result
from fedsynth.server.substitution import run_substitution
from fedsynth.simulation.local import LocalTransport
from fedsynth.simulation.registry import simulation_registry

DELTA = 1e-5


# ---- one hostile site among three -------------------------------------------------------------


def _resign(entry: dict, key) -> dict:
    """An entry re-hashed and re-signed with the site's own key: content the server must still refuse."""
    entry = {k: v for k, v in entry.items() if k not in ("hash", "signature")}
    entry["hash"] = entry_hash(entry)
    entry["signature"] = sign(key, entry["hash"].encode())
    return entry


def _resign_chain(ledger: list[dict], key) -> list[dict]:
    out, prev = [], "0" * 64
    for e in ledger:
        e = {**e, "prev_hash": prev}
        out.append(_resign(e, key))
        prev = out[-1]["hash"]
    return out


def _string_index(rel, key):
    rel.meta["ledger"][-1] = {**rel.meta["ledger"][-1], "index": "one"}  # unsigned change


def _nan_epsilon(rel, key):
    rel.meta["ledger"][0]["epsilon"] = float("nan")


def _tiny_noise(rel, key):
    ledger = copy.deepcopy(rel.meta["ledger"])
    ledger[0]["mechanism"] = {"noise_multiplier": 1e-200, "sample_rate": 1.0, "steps": 10, "delta": DELTA,
                              "accountant": "rdp", "max_grad_norm": 1.0}
    ledger[0]["type"] = DP_TRAINING
    rel.meta["ledger"] = _resign_chain(ledger, key)


def _huge_steps(rel, key):
    ledger = copy.deepcopy(rel.meta["ledger"])
    ledger[0]["mechanism"] = {"noise_multiplier": 1.0, "sample_rate": 0.5, "steps": 10**9, "delta": DELTA,
                              "accountant": "prv", "max_grad_norm": 1.0}
    ledger[0]["type"] = DP_TRAINING
    rel.meta["ledger"] = _resign_chain(ledger, key)


def _signed_garbage_statistics(rel, key):
    ledger = copy.deepcopy(rel.meta["ledger"])
    ledger[-1]["membership_auc"] = "high"  # signed, but not a number where a number belongs
    rel.meta["ledger"] = _resign_chain(ledger, key)


def _ledger_not_a_list(rel, key):
    rel.meta["ledger"] = {"entries": 3}


def _meta_flood(rel, key):
    rel.meta["train_counts"] = {f"class-{i}": "x" * 100 for i in range(2000)}


def _site_not_a_string(rel, key):
    rel.site = ["site-1"]


RELEASE_ATTACKS = {
    "unsigned string index": (_string_index, "ledger does not verify"),
    "NaN epsilon": (_nan_epsilon, "ledger does not verify"),
    "noise 1e-200 at sample rate 1": (_tiny_noise, "noise_multiplier"),
    "PRV with 1e9 steps": (_huge_steps, "steps"),
    "signed non-number statistic": (_signed_garbage_statistics, "membership_auc"),
    "ledger not a list": (_ledger_not_a_list, "no ledger attached"),
    "statistics flood": (_meta_flood, "statistics take"),
    "site name not a string": (_site_not_a_string, "names no site"),
}


class HostileTransport(LocalTransport):
    """site-1 replies with whatever ``attack`` makes of its honest reply."""

    def __init__(self, sites, keys, release_attack=None, eval_attack=None):
        super().__init__(sites)
        self.keys, self.release_attack, self.eval_attack = keys, release_attack, eval_attack

    def release(self, request, record):
        out = super().release(request, record)
        for rel in out:
            if rel.site == "site-1" and self.release_attack:
                self.release_attack(rel, self.keys["site-1"])
        return out

    def evaluate(self, request, record):
        out = super().evaluate(request, record)
        for res in out:
            if res.site == "site-1" and self.eval_attack:
                self.eval_attack(res)
        return out


@pytest.fixture
def federation(tiny_config):
    cfg = tiny_config
    cfg.evaluation.fidelity = False
    cfg.evaluation.site_baselines = False
    cfg.gate.membership_audit = False
    run_dir = RunDir.create(cfg)
    registry = simulation_registry(cfg, run_dir.sites_dir)
    sites = [Site(s, simulated_site_state(cfg, run_dir.sites_dir, s.name), None, device="cpu",
                  consortium_keys=registry) for s in simulated_sites(cfg)]
    keys = {s.name: s.state.signing_key() for s in sites}
    return cfg, run_dir, registry, sites, keys


@pytest.mark.parametrize("attack", list(RELEASE_ATTACKS))
@pytest.mark.slow  # over 1 s: outside the quick subset
def test_a_hostile_release_costs_only_its_site(federation, attack):
    cfg, run_dir, registry, sites, keys = federation
    mutate, reason = RELEASE_ATTACKS[attack]
    m = run_substitution(cfg, HostileTransport(sites, keys, release_attack=mutate), run_dir, registry)
    assert m.pooled is not None, "the run finished with the two honest sites"
    assert m.sites["site-0"].status == "ok" and m.sites["site-2"].status == "ok"
    failures = [f.reason for f in m.failures if f.stage == "release-check"]
    assert len(failures) == 1 and reason in failures[0], failures
    assert not (run_dir.ledgers_dir / "site-1.jsonl").exists(), "a rejected reply's ledger is never filed"
    assert (run_dir.path / "metrics.json").is_file()


def _negative_counts(res):
    res.metrics.update(tp=res.metrics["tp"] + res.metrics["fn"] + 1, fn=-1)


def _fidelity_without_n_real(res):
    res.extra["fidelity"] = {"pooled": {"frechet_distance": 1.0, "precision": 0.5, "recall": 0.5, "density": 1.0,
                                        "coverage": 0.5, "encoder": "x", "n_synthetic": 10}}


def _auroc_above_one(res):
    res.metrics["auroc"] = 7.0


def _histogram_of_other_images(res):
    res.histogram = ScoreHistogram(res.histogram.positive + 1, res.histogram.negative)


def _foreign_baseline(res):
    res.extra["utility"] = {"leak": {"n": 1}}


EVAL_ATTACKS = {
    "negative confusion counts summing to n": (_negative_counts, "non-negative"),
    "fidelity block without n_real": (_fidelity_without_n_real, "n_real"),
    "AUROC 7": (_auroc_above_one, "outside [0, 1]"),
    "histogram of other images": (_histogram_of_other_images, "do not add up"),
    "an unknown baseline": (_foreign_baseline, "utility may hold only"),
}


@pytest.mark.parametrize("attack", list(EVAL_ATTACKS))
@pytest.mark.slow  # over 1 s: outside the quick subset
def test_a_hostile_evaluation_costs_only_its_site(federation, attack):
    cfg, run_dir, registry, sites, keys = federation
    mutate, reason = EVAL_ATTACKS[attack]
    m = run_substitution(cfg, HostileTransport(sites, keys, eval_attack=mutate), run_dir, registry)
    assert m.pooled is not None and m.pooled.n == sum(len(s.data.test) for s in sites if s.name != "site-1")
    failures = [f.reason for f in m.failures if f.stage == "evaluation-check"]
    assert len(failures) == 1 and reason in failures[0], failures


def test_an_impostor_cannot_replace_the_accepted_sites_ledger(federation):
    cfg, run_dir, registry, sites, keys = federation

    class Impostor(LocalTransport):
        def release(self, request, record):
            out = super().release(request, record)
            honest = next(r for r in out if r.site == "site-0")
            fake = copy.deepcopy(honest)
            fake.meta["ledger"][-1]["n_images"] = 1  # breaks the signature: rejected
            return [honest, fake, *[r for r in out if r.site != "site-0"]]

    stored_before = None
    m = run_substitution(cfg, Impostor(sites), run_dir, registry)
    stored_before = (run_dir.ledgers_dir / "site-0.jsonl").read_bytes()
    assert m.sites["site-0"].release is not None
    assert any("a second release from the same site" in f.reason for f in m.failures)
    honest_ledger = sites[0].state.ledger().entries()[:2]
    assert stored_before == b"".join(canonical(e) + b"\n" for e in honest_ledger)


# ---- the ledger: rollback, key substitution, duplicate keys, type confusion --------------------


@pytest.fixture
def site_ledger(tmp_path):
    key_path, pub = generate_keypair("site-a", tmp_path / "state")
    key = load_private_key(key_path)
    led = Ledger(tmp_path / "state" / "ledger.jsonl", "site-a")
    for i in range(4):
        mech = Mechanism(1.0 + i / 10, 0.05, 100)
        led.append({"type": DP_TRAINING, "run_id": f"r{i}", "dataset_fingerprint": "f" * 64,
                    "mechanism": {**mech.to_dict(), "delta": DELTA, "accountant": "rdp", "max_grad_norm": 1.0,
                                  "secure_rng": False}, "epsilon": epsilon([mech], DELTA)}, key)
    return led, key, pub


def _truncate(led, n):
    lines = led.path.read_bytes().split(b"\n")[:-1]
    led.path.write_bytes(b"".join(line + b"\n" for line in lines[:len(lines) - n]))


@pytest.mark.parametrize("deleted", [1, 2, 4])
def test_a_truncated_ledger_is_detected_everywhere(site_ledger, deleted):
    led, key, pub = site_ledger
    copy_before = led.path.with_name("copy.jsonl")
    copy_before.write_bytes(led.path.read_bytes())
    _truncate(led, deleted)
    # the chain alone still verifies: the head is what shows the deletion
    assert verify_ledger(led.path, load_public_key(pub)).ok
    with pytest.raises(LedgerError, match="truncated or rolled back"):
        led.checked_entries(load_public_key(pub))
    with pytest.raises(LedgerError, match="truncated or rolled back"):
        led.append({"type": EVALUATION, "run_id": "r9", "mechanism": None, "epsilon": None}, key)
    runner = CliRunner()
    result = runner.invoke(app, ["audit", "verify", str(led.path), "-k", str(pub)])
    assert result.exit_code == 1 and "does not extend" in result.output
    led.head_path.unlink()  # without the head, an earlier copy still catches it
    result = runner.invoke(app, ["audit", "verify", str(led.path), "-k", str(pub), "--since", str(copy_before)])
    assert result.exit_code == 1 and "truncated or rolled back" in result.output


def test_a_ledger_without_its_head_stops_the_site_until_anchored(site_ledger):
    led, key, pub = site_ledger
    led.head_path.unlink()
    with pytest.raises(LedgerError, match="no signed head"):
        led.checked_entries(load_public_key(pub))
    key_file = pub.with_suffix(".key")
    result = CliRunner().invoke(app, ["audit", "anchor", str(led.path), "--key", str(key_file)])
    assert result.exit_code == 0, result.output
    assert len(led.checked_entries(load_public_key(pub))) == 4


def test_audit_report_trusts_only_the_keys_it_is_given(site_ledger, tmp_path):
    led, key, pub = site_ledger
    # an attacker rewrites the ledger with their own key and drops their .pub beside it
    rogue_key_path, rogue_pub = generate_keypair("site-a", tmp_path / "rogue")
    rogue = Ledger(tmp_path / "run" / "ledgers" / "site-a.jsonl", "site-a")
    rogue.append({"type": EVALUATION, "run_id": "r", "mechanism": None, "epsilon": None},
                 load_private_key(rogue_key_path))
    (tmp_path / "run" / "ledgers" / "site-a.pub").write_bytes(rogue_pub.read_bytes())
    runner = CliRunner()
    beside = runner.invoke(app, ["audit", "report", str(rogue.path), "-o", str(tmp_path / "a1")])
    assert "BESIDE" in beside.output and "KEY NOT INDEPENDENT" in (tmp_path / "a1" / "privacy_audit.md").read_text()
    registry = tmp_path / "keys.yaml"
    registry.write_text(f"site-a: {pub}\n")
    trusted = runner.invoke(app, ["audit", "report", str(rogue.path), "--keys", str(registry), "-o",
                                  str(tmp_path / "a2")])
    assert trusted.exit_code == 1 and "FAILED" in trusted.output
    assert "signature invalid" in (tmp_path / "a2" / "privacy_audit.md").read_text()


def test_a_duplicated_key_line_does_not_verify(site_ledger):
    led, key, pub = site_ledger
    lines = led.path.read_bytes().split(b"\n")
    lines[0] = lines[0].replace(b'{"dataset_fingerprint"', b'{"epsilon":0.5,"dataset_fingerprint"', 1)
    led.path.write_bytes(b"\n".join(lines))
    read = read_ledger(led.path)
    assert any("duplicate key" in p and "epsilon" in p for p in read.problems)
    assert not verify_ledger(led.path, load_public_key(pub)).ok
    assert CliRunner().invoke(app, ["audit", "verify", str(led.path), "-k", str(pub)]).exit_code == 1


@pytest.mark.parametrize("line", [
    b'{"index": NaN}', b'{"index": Infinity}', b'[1, 2]', b'"a string"', b'{"a": 1, "a": 2}',
    b'{"type":"dp-training"}  ', b'{ "type": "dp-training" }', b'\xff\xfe', b'{' * 5000 + b'}' * 5000,
])
def test_malformed_lines_are_findings(tmp_path, line):
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(line + b"\n")
    read = read_ledger(path)
    assert read.problems and not read.entries


CONFUSED = {
    "string index": lambda e: e.update(index="0"),
    "bool index": lambda e: e.update(index=False),
    "zero noise": lambda e: e["mechanism"].update(noise_multiplier=0),
    "negative steps": lambda e: e["mechanism"].update(steps=-5),
    "float steps": lambda e: e["mechanism"].update(steps=10.5),
    "steps 1e9": lambda e: e["mechanism"].update(steps=10**9),
    "string noise": lambda e: e["mechanism"].update(noise_multiplier="1.0"),
    "sample rate 2": lambda e: e["mechanism"].update(sample_rate=2.0),
    "unknown accountant": lambda e: e["mechanism"].update(accountant="magic"),
    "mechanism a list": lambda e: e.update(mechanism=[1, 2]),
    "epsilon a string": lambda e: e.update(epsilon="small"),
    "negative epsilon": lambda e: e.update(epsilon=-1.0),
    "unknown type": lambda e: e.update(type="shred"),
}


@pytest.mark.parametrize("confusion", list(CONFUSED))
def test_type_confused_entries_are_reported_not_raised(site_ledger, confusion):
    led, key, pub = site_ledger
    entries = led.entries()
    CONFUSED[confusion](entries[1])
    entries = _resign_chain(entries, key)  # signed by the site itself: only the content is wrong
    result = verify_entries(entries, load_public_key(pub))
    assert not result.ok and any(c.problems for c in result.checks[1:])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20)
entry_like = st.fixed_dictionaries({}, optional={
    "index": json_values, "type": st.sampled_from(["dp-training", "release", "training", "x"]) | json_values,
    "mechanism": json_values | st.fixed_dictionaries({}, optional={
        "noise_multiplier": json_values, "sample_rate": json_values, "steps": json_values, "delta": json_values,
        "accountant": st.sampled_from(["rdp", "prv"]) | json_values}),
    "epsilon": json_values, "spent": json_values, "hash": json_values, "prev_hash": json_values,
    "signature": json_values})


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(entry_like, max_size=4) | json_values)
@pytest.mark.slow  # over 1 s: outside the quick subset
def test_the_verifier_never_raises(site_ledger, entries):
    _, _, pub = site_ledger
    result = verify_entries(entries, load_public_key(pub))
    assert not result.ok or entries == []


def _good_figures():
    return evaluate_scores(np.array([1, 0, 0, 1]), np.array([0.9, 0.2, 0.6, 0.4]), 0.5, n_boot=0).to_dict()


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.dictionaries(st.sampled_from(list(_good_figures())), json_values, max_size=6),
       st.dictionaries(st.sampled_from(["fidelity", "utility", "error", "other"]), json_values, max_size=3))
@pytest.mark.slow  # over 1 s: outside the quick subset
def test_the_evaluation_check_never_raises(override, extra):
    res = EvalResult("s", {**_good_figures(), **override}, ScoreHistogram(np.array([2, 0, 0]), np.array([0, 2, 0])),
                     extra=extra)
    problem = check_eval_result(res, 3, 10)
    assert problem is None or isinstance(problem, str)


# ---- evaluation: metered, recorded, bound to signed releases -----------------------------------


def test_evaluations_are_metered_and_recorded(federation):
    cfg, run_dir, registry, sites, keys = federation
    from fedsynth.classifier.train import train_classifier
    from fedsynth.protocol import EvaluateRequest

    site = sites[0]
    clf = train_classifier(site.data.train.images, site.data.train.labels, cfg.classifier, arch="small-cnn",
                           resolution=16, device="cpu")
    request = EvaluateRequest("run-x", cfg, clf.header(), clf.state_dict())
    site.evaluate(clf, cfg, request)
    last = site.state.ledger().entries()[-1]
    assert last["type"] == EVALUATION and last["run_id"] == "run-x" and len(last["classifier_sha256"]) == 64
    with pytest.raises(Exception, match="max_evaluations_per_run"):
        site.evaluate(clf, cfg, request)
    site.evaluate(clf, cfg, EvaluateRequest("run-y", cfg, clf.header(), clf.state_dict()))  # another run: allowed


@pytest.mark.slow  # over 1 s: outside the quick subset
def test_fidelity_only_on_images_of_signed_releases(federation):
    cfg, run_dir, registry, sites, keys = federation
    cfg.evaluation.fidelity = True
    strict = sites[0].policy.model_copy(update={"evaluate_unsigned_synthetic": False})
    for s in sites:
        s.policy = strict

    class Swapping(LocalTransport):
        def evaluate(self, request, record):
            request.synthetic_images = request.synthetic_images.copy()
            request.synthetic_images[0] = 255 - request.synthetic_images[0]  # a candidate image slipped in
            return super().evaluate(request, record)

    m = run_substitution(cfg, Swapping(sites), run_dir, registry)
    assert m.fidelity.pooled is None
    errors = [s.evaluation is not None for s in m.sites.values()]
    assert all(errors), "the main evaluation still returns"
    run_dir2 = RunDir.create(cfg)
    registry2 = simulation_registry(cfg, run_dir2.sites_dir)
    honest = [Site(s.data, simulated_site_state(cfg, run_dir2.sites_dir, s.name), None, device="cpu", policy=strict,
                   consortium_keys=registry2) for s in sites]
    m2 = run_substitution(cfg, LocalTransport(honest), run_dir2, registry2)
    assert m2.fidelity.pooled is not None, "the same sample, untouched, traces to the signed releases"


@pytest.mark.slow  # over 1 s: outside the quick subset
def test_an_evaluation_under_dp_returns_noisy_consistent_counts(federation):
    cfg, run_dir, registry, sites, keys = federation
    noisy = sites[0].policy.model_copy(update={"evaluation_epsilon": 1.0})
    for s in sites:
        s.policy = noisy
    m = run_substitution(cfg, LocalTransport(sites), run_dir, registry)
    assert m.pooled is not None and all(s.status == "ok" for s in m.sites.values())
    for s in sites:
        entry = s.state.ledger().entries()[-1]
        assert entry["type"] == "dp-statistic" and entry["details"]["statistic"].startswith("evaluation")
        assert math.isclose(entry["epsilon"], epsilon([Mechanism(entry["mechanism"]["noise_multiplier"], 1.0, 1)],
                                                      entry["mechanism"]["delta"]))
        assert verify_ledger(s.state.ledger_path, load_public_key(s.state.public_key_path)).ok
