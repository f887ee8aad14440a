"""Camera pixels that integrate the light over their area (fill factor), not point samples.

A pixel of linear fill factor a (area a²) centred at x records the mean of the optical intensity
|w|² over the square x + [−a/2, a/2]² (grid pixels).  Two evaluations:

- aligned SLM: |w|² is a trigonometric polynomial with frequencies |k| < N (cycles per N
  pixels), so its samples on the 2x finer grid (the field's spectrum zero-padded to 2N) hold it
  exactly; the box average multiplies frequency k by sinc(a k_x / N) sinc(a k_y / N),
  sinc(t) = sin(πt) / (πt), exact up to rounding;
- rotated SLM: the same transfer in the rotated frame, sinc(a (R k)_x / N) sinc(a (R k)_y / N),
  and the result evaluated at the rotated camera pixels by the non-uniform DFT
  (harness.optics.nufft), exact up to its 1e-6.
"""

from __future__ import annotations

import torch

from harness.optics.functional import per_sample
from harness.optics.nufft import Gridding


def box_averaged_intensity(
    product: torch.Tensor, fill: torch.Tensor, start: int, n: int
) -> torch.Tensor:
    """Mean of |IFFT(product)|² over boxes of side ``fill`` (B,) around the pixels of the n x n
    window at ``start`` of (B, k, N, N) ``product`` (the spectrum times the mask)."""
    N = product.shape[-1]
    fine = product.new_zeros(*product.shape[:-2], 2 * N, 2 * N)
    fine[..., :N, :N] = product
    power = (torch.fft.ifft2(fine) * 4).abs().square()  # |w|² at half-pixel steps
    ky = torch.fft.fftfreq(2 * N, d=0.5 / N, device=power.device, dtype=power.dtype) / N
    kx = torch.fft.rfftfreq(2 * N, d=0.5 / N, device=power.device, dtype=power.dtype) / N
    a = per_sample(fill.to(power))
    transfer = torch.sinc(a * ky[:, None]) * torch.sinc(a * kx[None, :])
    averaged = torch.fft.irfft2(torch.fft.rfft2(power) * transfer, s=power.shape[-2:])
    return averaged[..., 2 * start:2 * (start + n):2, 2 * start:2 * (start + n):2]


def rotated_box_average(
    coefficients: torch.Tensor, fill: torch.Tensor, rotation: torch.Tensor, points: torch.Tensor
) -> torch.Tensor:
    """Box means of |w|² at camera pixels x for a rotated SLM, w(y) = N⁻² Σ_j c_j e^{2πi j·y/N}
    seen at y = Rᵀx (``points``, (G, P, 2)); the box x + [−a/2, a/2]² is rotated in y.

    |w|² = Σ_k p_k e^{2πi k·y/N}, |k| < N, from |w| on the 2x finer grid; the box mean
    multiplies p_k by sinc(a (R k)_x / N) sinc(a (R k)_y / N); the result is evaluated at Rᵀx
    as a type-2 non-uniform DFT of period N and 2N frequencies (at the points 2 Rᵀx of a 2N
    grid).  (B, C, N, N) centred ``coefficients`` -> (B, C, P)."""
    N = coefficients.shape[-1]
    j = torch.remainder(torch.arange(N, device=coefficients.device) - N // 2, 2 * N)
    fine = coefficients.new_zeros(*coefficients.shape[:-2], 2 * N, 2 * N)
    fine[..., j[:, None], j[None, :]] = coefficients
    power = (torch.fft.ifft2(fine) * 4.0).abs().square()  # |w(m / 2)|², N⁻² (2N)² IFFT
    spectrum = torch.fft.fftshift(torch.fft.fft2(power), dim=(-2, -1)) / (2 * N) ** 2
    k = torch.arange(2 * N, device=power.device, dtype=power.dtype) - N
    c, s = (per_sample(f(rotation.to(power))) for f in (torch.cos, torch.sin))
    a = per_sample(fill.to(power))
    kx, ky = k[None, :], k[:, None]
    transfer = torch.sinc(a * (c * kx - s * ky) / N) * torch.sinc(a * (s * kx + c * ky) / N)
    return Gridding(2 * points, 2 * N).interpolate(spectrum * transfer).real
