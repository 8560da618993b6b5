"""Image generators behind one interface: ``fit``, ``sample``, ``save``/``load``.

Each family is one module whose class names its config section (``config_class``); the
class registers itself in :data:`FAMILIES` when the module is imported below, so a new
family is one new module and one import here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedsynth.data.dataset import CLASS_NAMES
from fedsynth.generators.base import FAMILIES, FitReport, Generator, NotFittedError
from fedsynth.generators.ddpm import DiffusionGenerator
from fedsynth.generators.gan import ConditionalGAN
from fedsynth.generators.mean_embedding import MeanEmbeddingGenerator
from fedsynth.generators.sd_lora import StableDiffusionLoRA


def build_generator(config: Any, resolution: int, seed: int = 0, device: str = "auto",
                    classes: tuple[str, ...] = CLASS_NAMES) -> Generator:
    """A fresh generator of ``config.family`` (a generator config section), conditioned on the
    label set ``classes`` (``data.label_set``)."""
    family = getattr(config, "family", None)
    if family not in FAMILIES:
        raise ValueError(f"unknown generator family {family!r} (known: {', '.join(FAMILIES)})")
    gen = FAMILIES[family](config, resolution=resolution, seed=seed, device=device, classes=classes)
    if getattr(config, "init", ""):  # a warm start from a checkpoint trained on public data
        gen.init_info = gen.load_pretrained(config.init)
    return gen


def load_generator(path: str | Path, device: str = "auto") -> Generator:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    family = meta.get("family")
    if family not in FAMILIES:
        raise ValueError(f"{path}: not a fedsynth generator file (family {family!r})")
    cls = FAMILIES[family]
    gen = cls.from_config_dict(json.loads(meta["config"]), int(meta["resolution"]), device=device)
    gen.load_unfitted_classes(meta.get("unfitted_classes"), str(path))
    gen.load_sampling_state(load_file(str(path), device=str(gen.device)))
    return gen


__all__ = [
    "FAMILIES",
    "ConditionalGAN",
    "DiffusionGenerator",
    "FitReport",
    "Generator",
    "MeanEmbeddingGenerator",
    "NotFittedError",
    "StableDiffusionLoRA",
    "build_generator",
    "load_generator",
]
