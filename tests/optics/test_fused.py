"""The fused autograd Functions (harness.optics.fused) against autograd and finite differences."""

import pytest
import torch

from harness.optics import FourF, OpticsConfig
from harness.optics import fused as ops


@pytest.mark.parametrize("chunk_bytes", [1 << 30, 1])  # one chunk; one sample per chunk
@pytest.mark.parametrize("mask_batch", [None, 1, 3])  # (k, N, N), (1, k, N, N), per-sample
def test_fused_cropped_intensity_matches_autograd_reference(monkeypatch, chunk_bytes, mask_batch):
    """CroppedIntensity (fused, chunked over the batch) = |IFFT(S M)|² on the window, with the
    gradients of both operands checked against finite differences (gradcheck)."""
    monkeypatch.setattr(ops, "CPU_CHUNK_BYTES", chunk_bytes)
    gen = torch.Generator().manual_seed(0)
    spectrum = torch.randn(3, 1, 8, 8, generator=gen, dtype=torch.complex128, requires_grad=True)
    shape = (2, 8, 8) if mask_batch is None else (mask_batch, 2, 8, 8)
    mask = torch.randn(shape, generator=gen, dtype=torch.complex128, requires_grad=True)
    fused = ops.CroppedIntensity.apply(spectrum, mask, 2, 4)
    reference = torch.fft.ifft2(spectrum * mask)[..., 2:6, 2:6].abs() ** 2
    torch.testing.assert_close(fused, reference, atol=1e-12, rtol=0)
    weights = torch.rand(fused.shape, generator=gen, dtype=torch.float64)
    for wrt in ((spectrum, mask), (mask,), (spectrum,)):
        fused_grads = torch.autograd.grad((fused * weights).sum(), wrt, retain_graph=True)
        reference_grads = torch.autograd.grad((reference * weights).sum(), wrt, retain_graph=True)
        for got, want in zip(fused_grads, reference_grads):
            torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-9)
    assert torch.autograd.gradcheck(
        lambda s, m: ops.CroppedIntensity.apply(s, m, 2, 4), (spectrum, mask))


def test_phase_field_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(0)
    phase = torch.randn(2, 6, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    amplitude = (torch.rand(6, 6, generator=gen) > 0.3).double()
    field = ops.PhaseField.apply(phase, amplitude)
    expected = amplitude * torch.exp(1j * phase.detach())
    torch.testing.assert_close(field, expected, atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(lambda p: ops.PhaseField.apply(p, amplitude), (phase,))


def test_chunked_forward_and_mask_gradient_do_not_depend_on_chunking(monkeypatch):
    enc = FourF(OpticsConfig(n=16), channels=3, init="random", seed=0)
    images = torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    results = []
    for chunk_bytes in (1 << 30, 3 * 32 * 32 * 8 * 2):  # whole batch; two samples per chunk
        monkeypatch.setattr(ops, "CPU_CHUNK_BYTES", chunk_bytes)
        enc.zero_grad()
        out = enc(images)
        (out * torch.linspace(0, 1, 16)).sum().backward()
        results.append((out.detach(), enc.phase.grad.clone()))
    assert len(ops.batch_chunks(torch.Size((5, 3, 32, 32)), torch.device("cpu"))) == 3
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-6, rtol=0)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-5, rtol=1e-4)
