"""SLM rotation against the direct DTFT (each SLM pixel j at R(θ) j + δ), tests/optics/reference.

The rotated path evaluates the spectrum and the camera field as non-uniform DFTs
(harness.optics.nufft); its error against the direct sum is a few 1e-6 (two float32 transforms
of about 1e-6 each, then |.|²), while rotating by 0.25°
changes the frame by 2e-3 (flat mask) to 2e-2 (random mask) at n = 16.
"""

import math

import numpy as np
import pytest
import torch

from harness.optics import FourF, Imperfections, OpticsConfig, nufft
from harness.optics.nufft import Gridding
from tests.optics.reference import aperture, dtft_intensity

CFG = OpticsConfig(n=16, lut_bits=None)
N = CFG.N
IMAGE = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
MASKS = {
    "flat": torch.zeros(1, N, N),
    "random": torch.rand(1, N, N, generator=torch.Generator().manual_seed(1)) * 2 * math.pi,
}


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("mask", ["flat", "random"])
@pytest.mark.parametrize("degrees", [0.25, 0.5, 2.0])
def test_rotation_matches_the_direct_dtft_far_below_its_effect(mask, degrees):
    phase = MASKS[mask]
    enc = FourF(CFG, init=phase)
    field = aperture(N, 1.0) * np.exp(1j * phase.double().numpy())
    image = IMAGE[0, 0].double().numpy()
    theta, shift = math.radians(degrees), (0.3, -0.2)
    expected = dtft_intensity(image, field, theta, shift)
    imp = Imperfections(mask_rotation=torch.tensor([theta]), mask_shift=torch.tensor([shift]))
    with torch.no_grad():
        out = enc.intensity(IMAGE, imp)[0].double().numpy()
    error = _relative(out, expected)
    effect = _relative(dtft_intensity(image, field, 0.0, shift), expected)
    assert error < 1e-5
    assert effect > 2e-3 and error < effect / 100
    # The control: the aligned frame is far from the rotated one at this tolerance.
    with torch.no_grad():
        aligned = enc.intensity(IMAGE, Imperfections(mask_shift=torch.tensor([shift])))
    assert _relative(aligned[0].double().numpy(), expected) > 100 * error


def test_rotation_with_a_defocused_pupil_matches_the_direct_dtft():
    """The pupil is evaluated where the rotated pixels sit, P(R j + δ)."""
    phase = MASKS["random"]
    enc = FourF(CFG, init=phase)
    dz, theta, shift = 0.3 * CFG.dz_per_wave, math.radians(1.0), (-0.4, 0.7)
    curvature = -math.pi * CFG.slm_pitch**2 / (CFG.wavelength * CFG.focal_length**2)

    def pupil(x, y, sign=1.0):
        return sign * curvature * dz * (x**2 + y**2)

    field = aperture(N, 1.0) * np.exp(1j * phase.double().numpy())
    image = IMAGE[0, 0].double().numpy()
    expected = dtft_intensity(image, field, theta, shift, pupil)
    imp = Imperfections(mask_rotation=torch.tensor([theta]), mask_shift=torch.tensor([shift]),
                        defocus_dz=torch.tensor([dz]))
    with torch.no_grad():
        out = enc.intensity(IMAGE, imp)[0].double().numpy()
    assert _relative(out, expected) < 1e-5
    flipped = dtft_intensity(image, field, theta, shift, lambda x, y: pupil(x, y, -1.0))
    assert _relative(flipped, expected) > 1e-2  # the opposite defocus sign is another frame


def test_per_sample_rotations_equal_single_samples_and_broadcast():
    enc = FourF(CFG, channels=2, init="random", seed=3)
    images = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    imp = Imperfections(mask_rotation=torch.tensor([0.01, -0.03, 0.02]),
                        mask_shift=torch.tensor([[0.2, 0.0], [0.0, 0.5], [-1.0, 0.3]]))
    with torch.no_grad():
        batch = enc.intensity(images, imp)
        for b in range(3):
            one = enc.intensity(images[b:b + 1], imp.select(slice(b, b + 1)))
            torch.testing.assert_close(batch[b:b + 1], one, atol=1e-6, rtol=1e-5)
        shared = enc.intensity(images, Imperfections(mask_rotation=torch.tensor([0.02])))
        single = enc.intensity(images[2:], Imperfections(mask_rotation=torch.tensor([0.02])))
    torch.testing.assert_close(shared[2:], single, atol=1e-6, rtol=1e-5)


