"""Test images shared by the optics and policy tests."""

import torch


def _grid(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates (y, x), each (n, n)."""
    return torch.meshgrid(torch.arange(n).float(), torch.arange(n).float(), indexing="ij")


def gaussian_blob(batch=1, n=32, cx=None, cy=None, sigma=2.0) -> torch.Tensor:
    """(batch, 1, n, n) Gaussian spot of width ``sigma`` px at (cx, cy) (default: centre n/2)."""
    cx = n / 2 if cx is None else cx
    cy = n / 2 if cy is None else cy
    y, x = _grid(n)
    blob = torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
    return blob.expand(batch, 1, n, n).clone()


def centroid(frames: torch.Tensor) -> torch.Tensor:
    """Intensity centroid (x, y) in pixels of each (..., H, W) frame, stacked on the last dim."""
    y, x = _grid(frames.shape[-1])
    total = frames.sum((-1, -2))
    return torch.stack(((frames * x).sum((-1, -2)) / total, (frames * y).sum((-1, -2)) / total), -1)
