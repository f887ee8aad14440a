"""Closed-form checks of the 4F model (docs/DESIGN.md section 3)."""

import math

import pytest
import torch

from harness.optics import FourF, Imperfections, OpticsConfig
from harness.optics.functional import TWO_PI
from tests.images import centroid, gaussian_blob

IDEAL = OpticsConfig(n=32, aperture="none", lut_bits=None)


def test_defaults_match_design_numbers():
    cfg = OpticsConfig()
    assert cfg.N == 64
    assert cfg.dx == pytest.approx(103.9e-6, rel=1e-3)  # λ f / (N p)
    assert cfg.na == pytest.approx(2.56e-3, rel=1e-3)
    assert cfg.dz_per_wave == pytest.approx(0.1624, rel=1e-3)  # about 160 mm per wave


def test_zero_mask_reproduces_input_exactly_without_aperture():
    images = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    enc = FourF(IDEAL, channels=2, init="zeros")
    frames = enc(images)
    assert frames.shape == (3, 2, 32, 32)
    torch.testing.assert_close(frames, images.expand(-1, 2, -1, -1), atol=2e-6, rtol=0)


def test_zero_mask_with_circular_pupil_only_low_passes():
    enc = FourF(OpticsConfig(n=32, lut_bits=None), init="zeros")
    images = gaussian_blob(sigma=3.0)
    out = enc(images)
    assert (out - images).abs().max() < 1e-3  # a smooth image passes the pupil unchanged
    sharp = torch.zeros(1, 1, 32, 32)
    sharp[..., 16, 16] = 1.0
    assert enc(sharp)[..., 16, 16] < 0.9  # a point loses the frequencies outside the pupil


@pytest.mark.parametrize("a, b", [(3, 0), (0, -2), (2.5, 1.5)])
def test_linear_phase_ramp_shifts_output_by_predicted_pixels(a, b):
    # φ = 2π (a jx + b jy) / N  moves the output by (−a, −b) pixels.
    enc = FourF(IDEAL, init="zeros")
    ramp = TWO_PI * (a * enc.jx + b * enc.jy) / IDEAL.N
    enc = FourF(IDEAL, init=ramp[None])
    images = gaussian_blob(cx=15.0, cy=16.0, sigma=2.0)
    cx, cy = centroid(enc(images)[:, 0]).unbind(-1)
    assert cx.item() == pytest.approx(15.0 - a, abs=0.02)
    assert cy.item() == pytest.approx(16.0 - b, abs=0.02)
    if float(a).is_integer() and float(b).is_integer():
        expected = torch.roll(images, shifts=(-int(b), -int(a)), dims=(-2, -1))
        torch.testing.assert_close(enc(images), expected, atol=1e-5, rtol=0)


def test_camera_shift_is_exact_fourier_tilt():
    enc = FourF(IDEAL, init="zeros")
    images = gaussian_blob(cx=14.0, cy=17.0)
    imp = Imperfections(camera_shift=torch.tensor([[2.0, -3.0], [0.5, 0.25]]))
    cx, cy = centroid(enc(images.expand(2, -1, -1, -1), imp)[:, 0]).unbind(-1)
    torch.testing.assert_close(cx, torch.tensor([16.0, 14.5]), atol=0.02, rtol=0)
    torch.testing.assert_close(cy, torch.tensor([14.0, 17.25]), atol=0.02, rtol=0)


def test_parseval_energy_is_conserved_through_ideal_system():
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(2, 1, 32, 32, generator=gen)
    enc = FourF(IDEAL, channels=3, init="random", seed=3)
    out = enc.field(images)
    energy_in = images.sum((-1, -2))  # |sqrt(I)|²
    torch.testing.assert_close(out.abs().square().sum((-1, -2)), energy_in.expand(-1, 3), rtol=1e-4,
                               atol=0)
    # With the circular pupil the output holds exactly the in-pupil part of the input spectrum.
    enc = FourF(OpticsConfig(n=32, lut_bits=None), channels=1, init="random", seed=3)
    u = torch.nn.functional.pad(images.sqrt(), (16, 16, 16, 16))
    spectrum = torch.fft.fftshift(torch.fft.fft2(u), dim=(-2, -1))
    expected = (spectrum.abs().square() * enc.aperture).sum((-1, -2)) / enc.config.N**2
    torch.testing.assert_close(enc.field(images).abs().square().sum((-1, -2)), expected, rtol=1e-4,
                               atol=0)
    assert (expected < energy_in).all()