def test_rotated_path_gradients_match_finite_differences():
    cfg = OpticsConfig(n=8, lut_bits=None)
    enc = FourF(cfg, channels=2, init="random", seed=0).double()
    f64 = torch.float64
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=f64)
    images.requires_grad_(True)
    weights = torch.rand(2, 2, 8, 8, generator=torch.Generator().manual_seed(1), dtype=f64)
    imp = Imperfections(mask_rotation=torch.tensor([0.02, -0.035], dtype=f64),
                        mask_shift=torch.tensor([[0.3, -0.2], [0.0, 0.7]], dtype=f64))

    def loss():
        return (enc.intensity(images, imp) * weights).sum()

    loss().backward()
    eps = 1e-6
    for tensor, idx in [(enc.phase, (0, 8, 8)), (enc.phase, (1, 5, 9)), (images, (1, 0, 3, 4))]:
        with torch.no_grad():
            tensor[idx] += eps
            up = loss().item()
            tensor[idx] -= 2 * eps
            down = loss().item()
            tensor[idx] += eps
        assert tensor.grad[idx].item() == pytest.approx((up - down) / (2 * eps), rel=1e-5,
                                                        abs=1e-10)


def test_gridding_transforms_match_direct_sums():
    gen = torch.Generator().manual_seed(0)
    points = (torch.rand(2, 40, 2, generator=gen, dtype=torch.float64) - 0.5) * 15
    j = torch.arange(16, dtype=torch.float64) - 8
    phase = 2 * math.pi * (j[:, None, None] * points[:, None, None, :, 1]
                           + j[None, :, None] * points[:, None, None, :, 0]) / 16
    kernel = torch.polar(torch.ones_like(phase), -phase)  # (G, j2, j1, P)
    values = torch.randn(2, 3, 40, generator=gen, dtype=torch.complex128)
    coefficients = torch.randn(2, 3, 16, 16, generator=gen, dtype=torch.complex128)
    grid = Gridding(points, 16)
    spread = torch.einsum("bcp,bxyp->bcxy", values, kernel)
    interp = torch.einsum("bcxy,bxyp->bcp", coefficients, kernel.conj())
    assert (grid.spread(values) - spread).norm() / spread.norm() < 2e-6
    assert (grid.interpolate(coefficients) - interp).norm() / interp.norm() < 2e-6


@pytest.mark.parametrize("threshold", [1, 10**9])  # Wᵀ v: transposed CSR product / scatter-add
def test_gridding_spread_by_either_transpose_matches_direct_sums(monkeypatch, threshold):
    monkeypatch.setattr(nufft, "TRANSPOSE_COLUMNS", threshold)
    gen = torch.Generator().manual_seed(4)
    points = (torch.rand(1, 50, 2, generator=gen, dtype=torch.float64) - 0.5) * 15
    j = torch.arange(16, dtype=torch.float64) - 8
    phase = 2 * math.pi * (j[:, None, None] * points[:, None, None, :, 1]
                           + j[None, :, None] * points[:, None, None, :, 0]) / 16
    kernel = torch.polar(torch.ones_like(phase), -phase)  # (1, j2, j1, P)
    values = torch.randn(12, 1, 50, generator=gen, dtype=torch.complex128)  # 24 real columns
    grid = Gridding(points, 16)
    spread = torch.einsum("bcp,xyp->bcxy", values, kernel[0])
    assert (grid.spread(values) - spread).norm() / spread.norm() < 2e-6
    v = torch.randn(50, 24, generator=gen, dtype=torch.float64)
    x = torch.randn(2 * 16 * 2 * 16, 24, generator=gen, dtype=torch.float64)
    # The adjoint: <W x, v> = <x, Wᵀ v>, whichever way Wᵀ v runs.
    torch.testing.assert_close((grid.apply(x) * v).sum(), (x * grid.apply_transpose(v)).sum())
