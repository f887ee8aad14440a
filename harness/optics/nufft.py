"""Non-uniform discrete Fourier transforms on the centred N x N grid (kernel gridding, as
FINUFFT), for an SLM rotated against the optical axes.

Points y = (y1, y2) are centred grid coordinates (pixels, period N), frequencies j centred
integers in [−N/2, N/2)², as the 4F model's centred layout (index j + N/2).

    type 1 (spread)       F(j) = Σ_p v_p e^{−2πi j·y_p / N}          points -> grid
    type 2 (interpolate)  w(y) = Σ_j c_j e^{+2πi j·y / N}            grid -> points

Both run on a fine grid of M = σN cells (σ = 2) of width h = 1/σ with the "exponential of
semicircle" kernel of FINUFFT (Barnett et al. 2019), φ(z) = exp(β(√(1 − z²) − 1)),
z = 2d / (w h), w = 7 fine cells wide, β = 2.30 w, and deconvolve by its transform ĝ(j)
(quadrature): the relative error is about 1e-6 (tests/optics/test_rotation.py), the float32
floor.  Spreading: F(j) = (h / ĝ(j1)) (h / ĝ(j2)) FFT_M(Σ_p v_p φφ(m h − y_p))[j mod M];
interpolation: w(y) = Σ_m φφ(y − m h) IFFT_M(c_j h² / (ĝ(j1) ĝ(j2))) M².

The point weights form one sparse matrix W (points x M² fine cells, one block per group of
points): type 2 is the CSR product W x, type 1 Wᵀ v (a scatter-add for a few columns, a product
with the transposed CSR matrix for many: :data:`TRANSPOSE_COLUMNS`), and each is the other's
backward, so both are differentiable with respect to the values and coefficients (the points,
and so the rotation angle, carry no gradient).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

#: Kernel width in fine cells and the oversampling σ = M / N (FINUFFT: w = 7 at σ = 2 for a
#: relative error near 1e-6, the float32 floor), β = 2.30 w.
WIDTH = 7
OVERSAMPLING = 2
_BETA = 2.30 * WIDTH
#: Columns (real values per point) from which Wᵀ v is a product with the transposed CSR matrix,
#: built once per Gridding by a stable sort of its entries by cell, instead of a scatter-add.
#: The sort costs about a scatter-add of 8 columns (CPU), the product a tenth of one per column:
#: a batch sharing one angle (the emulated bench, an evaluation) has 2 B k columns and gains (1.3
#: to 1.6x a step at n = 32, k = 4), per-sample angles (training) have 2 or 2k and would not.
TRANSPOSE_COLUMNS = 16


def kernel(z: torch.Tensor) -> torch.Tensor:
    """φ(z) = exp(β (√(1 − z²) − 1)) on |z| <= 1, zero outside ("exponential of semicircle")."""
    inside = z.abs() <= 1
    return torch.where(inside, torch.exp(_BETA * (torch.sqrt((1 - z * z).clamp_min(0)) - 1)), 0)


def kernel_transform(j: torch.Tensor, N: int) -> torch.Tensor:
    """ĝ(j) = ∫ φ(2d / (w h)) e^{−2πi j d / N} dd for the kernel in coarse pixels d
    (h = 1 / σ), by Gauss-Legendre quadrature (φ is even: a cosine transform)."""
    nodes, weights = np.polynomial.legendre.leggauss(4 * WIDTH + 32)
    half = WIDTH / OVERSAMPLING / 2  # the support |d| <= w h / 2
    z = torch.as_tensor(nodes, dtype=torch.float64)
    phi = kernel(z) * torch.as_tensor(weights, dtype=torch.float64)
    angle = 2 * math.pi * j.double()[:, None] * half * z / N
    return (half * (phi * torch.cos(angle)).sum(-1)).to(j.dtype)


class Gridding:
    """The sparse gridding matrix of a set of points, ready for both transforms.

    ``points``: (G, P, 2) centred coordinates (x, y) in pixels, G = 1 (shared) or one set per
    sample; ``N`` the grid size.
    """

    def __init__(self, points: torch.Tensor, N: int):
        self.N, self.M = N, OVERSAMPLING * N
        self.groups, self.count = points.shape[0], points.shape[1]
        dtype = torch.float64 if points.dtype == torch.float64 else torch.float32
        points = points.detach().to(dtype)
        h, M, device = 1.0 / OVERSAMPLING, self.M, points.device
        taps = torch.arange(-(WIDTH // 2), WIDTH // 2 + 1, device=device)
        nearest = torch.round(points / h).long()  # (G, P, 2) fine indices
        index = nearest[..., None] + taps  # (G, P, 2, T)
        weight = kernel((index.to(dtype) * h - points[..., None]) * (2 / (WIDTH * h)))
        index = torch.remainder(index, M)
        cells = index[..., 1, :, None] * M + index[..., 0, None, :]  # (G, P, T, T) fine cell
        group = torch.arange(self.groups, device=device)[:, None, None, None] * (M * M)
        self.cells = (cells + group).reshape(-1)
        self.weights = (weight[..., 1, :, None] * weight[..., 0, None, :]).reshape(-1)
        self.taps = len(taps) ** 2
        self._matrix_t: torch.Tensor | None = None
        with warnings.catch_warnings():  # "sparse CSR support is in beta": a product is all
            warnings.simplefilter("ignore", UserWarning)  # this module uses
            self.matrix = torch.sparse_csr_tensor(
                torch.arange(0, self.cells.numel() + 1, self.taps, device=device),
                self.cells, self.weights, (self.groups * self.count, self.groups * M * M),
                check_invariants=False,
            )
        # Deconvolution per axis, D(j) = h / ĝ(j), and the fine-grid index j mod M of each j.
        j = torch.arange(N, device=device, dtype=dtype) - N // 2
        self.deconvolve = h / kernel_transform(j.cpu(), N).to(device)
        self.fine_index = torch.remainder(j.long(), M)

    def _grouped(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """(B, C, ...) -> (G, B / G · C, ...): samples of one group side by side."""
        if batch % self.groups:
            raise ValueError(f"{self.groups} point sets for a batch of {batch}")
        x = x.reshape(self.groups, batch // self.groups, *x.shape[1:])
        return x.reshape(self.groups, x.shape[1] * x.shape[2], *x.shape[3:])

    def spread(self, values: torch.Tensor) -> torch.Tensor:
        """Type 1: (B, C, P) complex values at the points -> (B, C, N, N) centred spectrum."""
        batch, channels = values.shape[:2]
        grouped = self._grouped(values, batch)  # (G, D, P)
        columns = grouped.shape[1]
        real = torch.view_as_real(grouped.permute(0, 2, 1).contiguous())  # (G, P, D, 2)
        real = real.reshape(self.groups * self.count, columns * 2)
        fine = _Apply.apply(real, self, True)  # (G M², 2D)
        fine = fine.reshape(self.groups, self.M, self.M, columns, 2).permute(0, 3, 1, 2, 4)
        spectrum = torch.fft.fft2(torch.view_as_complex(fine.contiguous()))
        idx = self.fine_index
        spectrum = spectrum[..., idx, :][..., idx]
        spectrum = spectrum * (self.deconvolve[:, None] * self.deconvolve).to(spectrum.real)
        return spectrum.reshape(batch, channels, self.N, self.N)

    def interpolate(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Type 2: (B, C, N, N) centred coefficients -> (B, C, P) values at the points."""
        batch, channels = coefficients.shape[:2]
        grouped = self._grouped(coefficients, batch)  # (G, D, N, N)
        columns, M, idx = grouped.shape[1], self.M, self.fine_index
        scaled = grouped * (self.deconvolve[:, None] * self.deconvolve).to(grouped.real)
        fine = scaled.new_zeros(self.groups, columns, M, M)
        fine[..., idx[:, None], idx[None, :]] = scaled
        fine = torch.fft.ifft2(fine) * (M * M)
        real = torch.view_as_real(fine.permute(0, 2, 3, 1).contiguous())  # (G, M, M, D, 2)
        real = real.reshape(self.groups * M * M, columns * 2)
        points = _Apply.apply(real, self, False).reshape(self.groups, self.count, columns, 2)
        values = torch.view_as_complex(points.contiguous()).permute(0, 2, 1)
        return values.reshape(batch, channels, self.count)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """W x: (G M², D) real fine-grid columns -> (G P, D) at the points (CSR product)."""
        return self.matrix @ x

    def apply_transpose(self, v: torch.Tensor) -> torch.Tensor:
        """Wᵀ v: (G P, D) real values at the points -> (G M², D): a scatter-add, or from
        :data:`TRANSPOSE_COLUMNS` columns on, a product with the transposed CSR matrix (the same
        sums in the same order of points)."""
        if v.shape[1] >= TRANSPOSE_COLUMNS:
            return self.transposed() @ v
        out = v.new_zeros(self.groups * self.M * self.M, v.shape[1])
        source = v.repeat_interleave(self.taps, dim=0).mul_(self.weights.to(v)[:, None])
        return out.index_add_(0, self.cells, source)

    def transposed(self) -> torch.Tensor:
        """Wᵀ as a CSR matrix (G M² x G P), its entries sorted by cell (stable: by point within
        a cell); built on first use and kept."""
        if self._matrix_t is None:
            cells, size = self.cells, self.groups * self.M * self.M
            order = torch.argsort(cells, stable=True)
            rows = cells.new_zeros(size + 1)
            rows[1:] = torch.cumsum(torch.bincount(cells, minlength=size), 0)
            points = torch.div(order, self.taps, rounding_mode="floor")
            with warnings.catch_warnings():  # sparse CSR "beta" warning, as in __init__
                warnings.simplefilter("ignore", UserWarning)
                self._matrix_t = torch.sparse_csr_tensor(
                    rows, points, self.weights[order], (size, self.groups * self.count),
                    check_invariants=False,
                )
        return self._matrix_t


class _Apply(torch.autograd.Function):
    """W x (``transpose`` False) or Wᵀ x of a :class:`Gridding`; the backward is the other one."""

    @staticmethod
    def forward(ctx, x, grid: Gridding, transpose: bool):
        ctx.grid, ctx.transpose = grid, transpose
        return grid.apply_transpose(x) if transpose else grid.apply(x)

    @staticmethod
    def backward(ctx, grad):
        grid = ctx.grid
        return (grid.apply(grad) if ctx.transpose else grid.apply_transpose(grad)), None, None
