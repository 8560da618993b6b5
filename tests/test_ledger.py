"""The signed ledger: tampering of any kind is visible; epsilon is recomputed, not trusted."""

import json
import os
import stat

import pytest
from typer.testing import CliRunner

from fedsynth.cli import app
from fedsynth.privacy.accounting import Mechanism, epsilon
from fedsynth.privacy.keys import generate_keypair, load_private_key, load_public_key
from fedsynth.privacy.ledger import (
    DP_TRAINING,
    GENESIS,
    RELEASE,
    Ledger,
    LedgerError,
    read_ledger,
    spent_epsilon,
    verify_ledger,
)

MECH = Mechanism(1.2, 0.05, 300)
DELTA = 1e-5


def _dp_body(mech=MECH, eps=None):
    return {
        "type": DP_TRAINING,
        "run_id": "r1",
        "dataset_fingerprint": "f" * 64,
        "mechanism": {**mech.to_dict(), "delta": DELTA, "accountant": "rdp", "max_grad_norm": 1.0,
                      "secure_rng": False},
        "epsilon": epsilon([mech], DELTA) if eps is None else eps,
    }


def _release_body(entries):
    return {
        "type": RELEASE,
        "run_id": "r1",
        "content_hash": "c" * 64,
        "n_images": 10,
        "training_entry": entries[-1]["hash"],
        "budget": {"epsilon": 30.0, "delta": DELTA},
        "spent": {"epsilon": spent_epsilon(entries, DELTA, "rdp"), "delta": DELTA, "accountant": "rdp"},
    }


@pytest.fixture
def keys(tmp_path):
    key, pub = generate_keypair("site-a", tmp_path / "keys")
    other_key, other_pub = generate_keypair("site-b", tmp_path / "keys")
    return load_private_key(key), load_public_key(pub), load_private_key(other_key), other_pub, pub


@pytest.fixture
def ledger(tmp_path, keys):
    key = keys[0]
    led = Ledger(tmp_path / "ledger.jsonl", "site-a")
    led.append(_dp_body(), key)
    led.append(_release_body(led.entries()), key)
    led.append(_dp_body(Mechanism(2.0, 0.1, 100)), key)
    return led


def test_a_good_ledger_verifies_and_recomputes_epsilon(ledger, keys):
    result = verify_ledger(ledger.path, keys[1])
    assert result.ok, result.failures()
    entries = ledger.entries()
    assert [e["index"] for e in entries] == [0, 1, 2]
    assert entries[0]["prev_hash"] == GENESIS and entries[1]["prev_hash"] == entries[0]["hash"]
    assert result.checks[0].recomputed_epsilon == pytest.approx(entries[0]["epsilon"])
    # the release's "spent" is the composition of the DP entries before it, recomputed too
    assert result.checks[1].recomputed_epsilon == pytest.approx(entries[0]["epsilon"])
    assert all(e["site"] == "site-a" and "opacus" in e["software"] for e in entries)


def test_one_changed_byte_is_detected(ledger, keys):
    raw = ledger.path.read_bytes()
    i = raw.index(b'"noise_multiplier":1.2') + len(b'"noise_multiplier":1.')
    ledger.path.write_bytes(raw[:i] + b"3" + raw[i + 1 :])  # 1.2 -> 1.3
    result = verify_ledger(ledger.path, keys[1])
    assert not result.ok
    problems = " ".join(result.failures())
    assert "content changed" in problems and "differs from the accountant" in problems


def test_a_byte_that_breaks_json_is_detected(ledger, keys):
    raw = bytearray(ledger.path.read_bytes())
    raw[0] = ord("x")  # the first entry no longer parses
    ledger.path.write_bytes(bytes(raw))
    result = verify_ledger(ledger.path, keys[1])
    assert not result.ok and "line 1: not a valid entry" in " ".join(result.problems)
    assert any("chain broken" in p for p in result.failures())  # and what followed no longer chains


def test_a_byte_changed_inside_a_key_name_is_detected(ledger, keys):
    raw = bytearray(ledger.path.read_bytes())
    raw[5] = ord("}")  # inside the first key's name: still valid JSON, different content
    ledger.path.write_bytes(bytes(raw))
    result = verify_ledger(ledger.path, keys[1])
    assert not result.ok and "content changed" in " ".join(result.checks[0].problems)


