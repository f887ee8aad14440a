"""The SLM LUT at the wrap edge: level q = round(wrap(φ) L / 2π) mod L on every path."""

import math

import pytest
import torch

from harness.optics import FourF, Imperfections, OpticsConfig
from harness.optics.fused import PhaseField
from harness.optics.masks import gray_levels

BITS = 3
LEVELS = 2**BITS
CFG = OpticsConfig(n=8, lut_bits=BITS, aperture="none")


def _edge_phase() -> torch.Tensor:
    """A random (2, N, N) mask with a third of its pixels within π/L below a multiple of 2π (the
    wrap edge), some of them one or two turns away."""
    gen = torch.Generator().manual_seed(0)
    N = CFG.N
    phase = torch.rand(2, N, N, generator=gen, dtype=torch.float64) * 2 * math.pi
    edge = torch.rand(2, N, N, generator=gen, dtype=torch.float64) < 1 / 3
    below = torch.rand(2, N, N, generator=gen, dtype=torch.float64) * 0.99 * math.pi / LEVELS
    turns = torch.randint(-1, 3, (2, N, N), generator=gen).double()
    phase = torch.where(edge, 2 * math.pi * turns - below, phase)
    return phase.float()


def test_phase_just_below_two_pi_is_level_zero_with_a_lut_scale():
    phase = _edge_phase()
    edge = (torch.remainder(phase.double(), 2 * math.pi) > 2 * math.pi - math.pi / LEVELS)
    assert edge.sum() > 20
    enc = FourF(CFG, channels=2, init=phase)
    scale, offset = 1.1, 0.3
    shown = enc.slm_phase(Imperfections(lut_scale=torch.tensor([scale]),
                                        lut_offset=torch.tensor([offset])))[0]
    # q mod L, as the exported gray levels: the LUT maps q to scale 2π q / L + offset.
    q = torch.from_numpy(gray_levels(phase, BITS)).float()
    torch.testing.assert_close(shown, scale * 2 * math.pi * q / LEVELS + offset, atol=1e-5, rtol=0)
    torch.testing.assert_close(shown[edge], torch.full_like(shown[edge], offset), atol=1e-5,
                               rtol=0)
    assert q.max() == LEVELS - 1


def test_fast_and_lut_paths_agree_at_the_wrap_edge():
    """The ideal-LUT fast path (PhaseField rounds φ without wrapping) and the LUT path (wrap,
    level mod L, scale) give the same field at scale 1, and e^{i s 2π q / L} at scale s."""
    phase = _edge_phase()
    enc = FourF(CFG, channels=2, init=phase)
    fast = enc.slm_field()
    lut = enc.slm_field(Imperfections(lut_scale=torch.tensor([1.0])))[0]
    torch.testing.assert_close(lut, fast, atol=2e-6, rtol=0)
    q = torch.from_numpy(gray_levels(phase, BITS)).double()
    for scale in (0.9, 1.1):
        shown = enc.slm_field(Imperfections(lut_scale=torch.tensor([scale])))[0]
        expected = torch.polar(torch.ones_like(q), scale * 2 * math.pi * q / LEVELS)
        torch.testing.assert_close(shown, expected.to(shown.dtype), atol=2e-6, rtol=0)
    # The level-L reading (2π·scale at the edge) is a different field: the check can fail.
    edge_level = torch.where(q == 0, torch.full_like(q, float(LEVELS)), q)
    wrong = torch.polar(torch.ones_like(q), 1.1 * 2 * math.pi * edge_level / LEVELS)
    shown = enc.slm_field(Imperfections(lut_scale=torch.tensor([1.1])))[0]
    assert (shown - wrong.to(shown.dtype)).abs().max() > 0.5


@pytest.mark.parametrize("levels", [LEVELS, torch.tensor([[[[4.0]]], [[[8.0]]]])])
def test_quantized_levels_stay_below_two_pi(levels):
    phase = _edge_phase()
    enc = FourF(CFG, channels=2, init=phase)
    imp = None if isinstance(levels, int) else Imperfections(phase_levels=levels.reshape(-1))
    shown = enc.slm_phase(imp)
    assert shown.min() >= 0 and shown.max() < 2 * math.pi - 1e-3
    fast = PhaseField.apply(enc.phase.detach(), enc.aperture, float(LEVELS))
    if imp is None:
        torch.testing.assert_close(torch.polar(torch.ones_like(shown), shown), fast, atol=2e-6,
                                   rtol=0)
