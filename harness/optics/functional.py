"""Pure functions of the optics and the camera: no state, no parameters, no randomness."""

from __future__ import annotations

import math

import torch

TWO_PI = 2.0 * math.pi


def per_sample(value: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1) to broadcast over (B, k, H, W)."""
    return value.reshape(-1, 1, 1, 1)


def straight_through(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Forward ``target``, backward identity with respect to ``value``."""
    return value + (target - value).detach()


def cis(phase: torch.Tensor, amplitude: torch.Tensor | None = None) -> torch.Tensor:
    """A e^{iφ} = A cos φ + i A sin φ (two vectorized real ops: torch.polar is slower on CPU)."""
    cos, sin = torch.cos(phase), torch.sin(phase)
    if amplitude is not None:
        cos, sin = cos * amplitude, sin * amplitude
    return torch.complex(cos, sin)


def zernike_basis(r: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Zernike terms in the order of ``ZERNIKE_NAMES`` at normalized radius r = ρ / ρ_max:
    2r²−1, r² cos 2θ, r² sin 2θ, (3r³−2r) cos θ, (3r³−2r) sin θ, 6r⁴−6r²+1."""
    r2 = r * r
    coma = 3 * r2 * r - 2 * r
    return (
        2 * r2 - 1,
        r2 * torch.cos(2 * theta),
        r2 * torch.sin(2 * theta),
        coma * torch.cos(theta),
        coma * torch.sin(theta),
        6 * r2 * r2 - 6 * r2 + 1,
    )


def _wrapped(phase: torch.Tensor) -> torch.Tensor:
    """φ − 2π ⌊φ / 2π⌋ in [0, 2π); call without a graph (it works in place on a temporary,
    which torch.remainder cannot)."""
    return phase - torch.floor(phase * (1.0 / TWO_PI)).mul_(TWO_PI)


def wrap_phase(phase: torch.Tensor) -> torch.Tensor:
    """Wrap to [0, 2π); gradient 1 (the wrap is a constant offset, computed without a graph)."""
    with torch.no_grad():
        delta = _wrapped(phase).sub_(phase)
    return phase + delta


def quantize_phase(phase: torch.Tensor, levels) -> torch.Tensor:
    """The SLM level q = round(wrap(φ) L / 2π) mod L of L = ``levels`` equal steps, as the phase
    2π q / L in [0, 2π): a phase within π/L below 2π is level 0 (as ``masks.gray_levels``), not
    a level L that a LUT scale would turn into 2π·scale.  Straight-through gradient (wrap and
    rounding are computed without a graph: d/dφ = 1)."""
    step = TWO_PI / levels
    with torch.no_grad():
        level = torch.remainder((_wrapped(phase) / step).round_(), levels)
        delta = level.mul_(step).sub_(phase)
    return phase + delta


def gaussian_blur_fft(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Circular Gaussian blur of (B, k, N, N) with per-sample σ (pixels), via rFFT:
    X(f) exp(−2π² σ² |f|²)."""
    N = x.shape[-1]
    fy = torch.fft.fftfreq(N, device=x.device, dtype=x.dtype)
    fx = torch.fft.rfftfreq(N, device=x.device, dtype=x.dtype)
    f2 = fy[:, None] ** 2 + fx[None, :] ** 2
    transfer = torch.exp(-2 * math.pi**2 * per_sample(sigma) ** 2 * f2)
    return torch.fft.irfft2(torch.fft.rfft2(x) * transfer, s=x.shape[-2:])


def vignetting_map(strength: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Radial fall-off gain 1 - v (r / r_corner)^2 as (B, 1, H, W)."""
    ys = torch.linspace(-1.0, 1.0, height, device=strength.device, dtype=strength.dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=strength.device, dtype=strength.dtype)
    r2 = (ys[:, None] ** 2 + xs[None, :] ** 2) / 2.0  # 1 at the corners
    return 1.0 - per_sample(strength) * r2
