"""The fast 4F path against an independent numpy model (tests/optics/reference.py), one
Imperfections field at a time and all together, with controls that must come out different.

The reference builds the SLM phase (wrap, level mod L, LUT, fringing), the mask
A ((1 − η) e^{iφ} + η) and the pupil (Zernike, camera defocus, camera shift) at each SLM pixel's
position R(θ) j + δ from the formulas of docs/DESIGN.md section 3 and sums the DTFT directly.
"""

import math

import numpy as np
import pytest
import torch

from harness.optics import FourF, Imperfections, OpticsConfig
from tests.optics.reference import aperture, centred, dtft_intensity, fft_intensity

CFG = OpticsConfig(n=8, lut_bits=8, aperture_fraction=0.9)
N, L = CFG.N, 2**8
GEN = np.random.default_rng(0)
PHASE = GEN.uniform(0, 2 * math.pi, (1, N, N))
IMAGE = GEN.uniform(0, 1, (8, 8))
NOISE = 0.3 * GEN.standard_normal((N, N))
DZ = 0.4 * CFG.dz_per_wave
ZERNIKE = [0.1, 0.05, -0.07, 0.04, 0.03, 0.02]
CASES = {
    "ideal": {},
    "defocus_dz": {"defocus_dz": DZ},
    "mask_shift": {"mask_shift": (0.3, -0.6)},
    "mask_rotation": {"mask_rotation": 0.02},
    "camera_shift": {"camera_shift": (0.7, -0.4)},
    "phase_noise": {"phase_noise": NOISE},
    "lut_scale": {"lut_scale": 1.1},
    "lut_offset": {"lut_offset": 0.5, "zero_order": 0.1},
    "phase_levels": {"phase_levels": 4.0},
    "fringing": {"fringing": 0.8},
    "zero_order": {"zero_order": 0.1},
    "zernike": {"zernike": ZERNIKE},
    "gamma": {"gamma": 1.8},
    "slm_axial_offset": {"slm_axial_offset": 4e-3},
    "lut_scale_tilt": {"lut_scale_tilt": (0.05, -0.08)},
    "display_crosstalk": {"display_crosstalk": 0.05},
    "camera_fill": {"camera_fill": 0.8},
}
CASES["all"] = {k: v for case in CASES.values() for k, v in case.items()}


def slm_mask(p: dict, phase=PHASE) -> np.ndarray:
    """A ((1 − η) e^{iφ} + η), φ = LUT(2π q / L) blurred, q = round(wrap(φ + noise) L/2π) mod L."""
    levels = p.get("phase_levels", L)
    wrapped = np.mod(phase + p.get("phase_noise", 0.0), 2 * math.pi)
    q = np.mod(np.round(wrapped * levels / (2 * math.pi)), levels)
    jy, jx = np.meshgrid(centred(N), centred(N), indexing="ij")
    ax, ay = p.get("lut_scale_tilt", (0.0, 0.0))
    scale = p.get("lut_scale", 1.0) * (1 + (ax * jx + ay * jy) / (N / 2))
    shown = scale * 2 * math.pi * q / levels + p.get("lut_offset", 0.0)
    if "fringing" in p:
        f = np.fft.fftfreq(N)
        transfer = np.exp(-2 * math.pi**2 * p["fringing"] ** 2 * (f[:, None] ** 2 + f**2))
        shown = np.real(np.fft.ifft2(np.fft.fft2(shown) * transfer))
    eta = p.get("zero_order", 0.0)
    return aperture(N, CFG.aperture_fraction) * ((1 - eta) * np.exp(1j * shown) + eta)


