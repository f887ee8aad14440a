"""Closed forms of the bench effects beyond the policy families: an SLM off the Fourier plane,
a LUT scale that varies across the panel, and display pixel crosstalk."""

import math

import pytest
import torch

from harness.optics import FourF, Imperfections, OpticsConfig
from harness.optics.functional import TWO_PI

IDEAL = OpticsConfig(n=32, aperture="none", lut_bits=None)


def test_slm_axial_offset_is_a_quadratic_input_phase_of_the_stated_size():
    """exp(−iπ d x² / (λ f²)): a phase on the input alone leaves the frame of an empty mask
    unchanged (|u e^{iψ}|² = |u|²)."""
    cfg, d = IDEAL, 2e-3
    images = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    imp = Imperfections(slm_axial_offset=torch.tensor([d]))
    flat = FourF(cfg, init="zeros")
    torch.testing.assert_close(flat.intensity(images, imp), images, atol=1e-5, rtol=0)
    mask = FourF(cfg, init="random", seed=1)
    moved = mask.intensity(images, imp)
    assert (moved - mask.intensity(images)).abs().max() > 0.05
    # The field's phase is the quadratic: the field of a point at x0 carries −π d |x0 dx|²/(λf²).
    point = torch.zeros(1, 1, 32, 32)
    point[..., 16 + 5, 16 - 3] = 1.0
    ratio = flat.field(point, imp) / flat.field(point)
    expected = -math.pi * d * (25 + 9) * cfg.dx**2 / (cfg.wavelength * cfg.focal_length**2)
    angle = torch.angle(ratio[0, 0, 32 + 5, 32 - 3]).item()  # the field is on the N grid
    assert math.remainder(angle - expected, TWO_PI) == pytest.approx(0.0, abs=1e-3)


def test_lut_scale_tilt_scales_the_shown_phase_linearly_across_the_panel():
    cfg = OpticsConfig(n=8, lut_bits=None)
    N = cfg.N
    enc = FourF(cfg, init=torch.full((1, N, N), 2.0))
    shown = enc.slm_phase(Imperfections(lut_scale=torch.tensor([1.1]),
                                        lut_scale_tilt=torch.tensor([[0.1, -0.2]])))[0, 0]
    j = torch.arange(N) - N // 2
    expected = 2.0 * 1.1 * (1 + 0.1 * j[None, :] / (N / 2) - 0.2 * j[:, None] / (N / 2))
    torch.testing.assert_close(shown, expected.float(), atol=1e-5, rtol=0)


def test_display_crosstalk_spreads_a_pixel_to_its_four_neighbours():
    enc = FourF(IDEAL, init="zeros")
    point = torch.zeros(1, 1, 32, 32)
    point[..., 10, 20] = 1.0
    out = enc.intensity(point, Imperfections(display_crosstalk=torch.tensor([0.05])))[0, 0]
    expected = torch.zeros(32, 32)
    expected[10, 20] = 0.8
    expected[9, 20] = expected[11, 20] = expected[10, 19] = expected[10, 21] = 0.05
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("rotation", [None, 0.03])
def test_camera_fill_averages_the_intensity_over_the_pixel_box(rotation):
    """A tiny box is a point sample, a real box another frame (tests/optics/test_reference.py
    pins its values against Gauss-Legendre sums of the direct DTFT), on both paths."""
    cfg = OpticsConfig(n=16, aperture="none", lut_bits=None)
    enc = FourF(cfg, channels=2, init="random", seed=0)
    images = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    base = {} if rotation is None else {"mask_rotation": torch.tensor([rotation])}
    point = enc.intensity(images, Imperfections(**base))
    tiny = enc.intensity(images, Imperfections(camera_fill=torch.tensor([1e-4, 1e-4]), **base))
    torch.testing.assert_close(tiny, point, atol=1e-5, rtol=1e-4)
    full = enc.intensity(images, Imperfections(camera_fill=torch.tensor([1.0, 0.5]), **base))
    assert (full - point).abs().max() > 1e-2
