"""Camera model: optical intensity -> normalized camera frame in [0, 1].

Per pixel, with y the optical intensity times the exposure (1 = full scale), P the photo-electrons
at full scale (full well x exposure), G the relative gain, V the vignetting/PRNU gain map:

    e   = Poisson(V * y * P) + dark + N(0, read^2)        electrons (see electron_noise)
    adu = clip(G * e / P, 0, 1) * (2^bits - 1)            rounded (straight-through in training)
    out = adu / (2^bits - 1)

so for an ideal gain the normalized output has mean y and variance  a*y + b  with a = 1/P and
b = read^2 / P^2 (+ 1/(12 (2^bits-1)^2) from quantization), the Poisson-Gaussian model of
Foi et al. 2008.  Noise is drawn from an explicit ``torch.Generator``; samples enter as detached
residuals, so the gradient of the expected value flows through (straight-through estimator).
Fields left ``None`` in the imperfections are ideal (no noise, no quantization, unit gain).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel, ConfigDict, Field

from harness import native

if TYPE_CHECKING:
    from harness.optics import Imperfections


class CameraConfig(BaseModel):
    """Optical-to-camera geometry and exposure; noise lives in ``Imperfections``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    exposure: float = Field(1.0, gt=0, description="intensity scale: 1 maps an input of 1 to full scale")
    binning: int = Field(1, ge=1, description="camera pixel = binning x binning input-plane pixels")


class Clip(torch.autograd.Function):
    """clamp(y, lo, hi) (``lo`` None: no lower bound) with torch's gradient, ∂L/∂y where
    lo < y < hi, in one pass on CPU (harness.native): torch's comparison + where backward costs
    ~2 ns an element there, ~250 µs for a batch of 32 x 4 frames of 32 x 32."""

    @staticmethod
    def forward(ctx, y, lo, hi):
        ctx.save_for_backward(y)
        ctx.bounds = (-math.inf if lo is None else lo, hi)
        return y.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        lo, hi = ctx.bounds
        fused = native.kernels_for(y)
        if fused is not None:  # the gradient of a sum arrives expanded: the kernel wants memory
            return fused.clip_backward(y, grad.contiguous(), lo, hi), None, None
        return torch.where((y > lo) & (y < hi), grad, 0.0), None, None


def clip(y: torch.Tensor, lo: float | None, hi: float) -> torch.Tensor:
    return Clip.apply(y, lo, hi)


def _per_sample(value: torch.Tensor, ndim: int = 4) -> torch.Tensor:
    """Reshape a (B,) parameter to broadcast over (B, k, H, W)."""
    return value.reshape(value.shape[0], *([1] * (ndim - 1)))


def straight_through(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Forward ``target``, backward identity with respect to ``value``."""
    return value + (target - value).detach()


def vignetting_map(strength: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Radial fall-off gain 1 - v (r / r_corner)^2 as (B, 1, H, W)."""
    ys = torch.linspace(-1.0, 1.0, height, device=strength.device, dtype=strength.dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=strength.device, dtype=strength.dtype)
    r2 = (ys[:, None] ** 2 + xs[None, :] ** 2) / 2.0  # 1 at the corners
    return 1.0 - _per_sample(strength) * r2


#: Shot noise is drawn exactly (Poisson) below this many expected electrons in a pixel and as its
#: Gaussian limit N(λ, λ) above, where the skewness 1/√λ < 0.22 is all that is dropped; mean and
#: variance stay exact, so var = a·y + b holds everywhere.  On CPU torch.poisson costs ~40 ns a
#: pixel and randn ~4 ns; the emulated bench (harness.bench) keeps exact Poisson for every pixel.
GAUSSIAN_SHOT_NOISE_ABOVE = 20.0


def electron_noise(
    expected: torch.Tensor,
    read: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Electrons read out for λ >= 0 expected photo-electrons and read noise r (e⁻ rms,
    broadcastable, or None): Poisson(λ) + N(0, r²).  Pixels with λ below
    :data:`GAUSSIAN_SHOT_NOISE_ABOVE` get an exact Poisson draw plus r N(0, 1); above it, the
    Gaussian limit and the read noise are one draw, λ + √(λ + r²) N(0, 1)."""
    normal = torch.randn(expected.shape, generator=generator, device=expected.device,
                         dtype=expected.dtype)
    variance = expected.clone() if read is None else expected + read * read
    counts = variance.sqrt_().mul_(normal).add_(expected)
    low = torch.nonzero((expected < GAUSSIAN_SHOT_NOISE_ABOVE).reshape(-1)).squeeze(1)
    if low.numel():
        exact = torch.poisson(expected.reshape(-1)[low], generator=generator)
        if read is not None:
            exact += read.expand(expected.shape).reshape(-1)[low] * normal.reshape(-1)[low]
        counts.reshape(-1)[low] = exact
    return counts


class Camera(torch.nn.Module):
    """Sensor model applied to (B, k, H, W) optical intensities."""

    def __init__(self, config: CameraConfig | None = None):
        super().__init__()
        self.config = config or CameraConfig()

    def forward(
        self,
        intensity: torch.Tensor,
        imp: Imperfections | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        y = intensity if self.config.exposure == 1.0 else intensity * self.config.exposure
        if self.config.binning > 1:
            y = torch.nn.functional.avg_pool2d(y, self.config.binning)
        if imp is None:  # optical intensities are >= 0: an ideal sensor only saturates
            return clip(y, None, 1.0)

        gain_map = None
        if imp.vignetting is not None:
            gain_map = vignetting_map(imp.vignetting.to(y), y.shape[-2], y.shape[-1])
        if imp.prnu is not None:
            prnu = imp.prnu.to(y)
            gain_map = prnu if gain_map is None else gain_map * prnu
        if gain_map is not None:
            y = y * gain_map

        if imp.photons is not None:
            photons = _per_sample(imp.photons.to(y))
            electrons = y.clamp_min(0.0) * photons
            read = None if imp.read_noise is None else _per_sample(imp.read_noise.to(y))
            noisy = electron_noise(electrons.detach(), read, generator)
            electrons = straight_through(electrons, noisy)
            if imp.dark_offset is not None:
                electrons = electrons + _per_sample(imp.dark_offset.to(y))
            y = electrons / photons
        elif imp.read_noise is not None or imp.dark_offset is not None:
            raise ValueError("read_noise/dark_offset need photons (electrons at full scale)")

        if imp.gain is not None:
            y = y * _per_sample(imp.gain.to(y))
        y = clip(y, 0.0, 1.0)
        if imp.bit_depth is not None:
            levels = _per_sample(2.0 ** imp.bit_depth.to(y) - 1.0)
            y = straight_through(y, torch.round(y * levels) / levels)
        return y