def test_a_deleted_middle_entry_breaks_the_chain(ledger, keys):
    lines = ledger.path.read_bytes().splitlines(keepends=True)
    ledger.path.write_bytes(lines[0] + lines[2])
    result = verify_ledger(ledger.path, keys[1])
    assert not result.ok
    assert any("chain broken" in p for p in result.failures())
    assert any("an entry is missing" in p for p in result.failures())


def test_a_swapped_key_fails_every_signature(ledger, keys):
    result = verify_ledger(ledger.path, load_public_key(keys[3]))
    assert not result.ok
    assert all("signature invalid" in " ".join(c.problems) for c in result.checks)


def test_an_entry_resigned_by_someone_else_is_rejected(ledger, keys, tmp_path):
    """Edit an entry and fix its hash, signing with another key: the registered key rejects it."""
    from fedsynth.privacy.keys import sign
    from fedsynth.privacy.ledger import canonical, entry_hash

    entries = ledger.entries()
    forged = dict(entries[2], epsilon=0.5)
    forged["hash"] = entry_hash(forged)
    forged["signature"] = sign(keys[2], forged["hash"].encode())
    ledger.path.write_bytes(b"".join(canonical(e) + b"\n" for e in [*entries[:2], forged]))
    result = verify_ledger(ledger.path, keys[1])
    assert [c.ok for c in result.checks] == [True, True, False]
    assert "signature invalid" in " ".join(result.checks[2].problems)
    assert "differs from the accountant" in " ".join(result.checks[2].problems)


def test_a_dishonest_epsilon_is_flagged_even_when_signed(tmp_path, keys):
    led = Ledger(tmp_path / "l.jsonl", "site-a")
    led.append(_dp_body(eps=1.0), keys[0])  # the true epsilon of MECH is far above 1
    result = verify_ledger(led.path, keys[1])
    assert not result.ok and "stored epsilon 1.0 differs" in result.failures()[0]


def test_a_torn_last_line_is_reported_and_blocks_appends(ledger, keys):
    with ledger.path.open("ab") as fh:
        fh.write(b'{"type":"dp-training","index":3,"epsi')  # a crash mid-write
    before = ledger.path.read_bytes()
    read = read_ledger(ledger.path)
    assert read.torn_last_line and len(read.entries) == 3
    result = verify_ledger(ledger.path, keys[1])
    assert not result.ok and "torn last line" in " ".join(result.problems)
    with pytest.raises(LedgerError, match="torn last line"):
        ledger.append(_dp_body(), keys[0])
    assert ledger.path.read_bytes() == before, "a ledger is never rewritten"


def test_appends_are_whole_lines_and_fsynced(tmp_path, keys, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    led = Ledger(tmp_path / "l.jsonl", "site-a")
    led.append(_dp_body(), keys[0])
    assert synced, "every append is fsynced"
    raw = led.path.read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    json.loads(raw)


def test_unknown_entry_type_refused(tmp_path, keys):
    with pytest.raises(LedgerError, match="unknown ledger entry type"):
        Ledger(tmp_path / "l.jsonl", "s").append({"type": "party"}, keys[0])


def test_keys_cli_and_audit_cli(tmp_path, ledger, keys):
    runner = CliRunner()
    out = tmp_path / "k"
    res = runner.invoke(app, ["keys", "generate", "--site", "site-z", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert stat.S_IMODE((out / "site-z.key").stat().st_mode) == 0o600
    again = runner.invoke(app, ["keys", "generate", "--site", "site-z", "--out", str(out)])
    assert again.exit_code == 2 and "refusing to replace" in again.output

    ok = runner.invoke(app, ["audit", "verify", str(ledger.path), "--public-key", str(keys[4])])
    assert ok.exit_code == 0 and "VERIFIED" in ok.output
    wrong = runner.invoke(app, ["audit", "verify", str(ledger.path), "--public-key", str(keys[3])])
    assert wrong.exit_code == 1 and "FAILED" in wrong.output

    report = runner.invoke(app, ["audit", "report", str(ledger.path), "-k", str(keys[4]), "-o", str(tmp_path / "a")])
    assert report.exit_code == 0, report.output
    md = (tmp_path / "a" / "privacy_audit.md").read_text()
    assert "VERIFIED" in md and "Budget: epsilon 30" in md and "| 0 |" in md
    assert "<table>" in (tmp_path / "a" / "privacy_audit.html").read_text()
