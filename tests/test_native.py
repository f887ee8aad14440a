"""The fused CPU kernels (harness.native) against the torch ops they replace."""

import math
import os
import shutil

import pytest
import torch

from harness import native, optics
from harness.optics import FourF, OpticsConfig


@pytest.fixture(scope="module")
def kernels():
    if os.environ.get("SIMGAP_NATIVE") == "0":
        pytest.skip("SIMGAP_NATIVE=0: harness.native is switched off")
    fused = native.kernels()
    if fused is None:
        assert shutil.which("cc") is None and shutil.which("gcc") is None, (
            "a C compiler is present but harness.native did not build (see its log warning)")
        pytest.skip("no C compiler: harness.native falls back to torch ops")
    return fused


def _without_native(monkeypatch):
    monkeypatch.setattr(native, "kernels", lambda: None)
    assert native.kernels_for(torch.zeros(1)) is None  # the torch ops run from here on


@pytest.mark.parametrize("chunk_bytes", [1 << 30, 3 * 64 * 8 * 2])  # one chunk; 3 samples a chunk
@pytest.mark.parametrize("mask_batch", [None, 1, 5])
def test_cropped_intensity_native_equals_torch_ops(monkeypatch, kernels, chunk_bytes, mask_batch):
    monkeypatch.setattr(optics, "CPU_CHUNK_BYTES", chunk_bytes)
    gen = torch.Generator().manual_seed(0)
    spectrum = torch.randn(5, 1, 8, 8, generator=gen, dtype=torch.complex64)
    shape = (2, 8, 8) if mask_batch is None else (mask_batch, 2, 8, 8)
    mask = torch.randn(shape, generator=gen, dtype=torch.complex64)
    weights = torch.rand(5, 2, 3, 3, generator=gen)

    def run():
        m = mask.clone().requires_grad_(True)
        intensity = optics.CroppedIntensity.apply(spectrum, m, 3, 3)
        (intensity * weights).sum().backward()
        return intensity.detach(), m.grad

    fused = run()
    _without_native(monkeypatch)
    reference = run()
    torch.testing.assert_close(fused[0], reference[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fused[1], reference[1], atol=1e-5, rtol=1e-4)
    plain = torch.fft.ifft2(spectrum * mask)[..., 3:6, 3:6].abs() ** 2
    torch.testing.assert_close(fused[0], plain, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("levels", [8, 256])
def test_quantized_phase_field_is_a_exp_i_rounded_phase(kernels, levels):
    gen = torch.Generator().manual_seed(1)
    phase = (torch.rand(3, 16, 16, generator=gen) - 0.5) * 40.0  # many turns, both signs
    amplitude = (torch.rand(16, 16, generator=gen) > 0.2).float()
    out = torch.empty(phase.shape, dtype=torch.complex64)
    kernels.quantized_phase_field(phase, amplitude, levels, out)
    step = 2 * math.pi / levels
    rounded = torch.round(phase * (levels / (2 * math.pi))).double() * step
    expected = amplitude.double() * torch.exp(1j * rounded)
    torch.testing.assert_close(out.cdouble(), expected, atol=2e-6, rtol=0)
    phase[0, 0, :3] = torch.tensor([float("nan"), float("inf"), 1e30])  # as cos/sin would: NaN
    kernels.quantized_phase_field(phase, torch.ones(16, 16), levels, out)
    assert out[0, 0, :3].isnan().all() and not out[0, 0, 3:].isnan().any()


def test_encoder_frames_and_mask_gradient_do_not_depend_on_native(monkeypatch, kernels):
    enc = FourF(OpticsConfig(n=16), channels=3, init="random", seed=0)  # 8-bit LUT
    images = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    weights = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))

    def run():
        enc.zero_grad()
        frames = enc(images)
        (frames * weights).sum().backward()
        return frames.detach(), enc.phase.grad.clone()

    fused = run()
    _without_native(monkeypatch)
    reference = run()
    torch.testing.assert_close(fused[0], reference[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fused[1], reference[1], atol=1e-4, rtol=1e-3)


def test_lazy_conjugate_views_are_not_handed_to_the_kernels():
    z = torch.randn(4, dtype=torch.complex64)
    assert native.Kernels.usable(z) and not native.Kernels.usable(z.conj())
    assert not native.Kernels.usable(z.to(torch.complex128)) and not native.Kernels.usable(z[::2])


def test_native_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("SIMGAP_NATIVE", "0")
    assert native._load() is None


def test_a_failed_build_falls_back_with_a_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.delenv("SIMGAP_NATIVE", raising=False)
    monkeypatch.setenv("SIMGAP_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert native._load() is None
    assert "using torch ops" in caplog.text
    assert not list(tmp_path.rglob("*.so"))


def test_window_kernels_write_only_the_window(kernels):
    gen = torch.Generator().manual_seed(2)
    intensity = torch.randn(2, 3, 4, 4, generator=gen)  # negative values display as 0
    grid = torch.zeros(2, 3, 8, 8, dtype=torch.complex64)
    kernels.display_window(intensity, 2, grid)
    checker = 1.0 - 2.0 * ((torch.arange(4)[:, None] + torch.arange(4)) % 2)
    expected = torch.zeros_like(grid)
    expected[..., 2:6, 2:6] = intensity.clamp_min(0).sqrt() * checker
    torch.testing.assert_close(grid, expected, atol=0, rtol=3e-7)
    a = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.complex64)
    g = torch.rand(2, 3, 4, 4, generator=gen)
    out = torch.full((2, 3, 8, 8), 7.0 + 1j, dtype=torch.complex64)
    kernels.window_product(a, g, 3, out)
    expected = torch.full_like(out, 7.0 + 1j)
    expected[..., 3:7, 3:7] = a * g
    torch.testing.assert_close(out, expected, atol=1e-7, rtol=0)


@pytest.mark.parametrize("lo", [None, 0.0])
def test_clip_has_the_gradient_of_torch_clamp(monkeypatch, kernels, lo):
    from harness import sensor

    y = torch.tensor([-0.5, 0.0, 0.3, 1.0, 1.7] * 4).reshape(2, 2, 5)  # values at the bounds
    weights = torch.rand(2, 2, 5, generator=torch.Generator().manual_seed(0))
    for grad_out in (weights, torch.ones(()).expand(2, 2, 5)):  # also the expanded grad of a sum
        reference = y.clone().requires_grad_(True)
        reference.clamp(lo, 1.0).backward(grad_out)
        for fused in (True, False):
            if not fused:
                _without_native(monkeypatch)
            x = y.clone().requires_grad_(True)
            out = sensor.clip(x, lo, 1.0)
            torch.testing.assert_close(out, y.clamp(lo, 1.0), atol=0, rtol=0)
            out.backward(grad_out)
            torch.testing.assert_close(x.grad, reference.grad, atol=0, rtol=0)
        monkeypatch.undo()


def test_kernels_refuse_arguments_they_would_overrun(kernels):
    field = torch.zeros(2, 1, 8, 8, dtype=torch.complex64)
    with pytest.raises(ValueError, match="do not fit"):
        kernels.crop_intensity(field, 6, torch.empty(2, 1, 4, 4, dtype=torch.complex64),
                               torch.empty(2, 1, 4, 4))  # window 6..10 leaves the 8 x 8 grid
    with pytest.raises(ValueError, match="do not fit"):
        kernels.multiply_accumulate(field, torch.zeros(1, 1, 8, 8, dtype=torch.complex64),
                                    torch.empty(1, 8, 8, dtype=torch.complex64), False, True)
    with pytest.raises(ValueError, match="do not fit"):
        kernels.phase_gradient(field, field.real.contiguous())
