"""The generator interface every family implements (scikit-learn style).

    gen = build_generator(config.generator, resolution=64, seed=0)
    report = gen.fit(images, labels)          # images (N, S, S) float32 in [0, 1]
    fake = gen.sample(100, labels=1)          # (100, S, S) float32 in [0, 1]
    gen.save("gen.safetensors"); gen2 = load_generator("gen.safetensors")

Inputs are validated at the door with messages that name the argument.
"""

from __future__ import annotations

import contextlib
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

ProgressFn = Callable[[int, int, dict[str, float]], None]
"""Called after each epoch with (epoch, total_epochs, metrics)."""


@dataclass
class FitReport:
    family: str
    epochs: int
    steps: int
    seconds: float
    images_seen: int
    history: list[dict[str, float]] = field(default_factory=list)
    privacy: dict[str, Any] | None = None  # filled by DP training: mechanism and epsilon

    @property
    def images_per_second(self) -> float:
        return self.images_seen / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["images_per_second"] = self.images_per_second
        return out


StepFn = Callable[[torch.Tensor, torch.Tensor], dict[str, float]]
"""One optimisation step on a batch (images, labels); returns that step's metrics."""


def run_epochs(family: str, epochs: int, loader: DataLoader, step: StepFn, progress: ProgressFn | None,
               private: bool) -> FitReport:
    """The bookkeeping every family's training loop shares: epochs over the loader, per-epoch
    mean metrics, progress callbacks, throughput. An empty Poisson batch is skipped without
    DP but stepped under DP (``private``), where the noise-only step is part of the mechanism
    the accountant counted. The caller adds the DP result to the report."""
    start = time.perf_counter()
    steps = seen = 0
    history: list[dict[str, float]] = []
    for epoch in range(epochs):
        sums: dict[str, float] = {}
        batches = 0
        for xb, yb in loader:
            if xb.shape[0] == 0 and not private:
                continue
            for name, value in step(xb, yb).items():
                sums[name] = sums.get(name, 0.0) + value
            steps += 1
            seen += xb.shape[0]
            batches += 1
        row = {name: total / max(batches, 1) for name, total in sums.items()}
        row["epoch"] = epoch + 1
        history.append(row)
        if progress is not None:
            progress(epoch + 1, epochs, row)
    return FitReport(family, epochs, steps, time.perf_counter() - start, seen, history)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but no CUDA device is available")
    return torch.device(device)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's RNGs seeded, restoring the caller's RNG state afterwards."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def exchangeable(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A state dict as federated averaging exchanges it: numpy copies, without BatchNorm's
    step counters (integers that mean nothing averaged)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in state.items() if not k.endswith("num_batches_tracked")}


def load_exchangeable(module: torch.nn.Module, weights: dict[str, np.ndarray]) -> None:
    """Load averaged weights into ``module`` (each cast to the module's own dtype and shape)."""
    own = module.state_dict()
    expected = {k for k in own if not k.endswith("num_batches_tracked")}
    if set(weights) != expected:
        missing, extra = sorted(expected - set(weights))[:3], sorted(set(weights) - expected)[:3]
        raise ValueError(f"weights do not fit the model (missing {missing}, unexpected {extra})")
    state = {k: torch.as_tensor(np.asarray(v)).reshape(own[k].shape).to(own[k].dtype) for k, v in weights.items()}
    for k in state:
        if k.endswith("running_var"):  # averaged or DP-noised variances must stay variances
            state[k] = state[k].clamp_min(1e-5)
    module.load_state_dict(state, strict=False)


def check_training_data(images: Any, labels: Any, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 3 or images.shape[1:] != (resolution, resolution):
        raise ValueError(f"images must have shape (N, {resolution}, {resolution}); got {images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be floats in [0, 1]; got dtype {images.dtype}")
    if images.size and (not np.isfinite(images).all() or images.min() < 0 or images.max() > 1):
        raise ValueError("images must be finite and lie in [0, 1]")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},); got {labels.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (normal) or 1 (pneumonia)")
    if images.shape[0] < 2:
        raise ValueError(f"need at least 2 training images; got {images.shape[0]}")
    return images.astype(np.float32), labels.astype(np.int64)


def check_sample_request(n: Any, labels: Any) -> np.ndarray:
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer; got {n!r}")
    arr = np.full(int(n), int(labels)) if np.isscalar(labels) else np.asarray(labels).reshape(-1)
    if arr.shape != (int(n),):
        raise ValueError(f"labels must be one class or {n} classes; got shape {arr.shape}")
    if not np.isin(arr, (0, 1)).all():
        raise ValueError("labels must be 0 (normal) or 1 (pneumonia)")
    return arr.astype(np.int64)


class Generator(ABC):
    """A class-conditional image generator for one-channel square images."""

    family: str = ""

    def __init__(self, resolution: int, seed: int = 0, device: str = "auto") -> None:
        self.resolution = int(resolution)
        self.seed = int(seed)
        self.device = resolve_device(device)
        self.fitted = False

    @abstractmethod
    def fit(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        privacy: Any = None,
        progress: ProgressFn | None = None,
    ) -> FitReport: ...

    @abstractmethod
    def sample(self, n: int, labels: int | np.ndarray, seed: int | None = None) -> np.ndarray: ...

    @abstractmethod
    def config_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the model before loading weights."""

    @abstractmethod
    def sampling_state(self) -> dict[str, torch.Tensor]:
        """The weights needed to sample (what save() writes)."""

    @abstractmethod
    def load_sampling_state(self, state: dict[str, torch.Tensor]) -> None: ...

    @abstractmethod
    def training_state(self) -> dict[str, np.ndarray]:
        """All weights a federated round trains and the server averages."""

    @abstractmethod
    def load_training_state(self, state: dict[str, np.ndarray]) -> None: ...

    def training_loader(self, images: Any, labels: Any, privacy: Any, epochs: int, batch_size: int,
                        drop_last: bool = False) -> DataLoader:
        """The validated training data as every family trains on it: images in [-1, 1] and
        labels, in shuffled batches; under DP in batches of the plan's size, which Opacus
        turns into Poisson samples. Refuses a DP plan made for other data or epochs."""
        images, labels = check_training_data(images, labels, self.resolution)
        if privacy is not None and (privacy.n != len(images) or privacy.epochs != epochs):
            raise ValueError(
                f"privacy: the plan was made for {privacy.n} images and {privacy.epochs} epochs; "
                f"got {len(images)} images and {epochs} epochs"
            )
        x = torch.from_numpy(images)[:, None] * 2.0 - 1.0
        batch = privacy.batch_size if privacy is not None else min(batch_size, len(x))
        return DataLoader(
            TensorDataset(x, torch.from_numpy(labels)),
            batch_size=batch,
            shuffle=privacy is None,
            drop_last=drop_last and privacy is None and len(x) >= 2 * batch,
            generator=torch.Generator().manual_seed(self.seed + 2),
        )

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError(f"this {self.family} generator is not fitted; call fit() or load() first")

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        self._require_fitted()
        meta = {"family": self.family, "resolution": str(self.resolution), "config": json.dumps(self.config_dict())}
        state = {k: v.detach().cpu().contiguous() for k, v in self.sampling_state().items()}
        save_file(state, str(path), metadata=meta)