def _psf_second_moment(enc, imp=None):
    n = enc.config.n
    point = torch.zeros(1, 1, n, n)
    point[..., n // 2, n // 2] = 1.0
    psf = enc.field(point, imp).abs().square()[0, 0]
    N = enc.config.N
    j = torch.arange(N).float() - N // 2
    r2 = j[:, None] ** 2 + j[None, :] ** 2
    return (psf * r2).sum() / psf.sum()


def test_defocus_psf_grows_as_quadratic_phase_predicts():
    # For a pupil A exp(iψ) with ψ = −π Δz ρ² / (λ f²), the PSF second moment grows by
    # <(Δz ρ / f)²> over the pupil = (Δz ρ_max / f)² / 2, in units of dx² per pixel².
    cfg = OpticsConfig(n=64, lut_bits=None)
    enc = FourF(cfg, init="zeros")
    base = _psf_second_moment(enc)
    growth = []
    for waves in (0.5, 1.0, 2.0):
        dz = waves * cfg.dz_per_wave
        measured = _psf_second_moment(enc, Imperfections(defocus_dz=torch.tensor([dz]))) - base
        predicted = (dz * cfg.rho_max / cfg.focal_length) ** 2 / 2 / cfg.dx**2
        assert measured.item() == pytest.approx(predicted, rel=0.1), waves
        growth.append(measured.item())
    assert growth[0] < growth[1] < growth[2]
    # The sign of Δz does not change the intensity PSF of a symmetric pupil.
    plus = _psf_second_moment(enc, Imperfections(defocus_dz=torch.tensor([0.1])))
    minus = _psf_second_moment(enc, Imperfections(defocus_dz=torch.tensor([-0.1])))
    assert plus.item() == pytest.approx(minus.item(), rel=1e-4)


def test_zernike_defocus_matches_camera_defocus():
    # −2π w r² (camera defocus of w waves) equals Zernike defocus c (2r² − 1) with c = −w / 2.
    cfg = OpticsConfig(n=32)
    enc = FourF(cfg, channels=2, init="random", seed=5)
    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    w = 0.7
    a = enc(images, Imperfections(defocus_dz=torch.tensor([w * cfg.dz_per_wave])))
    zernike = torch.zeros(1, 6)
    zernike[0, 0] = -w / 2
    b = enc(images, Imperfections(zernike=zernike))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert (a - enc(images)).abs().max() > 1e-2


def _propagate(enc, images, mask):
    """Reference 4F propagation with an explicit centred complex mask (k, N, N)."""
    s, n = enc._start, enc.config.n
    u = torch.nn.functional.pad(images.sqrt(), (s, s, s, s)) * enc.checker
    out = torch.fft.ifft2(torch.fft.fft2(u) * mask)
    return out[..., s : s + n, s : s + n].abs().square()


@pytest.mark.parametrize("aperture", ["none", "circle"])
def test_integer_mask_shift_equals_rolling_the_mask(aperture):
    cfg = OpticsConfig(n=32, aperture=aperture, aperture_fraction=0.8, lut_bits=None)
    enc = FourF(cfg, channels=2, init="random", seed=1)
    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    imp = Imperfections(mask_shift=torch.tensor([[3.0, -2.0], [-1.0, 4.0]]))
    moved = enc.intensity(images, imp)
    mask = enc.mask()
    for b, (dx, dy) in enumerate([(3, -2), (-1, 4)]):
        rolled = torch.roll(mask, (dy, dx), dims=(-2, -1))  # the whole SLM, aperture included
        expected = _propagate(enc, images[b : b + 1], rolled)
        torch.testing.assert_close(moved[b : b + 1], expected, atol=1e-5, rtol=1e-4)
    assert (moved - enc.intensity(images)).abs().max() > 1e-2


def test_subpixel_mask_shift_conserves_energy():
    # Resampling e^{iφ} between SLM pixels would lose light; the shift must not.
    enc = FourF(IDEAL, channels=2, init="random", seed=2)
    images = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    imp = Imperfections(mask_shift=torch.tensor([[0.5, 0.0], [0.25, -0.5], [1.7, 0.3]]))
    energy = enc.field(images, imp).abs().square().sum((-1, -2))
    torch.testing.assert_close(energy, images.sum((-1, -2)).expand(-1, 2), rtol=1e-4, atol=0)


def test_rotation_by_90_degrees_equals_rotating_the_mask():
    cfg = OpticsConfig(n=32, aperture_fraction=0.9, lut_bits=None)
    enc = FourF(cfg, channels=2, init="random", seed=4)
    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    rotated = enc.intensity(images, Imperfections(mask_rotation=torch.tensor([math.pi / 2])))
    # M'(ρ) = M(R⁻¹ρ): at centred (x, y) the mask shows its value at (y, −x).
    N = cfg.N
    j = torch.arange(N) - N // 2
    src_x = j[:, None].expand(N, N)
    src_y = (-j[None, :].expand(N, N)).clamp(max=N // 2 - 1)  # that row lies outside the pupil
    phase = enc.phase.detach()[:, src_y + N // 2, src_x + N // 2]
    expected = FourF(cfg, init=phase).intensity(images)
    torch.testing.assert_close(rotated, expected, atol=1e-4, rtol=1e-3)
    assert (rotated - enc.intensity(images)).abs().max() > 1e-2


def test_phase_quantization_uses_lut_levels():
    enc = FourF(OpticsConfig(n=32, lut_bits=3), init="random", seed=0)
    phase = enc.slm_phase()
    steps = phase / (TWO_PI / 8)
    torch.testing.assert_close(steps, torch.round(steps), atol=1e-4, rtol=0)
    assert torch.round(steps).max() <= 7  # levels 0..7: level 8 is 0 (mod L)
    levels = enc.slm_phase(Imperfections(phase_levels=torch.tensor([4.0])))
    steps = levels / (TWO_PI / 4)
    torch.testing.assert_close(steps, torch.round(steps), atol=1e-4, rtol=0)


def test_lut_scale_zero_and_full_zero_order_give_identity_system():
    enc = FourF(IDEAL, init="random", seed=2)
    images = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    flat = enc(images, Imperfections(lut_scale=torch.tensor([0.0]), lut_offset=torch.tensor([1.0])))
    torch.testing.assert_close(flat, images, atol=2e-6, rtol=0)
    leak = enc(images, Imperfections(zero_order=torch.tensor([1.0])))
    torch.testing.assert_close(leak, images, atol=2e-6, rtol=0)


def test_fringing_smooths_the_displayed_phase():
    enc = FourF(OpticsConfig(n=32), init="random", seed=2)
    sharp = enc.slm_phase()
    blurred = enc.slm_phase(Imperfections(fringing=torch.tensor([1.5])))[0]
    assert blurred.diff(dim=-1).abs().mean() < 0.3 * sharp.diff(dim=-1).abs().mean()
    torch.testing.assert_close(blurred.mean(), sharp.mean(), atol=1e-3, rtol=0)


def test_gamma_changes_displayed_intensity():
    enc = FourF(IDEAL, init="zeros")
    images = torch.full((1, 1, 32, 32), 0.5)
    out = enc(images, Imperfections(gamma=torch.tensor([2.0])))
    torch.testing.assert_close(out, torch.full_like(out, 0.25), atol=1e-5, rtol=0)


def test_per_sample_parameters_act_per_sample_and_broadcast():
    enc = FourF(OpticsConfig(n=32), channels=2, init="random", seed=0)
    one = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    images = one.expand(3, -1, -1, -1)
    imp = Imperfections(defocus_dz=torch.tensor([0.0, 0.1, 0.2]),
                        mask_shift=torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.0, -0.5]]))
    out = enc(images, imp)
    assert out.shape == (3, 2, 32, 32)
    single = enc(images[1:2], imp.select(slice(1, 2)))
    torch.testing.assert_close(out[1:2], single, atol=1e-6, rtol=0)
    assert (out[0] - out[1]).abs().max() > 1e-3 and (out[1] - out[2]).abs().max() > 1e-3


