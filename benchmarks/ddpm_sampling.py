"""DDPM sampling speed on this machine: why the CPU samples in channels-last batches of 32.

Times the benchmark's UNet (widths [32, 64, 64], 32 px, untrained: speed does not depend
on the weights) on one thread, as one simulated site gets: forward passes per image by
batch size and memory layout, then ``sample()`` end to end (25 DDIM steps with guidance)
at its default batch and at 256, the old default.

    .venv/bin/python -m benchmarks.ddpm_sampling

Writes benchmarks/results/ddpm_sampling.json.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from benchmarks.common import record_start, write_result
from fedsynth.config import DDPMSection
from fedsynth.generators.ddpm import DiffusionGenerator


def forward_rate(net: torch.nn.Module, batch: int, channels_last: bool, repeats: int = 5) -> float:
    x = torch.randn(batch, 1, 32, 32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    t, y = torch.full((batch,), 500), torch.zeros(batch, dtype=torch.long)
    with torch.inference_mode():
        net(x, t, y)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            net(x, t, y)
    return repeats * batch / (time.perf_counter() - start)


def main() -> None:
    record_start()
    torch.set_num_threads(1)
    gen = DiffusionGenerator(DDPMSection(block_out_channels=[32, 64, 64], sampling_steps=25), resolution=32,
                             device="cpu")
    gen.fitted = True  # untrained weights sample at the same speed
    forwards = []
    for channels_last in (False, True):
        net = gen._sampling_net() if channels_last else gen.denoiser.eval()
        for batch in (16, 32, 64, 128, 512):
            forwards.append({"channels_last": channels_last, "batch": batch,
                             "images_per_s": forward_rate(net, batch, channels_last)})
            print(forwards[-1], flush=True)
    sampling = []
    for batch in (None, 256):
        gen.config.sample_batch_size = batch
        start = time.perf_counter()
        gen.sample(256, np.arange(256) % 2)
        sampling.append({"sample_batch_size": batch or "default (32 on CPU)",
                         "images_per_s": 256 / (time.perf_counter() - start)})
        print(sampling[-1], flush=True)
    write_result("ddpm_sampling", {"threads": 1, "resolution": 32, "block_out_channels": [32, 64, 64],
                                   "sampling_steps": 25, "forward": forwards, "sample": sampling})


if __name__ == "__main__":
    main()
