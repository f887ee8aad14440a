"""The fused autograd Functions of the 4F model and the batch chunks they work on.

:class:`PhaseField` makes the SLM field A e^{i Q(φ)} with a one-line straight-through backward;
:class:`CroppedIntensity` is the IFFT + crop + |w|² step with a hand-written backward that keeps
only the camera window of the field, and runs in batch chunks sized to stay in cache on CPU.
"""

from __future__ import annotations

import math

import torch

from harness.optics.functional import TWO_PI


class PhaseField(torch.autograd.Function):
    """f = A e^{i Q(φ)} for a real phase φ and a fixed amplitude A, Q(φ) = φ rounded to a multiple
    of 2π / levels (``levels`` None: Q(φ) = φ).  Straight-through: the one-line backward
    ∂L/∂φ = Im(conj(f) ∂L/∂f) = Re f · Im g − Im f · Re g (PyTorch's complex-gradient convention)
    treats Q as the identity."""

    @staticmethod
    def forward(ctx, phase, amplitude, levels=None):
        amplitude = amplitude.to(phase)  # the products are in place: no graph here (hot path)
        if levels is not None:
            phase = torch.round(phase * (levels / TWO_PI)).mul_(TWO_PI / levels)
        field = torch.complex(torch.cos(phase).mul_(amplitude), torch.sin(phase).mul_(amplitude))
        ctx.save_for_backward(field)
        return field

    @staticmethod
    def backward(ctx, grad):
        (field,) = ctx.saved_tensors
        grad_phase = field.real * grad.imag
        return grad_phase.sub_(field.imag * grad.real), None, None