def test_gradients_flow_to_the_mask_and_match_finite_differences():
    cfg = OpticsConfig(n=8, lut_bits=None)
    enc = FourF(cfg, channels=2, init="random", seed=0).double()
    f64 = torch.float64
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=f64)
    weights = torch.rand(2, 2, 8, 8, generator=torch.Generator().manual_seed(1), dtype=f64)
    imp = Imperfections(defocus_dz=torch.tensor([0.05, -0.1], dtype=torch.float64),
                        mask_shift=torch.tensor([[0.3, -0.2], [0.0, 0.7]], dtype=torch.float64))

    def loss():
        return (enc.intensity(images, imp) * weights).sum()

    loss().backward()
    grad = enc.phase.grad.clone()
    assert grad.abs().sum() > 0
    eps = 1e-6
    for idx in [(0, 8, 8), (1, 5, 9), (0, 3, 12), (1, 10, 6)]:
        with torch.no_grad():
            enc.phase[idx] += eps
            up = loss().item()
            enc.phase[idx] -= 2 * eps
            down = loss().item()
            enc.phase[idx] += eps
        assert grad[idx].item() == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-9)
    # The gradient also reaches per-sample imperfections (through the input spectrum).
    dz = imp.defocus_dz.clone().requires_grad_(True)
    imp.defocus_dz = dz
    loss().backward()
    with torch.no_grad():
        imp.defocus_dz = dz + torch.tensor([eps, 0.0], dtype=torch.float64)
        up = loss().item()
        imp.defocus_dz = dz - torch.tensor([eps, 0.0], dtype=torch.float64)
        down = loss().item()
    assert dz.grad[0].item() == pytest.approx((up - down) / (2 * eps), rel=1e-4)


def test_images_of_wrong_shape_are_rejected():
    with pytest.raises(ValueError, match=r"expected images \(B, 1, 32, 32\)"):
        FourF(OpticsConfig(n=32))(torch.zeros(2, 3, 32, 32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_runs_on_cuda_and_matches_cpu():
    enc = FourF(OpticsConfig(n=32), channels=2, init="random", seed=0)
    images = torch.rand(4, 1, 32, 32)
    imp = Imperfections(defocus_dz=torch.rand(4) * 0.1, mask_shift=torch.rand(4, 2))
    cpu = enc(images, imp)
    gpu = enc.cuda()(images.cuda(), imp.to("cuda"))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)
