"""The run directory: ``<output_dir>/<run-id>/`` with everything a run produces."""

from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsynth.config import RunConfig

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
CLASSIFIER_FILE = "classifier.safetensors"


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _json_safe(obj.item())
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically (temp file + rename), so a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_json_safe(obj), indent=2, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


@dataclass
class RunDir:
    path: Path
    run_id: str

    @classmethod
    def create(cls, config: RunConfig, run_id: str | None = None) -> RunDir:
        run_id = run_id or f"{config.run.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        path = Path(config.run.output_dir) / run_id
        path.mkdir(parents=True, exist_ok=False)
        (path / CONFIG_FILE).write_text(config.to_yaml())
        return cls(path.resolve(), run_id)

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        path = Path(path)
        if not (path / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{path} is not a fedsynth run directory (no {CONFIG_FILE})")
        return cls(path.resolve(), path.name)

    def file(self, name: str) -> Path:
        return self.path / name

    def site_dir(self, site: str) -> Path:
        return self.path / "sites" / site