def _sum_to(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a broadcast gradient back to ``shape`` (leading dims and size-1 dims)."""
    lead = grad.dim() - len(shape)
    if lead:
        grad = grad.sum(tuple(range(lead)))
    dims = tuple(i for i, size in enumerate(shape) if size == 1 and grad.shape[i] != 1)
    return grad.sum(dims, keepdim=True) if dims else grad


#: On CPU the fused 4F step works on batch chunks of about this many bytes of complex field, so
#: the product, IFFT and crop of one chunk stay in cache instead of streaming a large batch
#: through memory once per step.  On GPUs the whole batch is one chunk.
CPU_CHUNK_BYTES = 2 << 20


def batch_chunks(shape: torch.Size, device: torch.device) -> list[slice]:
    """Slices of the batch dimension of a (B, k, N, N) complex field, one per chunk."""
    batch = shape[0]
    if device.type != "cpu":
        return [slice(0, batch)]
    per_sample = 8 * math.prod(shape[1:])  # complex64 bytes
    size = max(1, min(batch, CPU_CHUNK_BYTES // per_sample))
    return [slice(i, min(batch, i + size)) for i in range(0, batch, size)]


def _broadcast_4d(a: torch.Size, b: torch.Size) -> torch.Size:
    """Broadcast shape of two operands of a (B, k, N, N) field, by plain tuple arithmetic
    (torch.broadcast_shapes is general and heavy for a call made on every 4F step)."""
    a, b = (1,) * (4 - len(a)) + tuple(a), (1,) * (4 - len(b)) + tuple(b)
    if len(a) != 4 or any(x != y and 1 not in (x, y) for x, y in zip(a, b)):
        raise ValueError(f"expected operands of a (B, k, N, N) field, got {a} and {b}")
    return torch.Size(max(x, y) for x, y in zip(a, b))


def _batched(x: torch.Tensor, batch: int) -> bool:
    """Whether an operand of a (B, k, N, N) field has its own batch dimension."""
    return x.dim() == 4 and x.shape[0] == batch and batch > 1


def _rows(x: torch.Tensor, rows: slice, batch: int) -> torch.Tensor:
    """The chunk ``rows`` of an operand that has the batch dimension, else (or when the chunk is
    the whole batch) the operand itself."""
    return x[rows] if _batched(x, batch) and rows.stop - rows.start < batch else x


def _head(buffer: torch.Tensor, rows: slice) -> torch.Tensor:
    """The first rows of a chunk-sized buffer, as many as the chunk ``rows`` has."""
    size = rows.stop - rows.start
    return buffer if size == buffer.shape[0] else buffer[:size]


class CroppedIntensity(torch.autograd.Function):
    """I = |w|² on the n x n camera window of w = IFFT(S · M), fused and chunked over the batch.

    Backward, with g = ∂L/∂I zero-padded to N x N: PyTorch's complex gradients are
    ∂L/∂M = Σ conj(S) G and ∂L/∂S = Σ conj(M) G with G = FFT(2 w g) / N² (adjoint of the IFFT).
    Since conj(G) = 2 IFFT(conj(w) g), each chunk runs one IFFT of conj(w) g written into the
    window of a zero-padded buffer (zeroed once), multiplies it in place by S (or M), reduces
    over the broadcast dimensions, and only the reduced result is conjugated and doubled: no
    full-size temporaries or conj copies.  Only conj(w) on the window is kept for the backward.
    """

    @staticmethod
    def forward(ctx, spectrum, mask, start: int, n: int):
        shape = _broadcast_4d(spectrum.shape, mask.shape)
        batch, window = shape[0], (..., slice(start, start + n), slice(start, start + n))
        chunks = batch_chunks(shape, spectrum.device)
        buffer = spectrum.new_empty((chunks[0].stop,) + shape[1:])
        crops = spectrum.new_empty(shape[:2] + (n, n))
        intensity = spectrum.new_empty(crops.shape, dtype=spectrum.dtype.to_real())
        for rows in chunks:
            product = _head(buffer, rows)
            torch.mul(_rows(spectrum, rows, batch), _rows(mask, rows, batch), out=product)
            field = torch.fft.ifft2(product)  # (out= would add a copy)
            crop = _rows(crops, rows, batch)  # conj(w), as the backward needs it
            crop.copy_(field[window].conj())
            squares = torch.view_as_real(crop).square()
            torch.add(squares[..., 0], squares[..., 1], out=intensity[rows])
        ctx.save_for_backward(spectrum, mask, crops)
        ctx.geometry = (window, shape, chunks)
        return intensity

    @staticmethod
    def backward(ctx, grad):
        spectrum, mask, crops = ctx.saved_tensors
        window, shape, chunks = ctx.geometry
        batch = shape[0]
        need_spectrum, need_mask = ctx.needs_input_grad[:2]
        buffer = crops.new_zeros((chunks[0].stop,) + shape[1:])  # zero outside the window
        grads = {}
        for rows in chunks:
            padded = _head(buffer, rows)
            crop, g = _rows(crops, rows, batch), _rows(grad, rows, batch)
            torch.mul(crop, g, out=padded[window])
            half_conj_G = torch.fft.ifft2(padded)  # conj(G) / 2 = IFFT(conj(w) g)
            m, s = _rows(mask, rows, batch), _rows(spectrum, rows, batch)
            if need_spectrum:
                product = half_conj_G * m if need_mask else half_conj_G.mul_(m)
                _accumulate(grads, 0, spectrum, rows, batch, _sum_to(product, s.shape))
            if need_mask:
                _accumulate(grads, 1, mask, rows, batch, _sum_to(half_conj_G.mul_(s), m.shape))
        out = [grads[i].conj_physical_().mul_(2.0) if i in grads else None for i in (0, 1)]
        return out[0], out[1], None, None


def _accumulate(grads: dict, index: int, operand, rows: slice, batch: int, value) -> None:
    """Write (batched operand) or add (broadcast operand) one chunk's gradient into grads."""
    batched = _batched(operand, batch)
    if index not in grads:
        grads[index] = (torch.empty_like if batched else torch.zeros_like)(operand)
    if batched:
        grads[index][rows] = value
    else:
        grads[index] += value
