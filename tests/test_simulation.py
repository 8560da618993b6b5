"""End to end: `fedsynth simulate` on Flower's simulation engine (Ray), tiny phantoms."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedsynth.cli import app
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow


def test_simulate_stops_cleanly_when_no_site_can_release(tmp_path):
    args = ["simulate"]
    for o in tiny_overrides(tmp_path) + ["release.min_class_images=10000"]:
        args += ["--set", o]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "min_sites" in result.output and "min_class_images" in result.output


def test_simulate_runs_the_federation_and_leaves_no_process_behind(tmp_path):
    """`fedsynth simulate` as a user runs it (its own process, Flower's Ray engine): every site
    releases, the run directory holds what the README promises, the printed table has per-site and
    pooled AUROC, anyone can score images with the run's classifier, and Ray's workers, raylet and
    GCS go with the command: nothing keeps running after it. One federation for all of it, since
    each costs a Ray start."""
    import os
    import secrets
    import subprocess
    import sys
    import time

    mark = secrets.token_hex(8)
    env = {**os.environ, "FEDSYNTH_TEST_MARK": mark}
    args = [sys.executable, "-m", "fedsynth.cli", "simulate"]
    for o in tiny_overrides(tmp_path):
        args += ["--set", o]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr

    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1
    run = runs[0]
    metrics = json.loads((run / "metrics.json").read_text())
    assert [s["status"] for s in metrics["sites"].values()] == ["ok", "ok", "ok"]
    assert metrics["pooled"]["auroc"] is not None and len(metrics["pooled"]["auroc_ci"]) == 2
    for name in ("config.yaml", "classifier.safetensors", "grids/synthetic_site-2.png",
                 "sites/site-1/real_vs_synthetic_pneumonia.png"):
        assert (run / name).is_file(), name
    shown = done.stdout + done.stderr  # the console writes to stderr
    assert "pooled" in shown and "AUROC" in shown and "PHANTOM" in shown
    assert "report.html" in shown.strip().splitlines()[-1]

    from fedsynth.data.dataset import save_npz
    from fedsynth.data.phantom import make_phantoms

    npz = tmp_path / "mine.npz"
    save_npz(make_phantoms(5, 40, seed=9), str(npz))
    scored = CliRunner().invoke(app, ["predict", str(run), str(npz), "--out", str(tmp_path / "s.csv")])
    assert scored.exit_code == 0, scored.output
    assert len((tmp_path / "s.csv").read_text().strip().splitlines()) == 6

    def marked() -> list[int]:
        out = []
        for environ in Path("/proc").glob("[0-9]*/environ"):
            try:
                if f"FEDSYNTH_TEST_MARK={mark}".encode() in environ.read_bytes():
                    out.append(int(environ.parent.name))
            except OSError:
                continue
        return out

    deadline = time.monotonic() + 20
    while marked() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert marked() == [], "processes of the run are still alive after the command returned"
