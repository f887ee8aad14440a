"""Camera model: optical intensity -> normalized camera frame in [0, 1].

Per pixel, with y the optical intensity times the exposure (1 = full scale), P the photo-electrons
at full scale (full well x exposure), G the relative gain, V the vignetting/PRNU gain map:

    e   = Poisson(V * y * P) + dark + N(0, read^2)        electrons (the noise model)
    adu = clip(G * e / P, 0, 1) * (2^bits - 1)            rounded (straight-through in training)
    out = adu / (2^bits - 1)

so for an ideal gain the normalized output has mean y and variance  a*y + b  with a = 1/P and
b = read^2 / P^2 (+ 1/(12 (2^bits-1)^2) from quantization), the Poisson-Gaussian model of
Foi et al. 2008.  Fields left ``None`` in the imperfections are ideal (no noise, no quantization,
unit gain).

One camera, two noise models (how the light on the pixels becomes electrons, e / P):

- :class:`PoissonGaussianNoise` (training, the default): one ``torch.Generator`` for the batch,
  exact Poisson below :data:`GAUSSIAN_SHOT_NOISE_ABOVE` electrons and its Gaussian limit above;
  samples enter as detached residuals, so the gradient of the expected value flows through
  (straight-through estimator).
- :class:`PerFramePoissonNoise` (the emulated bench): exact Poisson in every pixel, each frame
  from its own generator seeded per capture, so a frame does not depend on its batch; the light
  saturates at full well first.  No gradient: the bench is measured, not trained through.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from harness.optics.functional import per_sample, straight_through, vignetting_map
from harness.optics.params import CameraConfig, Imperfections


class Clip(torch.autograd.Function):
    """clamp(y, lo, hi) (``lo`` None: no lower bound) with torch's gradient, ∂L/∂y where
    lo < y < hi, written out as one where (the reference the study tables were made with)."""

    @staticmethod
    def forward(ctx, y, lo, hi):
        ctx.save_for_backward(y)
        ctx.bounds = (-math.inf if lo is None else lo, hi)
        return y.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        lo, hi = ctx.bounds
        return torch.where((y > lo) & (y < hi), grad, 0.0), None, None


def clip(y: torch.Tensor, lo: float | None, hi: float) -> torch.Tensor:
    return Clip.apply(y, lo, hi)


#: Shot noise is drawn exactly (Poisson) below this many expected electrons in a pixel and as its
#: Gaussian limit N(λ, λ) above, where the skewness 1/√λ < 0.22 is all that is dropped; mean and
#: variance stay exact, so var = a·y + b holds everywhere.  torch.poisson is far costlier than
#: randn on CPU, and training draws noise for every frame of every batch; the emulated bench
#: (:class:`PerFramePoissonNoise`) keeps exact Poisson for every pixel.
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


class NoiseModel:
    """The light on the pixels, y (B, k, H, W) after exposure and binning, to the electrons read
    out per electron at full scale, e / P: pixel gain maps, shot, read and dark noise."""

    def __call__(
        self, y: torch.Tensor, imp: Imperfections, generator: torch.Generator | None
    ) -> torch.Tensor:
        raise NotImplementedError


class PoissonGaussianNoise(NoiseModel):
    """Training noise: one generator for the batch, :func:`electron_noise` (exact Poisson at low
    counts, its Gaussian limit above), straight-through gradient.  The gain map V = vignetting ×
    PRNU is formed first, then applied."""

    def __call__(self, y, imp, generator):
        gain_map = None
        if imp.vignetting is not None:
            gain_map = vignetting_map(imp.vignetting.to(y), y.shape[-2], y.shape[-1])
        if imp.prnu is not None:
            prnu = imp.prnu.to(y)
            gain_map = prnu if gain_map is None else gain_map * prnu
        if gain_map is not None:
            y = y * gain_map

        if imp.photons is not None:
            photons = per_sample(imp.photons.to(y))
            electrons = y.clamp_min(0.0) * photons
            read = None if imp.read_noise is None else per_sample(imp.read_noise.to(y))
            noisy = electron_noise(electrons.detach(), read, generator)
            electrons = straight_through(electrons, noisy)
            if imp.dark_offset is not None:
                electrons = electrons + per_sample(imp.dark_offset.to(y))
            y = electrons / photons
        elif imp.read_noise is not None or imp.dark_offset is not None:
            raise ValueError("read_noise/dark_offset need photons (electrons at full scale)")
        return y


class PerFramePoissonNoise(NoiseModel):
    """Bench noise: frame b draws from a generator seeded with ``seeds[b]`` (its capture), exact
    Poisson(V y P) then N(0, 1) for the read noise, e = counts + dark + read · N.  The light is
    clipped at full well first, then multiplied by the vignetting, then by the PRNU map.  The
    batch's ``generator`` is not used."""

    def __init__(self, seeds: Sequence[int]):
        self.seeds = [int(s) for s in seeds]

    def __call__(self, y, imp, generator=None):
        if imp.photons is None:
            raise ValueError("per-frame Poisson noise needs photons (electrons at full scale)")
        if len(self.seeds) != y.shape[0]:
            raise ValueError(f"{len(self.seeds)} frame seeds for a batch of {y.shape[0]}")
        y = clip(y, None, 1.0)  # full-well saturation
        if imp.vignetting is not None:
            y = y * vignetting_map(imp.vignetting.to(y), y.shape[-2], y.shape[-1])
        if imp.prnu is not None:
            y = y * imp.prnu.to(y)
        photons = per_sample(imp.photons.to(y))
        expected = y * photons
        counts = torch.empty_like(expected)
        normal = torch.empty_like(expected) if imp.read_noise is not None else None
        gen = torch.Generator(device=expected.device)
        for row, seed in enumerate(self.seeds):  # noise only; the optics stay batched
            gen.manual_seed(seed)
            counts[row] = torch.poisson(expected[row], generator=gen)
            if normal is not None:
                normal[row].normal_(generator=gen)
        electrons = counts
        if imp.dark_offset is not None:
            electrons = electrons + per_sample(imp.dark_offset.to(y))
        if normal is not None:
            electrons = electrons + normal * per_sample(imp.read_noise.to(y))
        return electrons / photons


class Camera(torch.nn.Module):
    """Sensor model applied to (B, k, H, W) optical intensities: exposure and binning, the noise
    model (:class:`PoissonGaussianNoise` unless another is given), then the ADC (gain, clip to
    full scale, quantization to ``bit_depth`` bits)."""

    def __init__(self, config: CameraConfig | None = None, noise: NoiseModel | None = None):
        super().__init__()
        self.config = config or CameraConfig()
        self.noise = noise or PoissonGaussianNoise()

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
        return adc(self.noise(y, imp, generator), imp)


def adc(y: torch.Tensor, imp: Imperfections) -> torch.Tensor:
    """Gain, clip to [0, 1] and quantization to ``imp.bit_depth`` bits (straight-through)."""
    if imp.gain is not None:
        y = y * per_sample(imp.gain.to(y))
    y = clip(y, 0.0, 1.0)
    if imp.bit_depth is not None:
        levels = per_sample(2.0 ** imp.bit_depth.to(y) - 1.0)
        y = straight_through(y, torch.round(y * levels) / levels)
    return y