def pupil_phase(p: dict):
    """Phase at SLM-plane points (x, y) in SLM pixels: Zernike, defocus, camera tilt."""

    def phase(x, y):
        total = np.zeros_like(x)
        r, t = np.hypot(x, y) / (N / 2), np.arctan2(y, x)
        if "zernike" in p:
            basis = (2 * r**2 - 1, r**2 * np.cos(2 * t), r**2 * np.sin(2 * t),
                     (3 * r**3 - 2 * r) * np.cos(t), (3 * r**3 - 2 * r) * np.sin(t),
                     6 * r**4 - 6 * r**2 + 1)
            total += 2 * math.pi * sum(z * b for z, b in zip(p["zernike"], basis))
        if "defocus_dz" in p:
            rho2 = (x**2 + y**2) * CFG.slm_pitch**2  # metres²
            total -= math.pi * p["defocus_dz"] * rho2 / (CFG.wavelength * CFG.focal_length**2)
        if "camera_shift" in p:
            tx, ty = p["camera_shift"]
            total -= 2 * math.pi * (tx * x + ty * y) / N
        return total

    return phase


def displayed(p: dict) -> np.ndarray:
    """I^γ with crosstalk c: (1 − 4c) I + c (the 4 neighbours), zero outside the window."""
    image = IMAGE ** p.get("gamma", 1.0)
    c = p.get("display_crosstalk", 0.0)
    padded = np.pad(image, 1)
    around = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    return (1 - 4 * c) * image + c * around


def input_phase(p: dict):
    """−π d |x|² / (λ f²) for an SLM off the Fourier plane by d, x in metres (pixels × dx)."""
    d = p.get("slm_axial_offset", 0.0)
    return lambda x, y: -math.pi * d * (x**2 + y**2) * CFG.dx**2 / (
        CFG.wavelength * CFG.focal_length**2)


def reference(p: dict, phase=PHASE) -> np.ndarray:
    """The frame; with a fill factor a, the mean of |w|² over each pixel's a x a box (10 x 10
    Gauss-Legendre nodes, each a direct DTFT)."""
    args = (displayed(p), slm_mask(p, phase), p.get("mask_rotation", 0.0),
            p.get("mask_shift", (0.0, 0.0)), pupil_phase(p), input_phase(p))
    if "camera_fill" not in p:
        return dtft_intensity(*args)[0]
    nodes, weights = np.polynomial.legendre.leggauss(10)
    nodes, weights = nodes * p["camera_fill"] / 2, weights / 2
    return sum(wy * wx * dtft_intensity(*args, out_offset=(tx, ty))[0]
               for ty, wy in zip(nodes, weights) for tx, wx in zip(nodes, weights))


def imperfections(p: dict) -> Imperfections:
    def tensor(name, value):
        value = torch.tensor(np.asarray(value), dtype=torch.float32)
        if name == "phase_noise":
            return value[None, None]
        return value[None] if value.dim() else value.reshape(1)

    return Imperfections(**{k: tensor(k, v) for k, v in p.items()})


def fast(p: dict) -> np.ndarray:
    enc = FourF(CFG, init=torch.tensor(PHASE, dtype=torch.float32))
    with torch.no_grad():
        return enc.intensity(torch.tensor(IMAGE, dtype=torch.float32)[None, None],
                             imperfections(p) if p else None)[0, 0].double().numpy()


def relative(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("case", list(CASES))
def test_fast_path_matches_the_reference_for_every_field(case):
    p = CASES[case]
    expected = reference(p)
    error = relative(fast(p), expected)
    assert error < 2e-5, error
    if p:  # the field changes the frame by far more than the tolerance
        assert relative(reference({}), expected) > 100 * max(error, 1e-5)


def test_reference_fft_and_dtft_agree_on_the_aligned_system():
    mask = slm_mask({})
    assert relative(fft_intensity(IMAGE, mask)[0], dtft_intensity(IMAGE, mask)[0]) < 1e-10


def test_controls_come_out_different():
    """A conjugated mask and the opposite defocus sign are other frames (the reference test
    would catch a sign error in either)."""
    mask = slm_mask({})
    plain = dtft_intensity(IMAGE, mask)[0]
    assert relative(dtft_intensity(IMAGE, mask.conj())[0], plain) > 0.05
    assert relative(fast({}), dtft_intensity(IMAGE, mask.conj())[0]) > 0.05
    minus = reference({"defocus_dz": -DZ})
    assert relative(minus, reference({"defocus_dz": DZ})) > 0.05
    assert relative(fast({"defocus_dz": DZ}), minus) > 0.05

