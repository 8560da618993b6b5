"""Warm starts from public data: a checkpoint made on phantoms, loaded at fit, recorded in the ledger."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from fedsynth.cli import app
from fedsynth.config import load_config
from fedsynth.generators import build_generator


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("pre") / "gan16.safetensors"
    result = CliRunner().invoke(app, ["generator", "pretrain", "--out", str(out), "--n", "60", "--set",
                                      "data.resolution=16", "--set", "generator.epochs=1", "--set",
                                      "generator.base_channels=8", "--set", "generator.latent_dim=16"])
    assert result.exit_code == 0, result.output
    return out


def _gan(checkpoint, **over):
    cfg = load_config(None, ["data.resolution=16", "generator.base_channels=8", "generator.latent_dim=16",
                             f"generator.init={checkpoint}", *[f"{k}={v}" for k, v in over.items()]])
    return cfg


def test_a_warm_start_begins_from_the_checkpoint_and_names_it(checkpoint):
    from safetensors.numpy import load_file

    gen = build_generator(_gan(checkpoint).generator, 16, seed=5, device="cpu")
    saved = load_file(str(checkpoint))
    state = gen.warm_state()
    assert all(np.array_equal(state[k], saved[k]) for k in saved)
    assert not gen.fitted, "a warm start is a starting point, not a trained generator"
    assert len(gen.init_info["sha256"]) == 64 and "phantoms" in gen.init_info["public_source"]


def test_a_checkpoint_for_another_generator_is_refused(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="32 px"):
        build_generator(_gan(checkpoint, **{"data.resolution": 32}).generator, 32, device="cpu")
    with pytest.raises(ValueError, match="architecture"):
        build_generator(_gan(checkpoint, **{"generator.base_channels": 16}).generator, 16, device="cpu")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a fedsynth warm-start checkpoint"):
        build_generator(_gan(junk).generator, 16, device="cpu")
    with pytest.raises(FileNotFoundError, match="no warm-start checkpoint"):
        build_generator(_gan(tmp_path / "missing.safetensors").generator, 16, device="cpu")


def test_pretraining_on_site_data_needs_a_stated_public_source(tmp_path, phantoms16):
    from fedsynth.data.dataset import save_npz

    src = tmp_path / "public.npz"
    save_npz(phantoms16, str(src))
    result = CliRunner().invoke(app, ["generator", "pretrain", "--out", str(tmp_path / "x.safetensors"), "--data",
                                      str(src), "--set", "data.resolution=16"])
    assert result.exit_code == 2 and "--public-source" in result.output


def test_the_ledger_records_the_warm_start(checkpoint, tmp_path):
    from conftest import tiny_overrides

    from fedsynth.simulation import simulate

    cfg = load_config(None, [*tiny_overrides(tmp_path), f"generator.init={checkpoint}", "evaluation.fidelity=false",
                             "evaluation.site_baselines=false"])
    run_dir, m = simulate(cfg, engine="inprocess")
    assert all(s.status == "ok" for s in m.sites.values())
    import json

    first = json.loads((run_dir.ledgers_dir / "site-0.jsonl").read_text().splitlines()[0])
    assert first["details"]["init"]["sha256"] == build_generator(cfg.generator, 16).init_info["sha256"]
    assert "phantoms" in first["details"]["init"]["public_source"]
