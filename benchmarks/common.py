"""Helpers shared by the benchmark scripts: where the real data is, what machine ran."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FEDSYNTH_SHARED_DATA", ROOT.parent / "shared" / "data"))
KERMANY_64 = SHARED_DATA / "kermany-pneumonia-64.npz"
RESULTS = ROOT / "benchmarks" / "results"


def require(path: Path) -> Path:
    """Exit cleanly (status 0, a message) when the real data is not on this machine."""
    if not path.is_file():
        print(f"skipped: {path} not found (the benchmarks need the real X-rays in ../shared/data)")
        sys.exit(0)
    return path


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


_COMMIT_AT_START: str | None = None


def record_start() -> None:
    """Pin the commit a benchmark ran on (the tree may move while it runs)."""
    global _COMMIT_AT_START
    _COMMIT_AT_START = git_commit()


def started_at_commit() -> str:
    """The commit pinned by ``record_start`` (the current one if it was not called)."""
    return _COMMIT_AT_START or git_commit()


def write_result(name: str, payload: dict[str, Any]) -> Path:
    from fedsynth.rundir import write_json

    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": started_at_commit(),
        "machine": machine(),
        **payload,
    }
    path = write_json(RESULTS / f"{name}.json", doc)
    print(json.dumps({k: v for k, v in doc.items() if k != "config"}, indent=2)[:4000])
    print(f"wrote {path}")
    return path


def with_ci(value: float | None, ci: list | tuple | None) -> str:
    """A table cell: ``0.913 [0.890, 0.933]``, the bare value without a CI, ``n/a`` without a value."""
    if value is None:
        return "n/a"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and ci[0] is not None else f"{value:.3f}"
