"""Toy plug-ins: what a user's own package provides (see harness/plugins.py)."""

from __future__ import annotations

import torch
from torch import nn

from augment.policy import Policy
from baselines.finetune import finetune
from harness.data.sources import ImageSet
from harness.models import DigitalNet, frame_norm


def policy(strengths=None, config=None, ranges=None, per_channel_noise=False) -> Policy:
    """Defocus only, under the plug-in's own name."""
    return Policy("toy-defocus", "physics", ("defocus",), strengths, config, ranges,
                  per_channel_noise)  # fmt: skip


def network(in_channels: int) -> DigitalNet:
    """A pooled linear feature map: the smallest digital network."""
    trunk = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(16 * in_channels, 24),
                          nn.ReLU())  # fmt: skip
    return DigitalNet(frame_norm(in_channels), trunk, 24)


def method(model, pool, val, config=None, seed=0, **kwargs):
    """Fine-tuning of the head, called by its plug-in name."""
    result = finetune(model, pool, val, config, seed, mode="head", **kwargs)
    result.metrics["toy"] = True
    return result


def source(size: int, data_root=None, download: bool = True) -> ImageSet:
    """Two classes: a bright square top-left or bottom-right, 60 images each."""
    images = torch.zeros(120, 1, size, size)
    half = size // 2
    images[:60, :, :half, :half] = 1.0
    images[60:, :, half:, half:] = 1.0
    images += 0.05 * torch.rand(images.shape, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(120) // 60
    return ImageSet(images.clamp(0, 1), labels, ["top-left", "bottom-right"], "toy", "tests")


def bad_source(size: int, data_root=None, download: bool = True) -> ImageSet:
    """A source that ignores ``size`` (simgap refuses it)."""
    return source(2 * size)


def raising(*args, **kwargs):
    """A plug-in that fails when called (any kind): its error must reach the user as one line."""
    raise ValueError("toy plug-in refuses\nsecond line of the traceback text")
