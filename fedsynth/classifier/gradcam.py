"""Grad-CAM (Selvaraju et al., 2017) for the pneumonia classifier's one logit.

The map is taken on the model's last convolutional feature map: each channel is weighted
by the spatial mean of the logit's gradient with respect to it, the weighted sum is passed
through a ReLU (only evidence *for* pneumonia is kept), upsampled to the input size and
scaled to [0, 1]. A map of zeros means no region raised the pneumonia score.

The input is scaled exactly as :meth:`Classifier.predict_proba` scales it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fedsynth.classifier.models import ResNet18, SmallCNN, pneumonia_logit


def target_layer(model: nn.Module) -> nn.Module:
    """The module whose output is the last convolutional feature map, before global pooling.

    SmallCNN: the last activation of its last conv block (before that block's max-pool);
    ResNet18: ``layer4``; any other model: its last ``nn.Conv2d``.
    """
    if isinstance(model, SmallCNN):
        blocks = [m for m in model.features if isinstance(m, nn.Sequential)]
        return [m for m in blocks[-1] if isinstance(m, nn.ReLU)][-1]
    if isinstance(model, ResNet18):
        return model.net.layer4
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer; Grad-CAM needs a convolutional model")
    return convs[-1]


def grad_cam(classifier, image_prepared: np.ndarray, layer: nn.Module | None = None) -> np.ndarray:
    """Grad-CAM heat map (S, S) in [0, 1] for one preprocessed image (S, S) in [0, 1].

    ``classifier`` is a :class:`fedsynth.classifier.train.Classifier`; ``image_prepared`` is
    the output of :func:`fedsynth.data.preprocess.prepare` at ``classifier.resolution``.
    """
    image = np.asarray(image_prepared, dtype=np.float32)
    size = classifier.resolution
    if image.shape != (size, size):
        raise ValueError(f"image must have shape ({size}, {size}); got {image.shape}")
    model = classifier.model
    layer = layer if layer is not None else target_layer(model)
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    was_training = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        x = torch.from_numpy(image)[None, None].to(dev) * 2 - 1  # as Classifier.predict_proba
        with torch.enable_grad():
            x.requires_grad_(True)  # so the graph reaches the feature map even with frozen weights
            logit = pneumonia_logit(model(x)).reshape(-1)[0]
            if not captured:
                raise ValueError("the target layer was not used in the forward pass")
            act = captured[-1]
            (grad,) = torch.autograd.grad(logit, act)
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * act).sum(dim=1, keepdim=True)).detach()
        cam = F.interpolate(cam, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
        top = float(cam.max())
        cam = cam / top if top > 0 else torch.zeros_like(cam)
        return cam.clamp(0, 1).cpu().numpy().astype(np.float32)
    finally:
        handle.remove()
        model.train(was_training)
