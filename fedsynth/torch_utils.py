"""Torch helpers every layer uses: the device, seeded blocks, and state dicts as they travel.

Ground floor: it imports only torch and numpy, so data, privacy, generators, the classifier
and the server can all share it without importing each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for ``cuda`` without one is an error, not a fallback."""
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
