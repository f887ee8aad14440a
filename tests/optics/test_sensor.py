"""Camera model: Poisson-Gaussian noise, quantization, gain maps, straight-through gradients."""

import pytest
import torch

from harness.optics import Imperfections
from harness.optics.sensor import (
    GAUSSIAN_SHOT_NOISE_ABOVE,
    Camera,
    CameraConfig,
    PerFramePoissonNoise,
    clip,
    electron_noise,
)


def flat_fields(levels, size=64):
    return torch.tensor(levels).reshape(-1, 1, 1, 1).expand(-1, 1, size, size).clone()


@pytest.mark.parametrize("photons, read", [(1000.0, 5.0), (200.0, 0.0), (5000.0, 30.0)])
def test_noise_mean_and_variance_follow_a_y_plus_b(photons, read):
    levels = [0.05, 0.2, 0.4, 0.6, 0.8]
    y = flat_fields(levels, size=128)
    B = len(levels)
    imp = Imperfections(photons=torch.full((B,), photons), read_noise=torch.full((B,), read),
                        bit_depth=torch.full((B,), 16.0))
    out = Camera()(y, imp, torch.Generator().manual_seed(0))
    mean = out.mean((1, 2, 3))
    var = out.var((1, 2, 3))
    a, b = 1 / photons, read**2 / photons**2 + 1 / (12 * (2**16 - 1) ** 2)
    torch.testing.assert_close(mean, torch.tensor(levels), atol=3e-3, rtol=0)
    torch.testing.assert_close(var, a * torch.tensor(levels) + b, rtol=0.06, atol=0)


@pytest.mark.parametrize("read", [0.0, 3.0])
def test_electron_noise_is_exact_poisson_at_low_counts_and_its_gaussian_limit_above(read):
    lam = torch.tensor([0.5, 4.0, GAUSSIAN_SHOT_NOISE_ABOVE / 2, GAUSSIAN_SHOT_NOISE_ABOVE * 5,
                        1e4]).repeat_interleave(40000).reshape(5, 1, 200, 200)
    r = torch.full((5, 1, 1, 1), read) if read else None
    counts = electron_noise(lam, r, torch.Generator().manual_seed(0)).reshape(5, -1)
    levels = lam[:, 0, 0, 0]
    torch.testing.assert_close(counts.mean(1), levels, rtol=0.01, atol=0.03)
    torch.testing.assert_close(counts.var(1), levels + read**2, rtol=0.03, atol=0)
    if not read:  # exact Poisson below the threshold: integers with P(0) = e^-λ
        assert torch.equal(counts[:3], counts[:3].round()) and (counts[:3] >= 0).all()
        assert (counts[3:] != counts[3:].round()).any()  # Gaussian limit above: continuous
        p0 = (counts[0] == 0).float().mean().item()
        assert p0 == pytest.approx(torch.exp(torch.tensor(-0.5)).item(), abs=0.01)
    again = electron_noise(lam, r, torch.Generator().manual_seed(0)).reshape(5, -1)
    assert torch.equal(counts, again)


def test_quantization_to_two_to_the_b_levels():
    y = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    out = Camera()(y, Imperfections(bit_depth=torch.tensor([4.0, 8.0])))
    for sample, bits in zip(out, (4, 8)):
        codes = sample * (2**bits - 1)
        torch.testing.assert_close(codes, torch.round(codes), atol=1e-4, rtol=0)
        assert len(torch.unique(torch.round(codes))) <= 2**bits
    assert len(torch.unique(out[0])) <= 16 < len(torch.unique(out[1]))
    assert (out[1] - y[1]).abs().max() <= 0.5 / 255 + 1e-6


def test_clipping_and_range():
    y = torch.linspace(0, 3, 64).reshape(1, 1, 8, 8)
    imp = Imperfections(photons=torch.tensor([100.0]), read_noise=torch.tensor([20.0]),
                        dark_offset=torch.tensor([5.0]))
    out = Camera()(y, imp, torch.Generator().manual_seed(1))
    assert out.min() >= 0 and out.max() <= 1
    assert (out[y > 1.5] == 1).all()  # saturated


def test_straight_through_gradient_of_noise_and_quantization():
    y = torch.full((1, 1, 8, 8), 0.3, requires_grad=True)
    imp = Imperfections(photons=torch.tensor([500.0]), read_noise=torch.tensor([3.0]),
                        bit_depth=torch.tensor([8.0]), gain=torch.tensor([1.5]))
    Camera()(y, imp, torch.Generator().manual_seed(0)).sum().backward()
    torch.testing.assert_close(y.grad, torch.full_like(y, 1.5))


