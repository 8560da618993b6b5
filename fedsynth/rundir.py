"""The run directory, ``<output_dir>/<run-id>/``: the one owner of its layout, readers and writers.

Every file a run produces is named here and written or read through :class:`RunDir`;
nothing else in fedsynth builds a path inside a run directory. Ground floor: it imports
only the config, the errors and the metrics schema, so the classifier, the evaluation,
the server, the web app and the benchmarks can all use it.

Layout::

    config.yaml                the resolved run config
    metrics.json               RunMetrics (fedsynth.metrics_schema), validated on write and read
    histograms.json            the sites' class-wise score histograms behind the pooled figures
    classifier.safetensors     the classifier, its header in the file's metadata
    generator.safetensors      federated mode: the global generator
    report.html                the self-contained report
    grids/synthetic_<site>.png what each site released, per class
    releases/<site>.npz        the synthetic images as released (uint8; never a real image)
    ledgers/<site>.jsonl, .pub each site's signed ledger as received, and the key the server trusts
    sites/<site>/              a simulated site's own folder: keys, ledger, generator, real-vs-synthetic grids
    checkpoints/               federated modes: weights and loop state after every round
"""

from __future__ import annotations

import json
import math
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from fedsynth.config import RunConfig, load_yaml
from fedsynth.errors import ConfigError, FedsynthError
from fedsynth.metrics_schema import SCHEMA_VERSION, RunMetrics

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
HISTOGRAMS_FILE = "histograms.json"
CLASSIFIER_FILE = "classifier.safetensors"
GENERATOR_FILE = "generator.safetensors"
REPORT_FILE = "report.html"
GRIDS_DIR = "grids"
RELEASES_DIR = "releases"
LEDGERS_DIR = "ledgers"
SITES_DIR = "sites"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_STATE_FILE = "state.json"


