"""Synthetic X-rays to a specification: sample one class, edit to another, from a run's generator."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fedsynth.cli import app
from fedsynth.config import load_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from conftest import tiny_overrides

    from fedsynth.simulation import simulate

    cfg = load_config(None, [*tiny_overrides(tmp_path_factory.mktemp("gen")), "evaluation.fidelity=false",
                             "evaluation.site_baselines=false"])
    path, _ = simulate(cfg, engine="inprocess")
    return path.path


def test_generate_samples_the_class_asked_for(run_dir, tmp_path):
    out = tmp_path / "p.npz"
    result = CliRunner().invoke(app, ["generate", str(run_dir), "--site", "site-0", "--label", "pneumonia", "--n", "5",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    with np.load(out) as z:
        assert z["images"].shape == (5, 16, 16) and z["images"].dtype == np.uint8
        assert z["labels"].tolist() == [1] * 5 and bool(z["synthetic"])
    assert out.with_suffix(".png").is_file()


def test_an_edit_reports_its_effect_and_strength_zero_changes_nothing(run_dir, tmp_path):
    runner = CliRunner()
    for strength in ("0", "1"):
        out = tmp_path / f"e{strength}.npz"
        result = runner.invoke(app, ["generate", str(run_dir), "--site", "site-1", "--label", "normal", "--edit-to",
                                     "pneumonia", "--strength", strength, "--n", "4", "--out", str(out)])
        assert result.exit_code == 0, result.output
        report = json.loads(out.with_suffix(".json").read_text())
        assert report["source"] == "normal" and report["target"] == "pneumonia" and report["n"] == 4
        assert report["score_before_mean"] is not None, "the run's classifier scores the edit"
        with np.load(out) as z:
            if strength == "0":
                assert np.array_equal(z["images"], z["source_images"]) and report["ssim_mean"] == pytest.approx(1.0)
            assert z["labels"].tolist() == [1] * 4


@pytest.mark.parametrize("args, message", [
    (["--label", "covid"], "use one of"),
    (["--label", "normal", "--strength", "2", "--edit-to", "pneumonia"], "strength"),
    (["--label", "normal", "--n", "0"], "--n"),
])
def test_bad_requests_are_one_clear_line(run_dir, tmp_path, args, message):
    result = CliRunner().invoke(app, ["generate", str(run_dir), "--site", "site-0", *args, "--out",
                                      str(tmp_path / "x.npz")])
    assert result.exit_code == 2 and message in result.output


def test_a_substitution_run_needs_the_site_named(run_dir, tmp_path):
    result = CliRunner().invoke(app, ["generate", str(run_dir), "--label", "normal", "--out", str(tmp_path / "x.npz")])
    assert result.exit_code == 2 and "--site" in result.output
