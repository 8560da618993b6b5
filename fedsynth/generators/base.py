"""The generator interface every family implements (scikit-learn style).

    gen = build_generator(config.generator, resolution=64, seed=0)
    report = gen.fit(images, labels)          # images (N, S, S) float32 in [0, 1]
    fake = gen.sample(100, labels=1)          # (100, S, S) float32 in [0, 1]

Labels are class indices into the generator's label set (``classes``; by default
normal / pneumonia, or e.g. normal / bacteria / virus: ``data.label_set``).
    gen.save("gen.safetensors"); gen2 = load_generator("gen.safetensors")

Inputs are validated at the door with messages that name the argument.
"""

from __future__ import annotations

import inspect
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel
from torch.utils.data import DataLoader, TensorDataset

from fedsynth.config import check_label_set
from fedsynth.data.dataset import CLASS_NAMES, check_training_data, label_message
from fedsynth.progress import ProgressFn
from fedsynth.torch_utils import resolve_device

if TYPE_CHECKING:
    from fedsynth.privacy.dp import DPPlan

FAMILIES: dict[str, type[Generator]] = {}
"""Every generator family by name, filled as each family's class is defined (the registry)."""


def file_sha256(path: str | Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class NotFittedError(RuntimeError):
    """``sample`` or ``save`` on a generator that was neither fitted nor loaded."""


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


def check_strength(strength: Any) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
        raise ValueError(f"strength must be a number in [0, 1]; got {strength!r}")
    return float(strength)


def check_sample_request(n: Any, labels: Any, classes: tuple[str, ...] = CLASS_NAMES) -> np.ndarray:
    """``labels`` (one class index, or one per image) as ``n`` class indices of ``classes``."""
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer; got {n!r}")
    if np.isscalar(labels) and not isinstance(labels, (int, np.integer)):
        raise ValueError(f"{label_message(classes)}; got {labels!r}")
    arr = np.full(int(n), int(labels)) if np.isscalar(labels) else np.asarray(labels).reshape(-1)
    if arr.shape != (int(n),):
        raise ValueError(f"labels must be one class or {n} classes; got shape {arr.shape}")
    if not np.isin(arr, np.arange(len(classes))).all():
        raise ValueError(label_message(classes))
    return arr.astype(np.int64)


class Generator(ABC):
    """A class-conditional image generator for one-channel square images.

    A family subclasses this with ``config_class`` set to its config section (whose
    ``family`` literal names it): the class registers itself in :data:`FAMILIES`, and
    saving and rebuilding its config is done here, once, for every family."""

    config_class: ClassVar[type[BaseModel]]
    family: ClassVar[str] = ""
    statistics_only: ClassVar[bool] = False
    """True for a family whose only contact with the images is one noisy statistic
    (``release_statistic``); in federated mode the sites send it and the server fits the
    generator to the pooled statistic (``fit_statistic``)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        section = cls.__dict__.get("config_class")
        if section is None or inspect.isabstract(cls):
            return
        cls.family = section.model_fields["family"].default
        if cls.family in FAMILIES and FAMILIES[cls.family] is not cls:
            raise TypeError(f"generator family {cls.family!r} is registered twice")
        FAMILIES[cls.family] = cls

    def __init__(self, resolution: int, seed: int = 0, device: str = "auto",
                 classes: tuple[str, ...] = CLASS_NAMES) -> None:
        self.classes = check_label_set(classes)  # the label set it conditions on (data.label_set)
        self.num_classes = len(self.classes)
        self.resolution = int(resolution)
        self.seed = int(seed)
        self.device = resolve_device(device)
        self.fitted = False
        self.init_info: dict[str, Any] | None = None  # the warm start it began from (generator.init), if any
        # classes (indices into ``classes``) the fit left out, with the reason; empty except where a
        # family leaves one out (dp-merf: a class whose noisy target carries no signal)
        self.unfitted_reasons: dict[int, str] = {}

    @property
    def fitted_classes(self) -> tuple[int, ...]:
        """The classes the fit learnt (indices into ``classes``): only these are sampled and released."""
        return tuple(c for c in range(self.num_classes) if c not in self.unfitted_reasons)

    def released_class_counts(self) -> tuple[float, ...]:
        """Each class's image count as the fit's released statistic estimates it (noisy under DP);
        only a statistics-only family (``statistics_only``) has one."""
        raise NotImplementedError(f"{self.family} releases no class counts")

    @classmethod
    def plan_privacy(cls, privacy: Any, n: int, config: Any, epochs: int | None = None,
                     calibrate_epochs: int | None = None, reserved: tuple = ()) -> DPPlan:
        """The DP mechanism a fit on ``n`` private images runs, fixed before any step: by default
        DP-SGD over ``epochs`` (the config's) at the config's batch size, its noise calibrated
        for ``calibrate_epochs`` in all (every round of a federated run), composed with the
        ``reserved`` mechanisms (the site's noisy class counts) within the target."""
        from fedsynth.privacy.dp import plan_training

        return plan_training(privacy, n, config.batch_size, epochs or config.epochs, calibrate_epochs, reserved)

    @abstractmethod
    def fit(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        privacy: DPPlan | None = None,
        progress: ProgressFn | None = None,
    ) -> FitReport:
        """Train on (images, labels); with a DP plan, every module that sees real images trains with DP-SGD."""

    @abstractmethod
    def sample(self, n: int, labels: int | np.ndarray, seed: int | None = None) -> np.ndarray: ...

    def edit(self, n: int, source: int, target: int, strength: float,
             seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``n`` synthetic images of class ``source`` and the same images changed towards class
        ``target`` by ``strength`` in [0, 1] (0: unchanged), keeping what the family can keep of
        their anatomy. Synthetic only: no family edits a real image."""
        raise NotImplementedError(f"the {self.family} generator does not edit images")

    def config_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the model before loading weights."""
        return {"family": self.family, "config": self.config.model_dump(mode="json"), "seed": self.seed,
                "classes": list(self.classes)}

    @classmethod
    def from_config_dict(cls, config: dict[str, Any], resolution: int, device: str = "auto") -> Generator:
        # files written before the registry keyed the section by the family's name
        section = config.get("config") or config.get(cls.family) or config[cls.family.replace("-", "_")]
        # files written before label sets conditioned on the binary set
        return cls(cls.config_class.model_validate(section), resolution=resolution, seed=int(config.get("seed", 0)),
                   device=device, classes=tuple(config.get("classes") or CLASS_NAMES))

    def check_samples(self, n: Any, labels: Any) -> np.ndarray:
        """A sample request's labels as class indices of this generator's label set."""
        return check_sample_request(n, labels, self.classes)

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
        images, labels = check_training_data(images, labels, self.resolution, self.classes)
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
            raise NotFittedError(f"this {self.family} generator is not fitted yet: call fit() first, or "
                                 "load_generator() on a saved one")

    # ---- warm starts from public data ----------------------------------------------------------
    def warm_state(self) -> dict[str, np.ndarray]:
        """The weights a warm start carries (by default everything a federated round trains)."""
        return self.training_state()

    def load_warm_state(self, state: dict[str, np.ndarray]) -> None:
        self.load_training_state(state)
        self.fitted = False  # a warm start is a starting point, not a trained generator

    def save_pretrained(self, path: str | Path, public_source: str) -> str:
        """Write a warm-start checkpoint of this (publicly trained) generator; returns its SHA-256."""
        from safetensors.numpy import save_file

        if not public_source.strip():
            raise ValueError("public_source: name the public data this generator was trained on")
        meta = {"fedsynth_pretrained": "1", "family": self.family, "resolution": str(self.resolution),
                "config": json.dumps(self.config_dict()), "public_source": public_source,
                "classes": json.dumps(list(self.classes))}
        save_file({k: np.ascontiguousarray(v) for k, v in self.warm_state().items()}, str(path), metadata=meta)
        return file_sha256(path)

    def load_pretrained(self, path: str | Path) -> dict[str, Any]:
        """Start from a warm-start checkpoint; returns what the ledger records about it."""
        from safetensors import safe_open
        from safetensors.numpy import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"generator.init: no warm-start checkpoint at {path}")
        try:
            with safe_open(str(path), framework="numpy") as fh:
                meta = fh.metadata() or {}
        except Exception:  # not a safetensors file at all
            meta = {}
        if meta.get("fedsynth_pretrained") != "1":
            raise ValueError(f"generator.init: {path.name} is not a fedsynth warm-start checkpoint "
                             "(make one with `fedsynth generator pretrain`)")
        if meta.get("family") != self.family or meta.get("resolution") != str(self.resolution):
            raise ValueError(f"generator.init: {path.name} is a {meta.get('family')} generator at "
                             f"{meta.get('resolution')} px; this run trains {self.family} at {self.resolution} px")
        theirs = tuple(json.loads(meta.get("classes") or "null") or CLASS_NAMES)
        if theirs != self.classes:
            raise ValueError(f"generator.init: {path.name} conditions on {list(theirs)}; this run's label set is "
                             f"{list(self.classes)}")
        try:
            self.load_warm_state(load_file(str(path)))
        except (ValueError, RuntimeError, KeyError) as err:
            raise ValueError(f"generator.init: {path.name} does not fit this generator's architecture "
                             f"({err})") from None
        return {"sha256": file_sha256(path), "public_source": meta.get("public_source", ""), "file": path.name}

    def load_unfitted_classes(self, text: str | None, source: str) -> None:
        """Restore ``unfitted_reasons`` from a saved file's ``unfitted_classes`` field (a JSON object
        mapping class names to reasons; absent in files saved before it existed: nothing left out).
        The file is untrusted: a malformed field is refused with what is wrong, never half-applied."""
        if text is None:
            self.unfitted_reasons = {}
            return
        try:
            value = json.loads(text)
        except ValueError:
            raise ValueError(f"{source}: unfitted_classes is not JSON") from None
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(r, str) and len(r) <= 1000
                                                  for k, r in value.items()):
            raise ValueError(f"{source}: unfitted_classes must map class names to reasons (strings)")
        unknown = sorted(set(value) - set(self.classes))
        if unknown:
            raise ValueError(f"{source}: unfitted_classes names {unknown[0]!r}, not one of {list(self.classes)}")
        self.unfitted_reasons = {self.classes.index(k): r for k, r in value.items()}

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        self._require_fitted()
        meta = {"family": self.family, "resolution": str(self.resolution), "config": json.dumps(self.config_dict()),
                # the classes the fit left out travel with the weights: a loaded generator refuses them too
                "unfitted_classes": json.dumps({self.classes[c]: r for c, r in sorted(self.unfitted_reasons.items())})}
        state = {k: v.detach().cpu().contiguous() for k, v in self.sampling_state().items()}
        save_file(state, str(path), metadata=meta)
