"""Pneumonia classifiers: one grayscale channel in (inputs scaled to [-1, 1]), one logit out
for the binary task, or one logit per class of the label set for a finer task
(``classifier.task: subtype``); :func:`pneumonia_logit` gives every binary consumer (scores,
thresholds, Grad-CAM, calibration) the same one logit from either."""

from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models import resnet18


class SmallCNN(nn.Module):
    """Four conv blocks and global pooling; for 16-32 px images."""

    def __init__(self, width: int = 32, outputs: int = 1):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(
            block(1, width), block(width, 2 * width), block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(4 * width, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.features(x))
        return out.squeeze(1) if out.shape[1] == 1 else out


class ResNet18(nn.Module):
    """torchvision ResNet-18 with a one-channel stem; for 64 px and above.

    Below 128 px the stem is a 3x3 stride-1 conv without max-pooling (the usual
    adaptation to small images), so a 64 px image still reaches the last stage at 8x8.
    """

    def __init__(self, resolution: int, outputs: int = 1):
        super().__init__()
        net = resnet18(weights=None, num_classes=outputs)
        if resolution < 128:
            net.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        else:
            net.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out.squeeze(1) if out.shape[1] == 1 else out


def pneumonia_logit(output: torch.Tensor) -> torch.Tensor:
    """The binary logit of a classifier's output: the output itself for a binary classifier (N,);
    for class logits (N, C) whose class 0 is normal, log(sum of the other classes' odds), i.e.
    logit(1 - p_normal) under the softmax."""
    if output.ndim == 1:
        return output
    return torch.logsumexp(output[:, 1:], dim=1) - output[:, 0]


def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The penultimate-layer features (N, D) of a classifier built here: SmallCNN's pooled conv
    features, ResNet-18's pooled features before ``fc`` (the same for the DP-compatible copies,
    whose norm layers differ but not their structure)."""
    if isinstance(model, SmallCNN):
        return model.features(x).flatten(1)
    if isinstance(model, ResNet18):
        net = model.net
        h = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        h = net.layer4(net.layer3(net.layer2(net.layer1(h))))
        return net.avgpool(h).flatten(1)
    raise TypeError(f"no feature embedding for a {type(model).__name__}")


def build_classifier(arch: str, resolution: int, num_classes: int = 2, width: int = 32) -> nn.Module:
    """A fresh classifier: one logit for two classes (normal / pneumonia), one per class above.
    ``width``: the small CNN's first-block channels (``classifier.width``); resnet18 ignores it."""
    outputs = 1 if num_classes == 2 else num_classes
    if arch == "small-cnn":
        return SmallCNN(width=width, outputs=outputs)
    if arch == "resnet18":
        return ResNet18(resolution, outputs)
    raise ValueError(f"unknown classifier arch {arch!r} (use small-cnn or resnet18)")