class RunDirError(FedsynthError):
    """A folder is not a (finished) run directory, or one of its files cannot be read."""


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
    """Write JSON atomically (temp file + rename), so a crash never leaves half a file.
    NaN and infinities become null."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_json_safe(obj), indent=2, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


OPTIONAL_SECTIONS = ("fidelity", "utility", "alignment", "rounds", "timings")
"""Parts of metrics.json a reader can do without: a damaged one is left out, with a note."""


def salvage_metrics(data: Any, origin: str = METRICS_FILE) -> tuple[RunMetrics, list[str]]:
    """Validate a metrics document, leaving out (and naming) any optional section that does
    not match the schema; RunDirError when the rest does not."""
    problems = []
    if isinstance(data, dict):
        data = dict(data)
        for section in OPTIONAL_SECTIONS:
            if section not in data:
                continue
            field = RunMetrics.model_fields[section]
            try:
                RunMetrics.__pydantic_validator__.validate_assignment(
                    RunMetrics.model_construct(), section, data[section])
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or section
                problems.append(f"{origin}: {where} does not match the metrics schema ({first['msg']}); "
                                f"that part is not shown")
                data[section] = field.get_default(call_default_factory=True)
    return parse_metrics(data, origin), problems


def parse_metrics(data: Any, origin: str = METRICS_FILE) -> RunMetrics:
    """Validate a metrics document; RunDirError naming the first wrong field otherwise."""
    if not isinstance(data, dict):
        raise RunDirError(f"{origin} is not a fedsynth metrics document")
    version = data.get("schema_version", 0)
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise RunDirError(f"{origin} has schema version {version}, newer than this fedsynth reads "
                          f"({SCHEMA_VERSION}); upgrade fedsynth to read it")
    try:
        return RunMetrics.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<top level>"
        raise RunDirError(f"{origin} does not match the metrics schema: {where}: {first['msg']}") from None


@dataclass
class RunDir:
    path: Path
    run_id: str

    # ---- opening ---------------------------------------------------------------------------
    @classmethod
    def create(cls, config: RunConfig, run_id: str | None = None) -> RunDir:
        run_id = run_id or f"{config.run.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        path = Path(config.run.output_dir) / run_id
        path.mkdir(parents=True, exist_ok=False)
        (path / CONFIG_FILE).write_text(config.to_yaml())
        return cls(path.resolve(), run_id)

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """A run directory, finished or not (it has a config.yaml)."""
        path = Path(path)
        if not (path / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{path} is not a fedsynth run directory (no {CONFIG_FILE})")
        return cls(path.resolve(), path.name)

    @classmethod
    def open_finished(cls, path: str | Path) -> RunDir:
        """A finished run (it has a metrics.json); RunDirError saying what it is otherwise."""
        path = Path(path)
        if not path.is_dir():
            raise RunDirError(f"{path} is not a directory")
        if not (path / METRICS_FILE).is_file():
            what = "an unfinished run" if (path / CONFIG_FILE).is_file() else "not a fedsynth run directory"
            raise RunDirError(f"{path} is {what} (no {METRICS_FILE}); a finished run is needed")
        return cls(path.resolve(), path.name)

    # ---- paths -----------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def sites_dir(self) -> Path:
        """Where simulated sites keep their own state and outputs."""
        return self.path / SITES_DIR

    def site_dir(self, site: str) -> Path:
        return self.sites_dir / site

    def grid_path(self, name: str) -> Path:
        return self.path / GRIDS_DIR / f"synthetic_{name}.png"

    def grid_files(self) -> list[Path]:
        folder = self.path / GRIDS_DIR
        return sorted(folder.glob("*.png")) if folder.is_dir() else []

    def site_grid_files(self) -> list[Path]:
        """The sites' real-vs-synthetic grids (real pixels: simulation only)."""
        return sorted(self.sites_dir.glob("*/real_vs_synthetic_*.png")) if self.sites_dir.is_dir() else []

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    # ---- checkpoints (federated modes) -----------------------------------------------------
    def save_checkpoint(self, round_no: int, weights: dict[str, np.ndarray], state: dict[str, Any]) -> None:
        """The global weights after ``round_no`` and the round loop's state (written last: the
        state names a complete checkpoint)."""
        from safetensors.numpy import save_file

        self.checkpoint_dir.mkdir(exist_ok=True)
        save_file({k: np.ascontiguousarray(v) for k, v in weights.items()},
                  str(self.checkpoint_dir / f"round-{round_no:03d}.safetensors"))
        write_json(self.checkpoint_dir / CHECKPOINT_STATE_FILE, state)

    def load_checkpoint(self) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """(loop state, weights) of the last completed round, or None before the first."""
        from safetensors.numpy import load_file

        path = self.checkpoint_dir / CHECKPOINT_STATE_FILE
        if not path.is_file():
            return None
        state = json.loads(path.read_text())
        return state, load_file(str(self.checkpoint_dir / f"round-{int(state['completed']):03d}.safetensors"))

    # ---- config and metrics ----------------------------------------------------------------
    def read_config(self) -> dict[str, Any]:
        """The resolved config as a mapping (the run's own record, not re-validated)."""
        try:
            data = load_yaml((self.path / CONFIG_FILE).read_text(), CONFIG_FILE)  # bounded: no aliases
        except (OSError, UnicodeDecodeError, ConfigError) as err:
            raise RunDirError(f"{CONFIG_FILE} could not be read ({err})") from None
        return data if isinstance(data, dict) else {}

    def write_metrics(self, metrics: RunMetrics) -> Path:
        checked = parse_metrics(metrics.model_dump(mode="json"), "the metrics being written")
        return write_json(self.path / METRICS_FILE, checked.model_dump(mode="json"))

    def _metrics_data(self) -> tuple[Any, Path]:
        path = self.path / METRICS_FILE
        if not path.is_file():
            raise RunDirError(f"{self.path} has no {METRICS_FILE}: the run has not finished")
        try:
            return json.loads(path.read_text()), path
        except (OSError, ValueError) as err:
            raise RunDirError(f"{path} cannot be read: {err}") from None

    def read_metrics(self) -> RunMetrics:
        """metrics.json, validated by its schema (RunDirError naming the first wrong field)."""
        data, path = self._metrics_data()
        return parse_metrics(data, str(path))

    def read_metrics_salvaged(self) -> tuple[RunMetrics, list[str]]:
        """metrics.json for a reader that can do without a damaged optional section (the report):
        the validated document and a note for every section left out."""
        data, path = self._metrics_data()
        return salvage_metrics(data, METRICS_FILE)

    def write_histograms(self, histograms: dict[str, Any]) -> Path:
        return write_json(self.path / HISTOGRAMS_FILE, histograms)

    def read_histograms(self) -> dict[str, Any]:
        """The score histograms; {} when the run has none (a RunDirError when unreadable)."""
        path = self.path / HISTOGRAMS_FILE
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise RunDirError(f"{HISTOGRAMS_FILE} could not be read ({err})") from None
        return data if isinstance(data, dict) else {}

    # ---- releases --------------------------------------------------------------------------
    def save_release(self, name: str, images_u8: np.ndarray, labels: np.ndarray, phantom: bool) -> Path:
        """Keep what a site released: ``releases/<name>.npz`` (uint8 images, labels), the content
        its signature covers (with alignment on, the classifier trained on these after the
        intensity mapping recorded in metrics.json). Synthetic images only; real images never
        reach the server."""
        out = self.path / RELEASES_DIR
        out.mkdir(exist_ok=True)
        path = out / f"{name}.npz"
        np.savez_compressed(path, images=images_u8, labels=labels.astype(np.uint8), synthetic=np.array(True),
                            phantom=np.array(phantom))
        return path

    def load_releases(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The synthetic images a run pooled, by site (or "global" for the federated generator)."""
        out = {}
        for path in sorted((self.path / RELEASES_DIR).glob("*.npz")):
            with np.load(path, allow_pickle=False) as z:
                out[path.stem] = (z["images"], z["labels"].astype(np.int64))
        return out

    # ---- ledgers ---------------------------------------------------------------------------
    @property
    def ledgers_dir(self) -> Path:
        return self.path / LEDGERS_DIR

    def ledger_files(self) -> list[tuple[str, Path, Path | None]]:
        """(site, ledger copy, public key or None) for every ledger the run kept."""
        if not self.ledgers_dir.is_dir():
            return []
        out = []
        for ledger in sorted(self.ledgers_dir.glob("*.jsonl")):
            pub = ledger.with_suffix(".pub")
            out.append((ledger.stem, ledger, pub if pub.is_file() else None))
        return out

    def keep_ledger(self, site: str, lines: bytes, public_key: Path) -> None:
        """Store a site's ledger as received (its canonical lines) and the public key the server
        registered for it, for ``fedsynth audit verify``. ``site`` must be a registered name:
        a name from the wire never becomes a path otherwise."""
        self.ledgers_dir.mkdir(exist_ok=True)
        (self.ledgers_dir / f"{site}.jsonl").write_bytes(lines)
        shutil.copyfile(public_key, self.ledgers_dir / f"{site}.pub")


def load_releases(run_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return RunDir(Path(run_dir), Path(run_dir).name).load_releases()
