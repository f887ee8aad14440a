"""An independent numpy model of the 4F encoder (imports nothing from harness): each SLM pixel j
at R(θ) j + δ in the Fourier plane, summed directly (a DTFT), for small grids."""

from __future__ import annotations

import numpy as np


def centred(N: int) -> np.ndarray:
    return np.arange(N) - N // 2


def aperture(N: int, fraction: float | None) -> np.ndarray:
    """Circular SLM aperture |j| <= fraction N / 2 (None: the whole SLM)."""
    j = centred(N)
    r = np.hypot(j[None, :], j[:, None]) / (N / 2)
    return np.ones((N, N)) if fraction is None else (r <= fraction).astype(float)


def pixel_positions(N: int, theta: float = 0.0, shift=(0.0, 0.0)) -> tuple[np.ndarray, ...]:
    """(x, y) of every SLM pixel j on the N x N grid, R(θ) j + δ, flattened row-major."""
    jy, jx = np.meshgrid(centred(N), centred(N), indexing="ij")
    c, s = np.cos(theta), np.sin(theta)
    return (c * jx - s * jy + shift[0]).ravel(), (s * jx + c * jy + shift[1]).ravel()


def dtft_intensity(image: np.ndarray, mask: np.ndarray, theta: float = 0.0, shift=(0.0, 0.0),
                   pupil=None, input_phase=None, out_offset=(0.0, 0.0)) -> np.ndarray:
    """|w|² on the n x n window, w(x) = N⁻² Σ_j M_j P(ρ_j) Σ_x u(x) e^{2πi ρ_j·(x_out − x)/N},
    ρ_j = R(θ) j + δ, u = sqrt(image) (times e^{i input_phase(x, y)}), x_out the window pixels
    moved by ``out_offset``; ``pupil(x, y)`` gives the system pupil phase at ρ."""
    n, N = image.shape[-1], mask.shape[-1]
    px, py = pixel_positions(N, theta, shift)
    xy, xx = np.meshgrid(centred(N)[(N - n) // 2:(N - n) // 2 + n],
                         centred(N)[(N - n) // 2:(N - n) // 2 + n], indexing="ij")
    xx, xy = xx.ravel(), xy.ravel()
    kernel = np.exp(-2j * np.pi * (np.outer(px, xx) + np.outer(py, xy)) / N)  # (N², n²)
    u = np.sqrt(np.clip(image, 0, None)).ravel()
    if input_phase is not None:
        u = u * np.exp(1j * input_phase(xx, xy))
    spectrum = kernel @ u
    weights = mask.reshape(-1, N * N) * spectrum
    if pupil is not None:
        weights = weights * np.exp(1j * pupil(px, py))
    ox, oy = out_offset
    out = np.exp(2j * np.pi * (np.outer(px, xx + ox) + np.outer(py, xy + oy)) / N)
    field = (weights @ out) / N**2
    return np.abs(field.reshape(-1, n, n)) ** 2


def fft_intensity(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The aligned system the explicit way: fftshift -> mask -> inverse transform -> |.|²."""
    n, N = image.shape[-1], mask.shape[-1]
    s = (N - n) // 2
    u = np.zeros((N, N))
    u[s:s + n, s:s + n] = np.sqrt(np.clip(image, 0, None))
    spectrum = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(u)))
    field = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(spectrum * mask, axes=(-2, -1))),
                            axes=(-2, -1))
    return np.abs(field[..., s:s + n, s:s + n]) ** 2