def test_vignetting_prnu_gain_and_exposure():
    y = torch.full((1, 1, 9, 9), 0.5)
    out = Camera()(y, Imperfections(vignetting=torch.tensor([0.4])))
    assert out[0, 0, 4, 4] == pytest.approx(0.5)
    assert out[0, 0, 0, 0] == pytest.approx(0.5 * 0.6)
    prnu = torch.ones(1, 1, 9, 9)
    prnu[..., 2, 3] = 1.2
    out = Camera()(y, Imperfections(prnu=prnu))
    assert out[0, 0, 2, 3] == pytest.approx(0.6) and out[0, 0, 0, 0] == pytest.approx(0.5)
    out = Camera(CameraConfig(exposure=2.0, binning=3))(torch.full((1, 2, 9, 9), 0.25))
    assert out.shape == (1, 2, 3, 3) and torch.allclose(out, torch.full_like(out, 0.5))


def test_noise_is_reproducible_from_generator():
    y = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    imp = Imperfections(photons=torch.tensor([300.0, 300.0]), read_noise=torch.tensor([4.0, 4.0]))
    a = Camera()(y, imp, torch.Generator().manual_seed(9))
    b = Camera()(y, imp, torch.Generator().manual_seed(9))
    c = Camera()(y, imp, torch.Generator().manual_seed(10))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_read_noise_without_photons_is_an_error():
    with pytest.raises(ValueError, match="need photons"):
        Camera()(torch.zeros(1, 1, 4, 4), Imperfections(read_noise=torch.tensor([1.0])))


# ------------------------------------------------------------------ the bench's noise model
def test_per_frame_noise_depends_on_the_frame_seed_only():
    y = torch.rand(3, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    imp = Imperfections(photons=torch.tensor([50.0]), read_noise=torch.tensor([2.0]),
                        dark_offset=torch.tensor([1.0]), bit_depth=torch.tensor([12.0]),
                        vignetting=torch.tensor([0.1]), prnu=1 + 0.01 * torch.randn(1, 1, 8, 8))
    seeds = [11, 12, 13]
    frames = Camera(noise=PerFramePoissonNoise(seeds))(y, imp, torch.Generator().manual_seed(5))
    for row in range(3):  # alone, in another batch, and whatever generator the batch passes
        alone = Camera(noise=PerFramePoissonNoise([seeds[row]]))(y[row : row + 1], imp)
        assert torch.equal(alone[0], frames[row])
    other = Camera(noise=PerFramePoissonNoise([11, 12, 14]))(y, imp)
    assert torch.equal(other[:2], frames[:2]) and not torch.equal(other[2], frames[2])


def test_per_frame_noise_is_exact_poisson_and_saturates_at_full_well():
    y = torch.full((4, 1, 64, 64), 0.2)
    y[..., :8, :] = 3.0  # above full scale: the full well clips it to 1 before the noise
    photons = 20.0  # λ = 4 e⁻: far below the training model's Gaussian threshold
    imp = Imperfections(photons=torch.tensor([photons]))
    out = Camera(noise=PerFramePoissonNoise(range(4)))(y, imp)
    counts = out[..., 8:, :] * photons
    assert torch.equal(counts, counts.round()) and (counts >= 0).all()  # integer electrons
    assert counts.mean().item() == pytest.approx(4.0, rel=0.02)
    assert counts.var().item() == pytest.approx(4.0, rel=0.05)
    saturated = out[..., :8, :]  # Poisson(20) / 20, not Poisson(60) / 20 (always clipped to 1)
    assert (saturated < 1).float().mean().item() > 0.3
    with pytest.raises(ValueError, match="frame seeds"):
        Camera(noise=PerFramePoissonNoise([1]))(y, imp)
    with pytest.raises(ValueError, match="needs photons"):
        Camera(noise=PerFramePoissonNoise(range(4)))(y, Imperfections(gain=torch.tensor([1.0])))


@pytest.mark.parametrize("lo", [None, 0.0])
def test_clip_has_the_gradient_of_torch_clamp(lo):
    y = torch.tensor([-0.5, 0.0, 0.3, 1.0, 1.7] * 4).reshape(2, 2, 5)  # values at the bounds
    weights = torch.rand(2, 2, 5, generator=torch.Generator().manual_seed(0))
    for grad_out in (weights, torch.ones(()).expand(2, 2, 5)):  # also the expanded grad of a sum
        reference = y.clone().requires_grad_(True)
        reference.clamp(lo, 1.0).backward(grad_out)
        x = y.clone().requires_grad_(True)
        out = clip(x, lo, 1.0)
        torch.testing.assert_close(out, y.clamp(lo, 1.0), atol=0, rtol=0)
        out.backward(grad_out)
        torch.testing.assert_close(x.grad, reference.grad, atol=0, rtol=0)
