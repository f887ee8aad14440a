"""Mask initialisation, export for an SLM and import (harness.optics.masks)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from harness.errors import SimgapError
from harness.optics import FourF, OpticsConfig
from harness.optics.functional import TWO_PI
from harness.optics.masks import export_mask, gray_levels, load_mask


def test_edge_init_gives_edge_detecting_psf():
    cfg = OpticsConfig(n=32, lut_bits=None)
    enc = FourF(cfg, channels=2, init="edge")
    # A uniform field has no edges: its response in the interior is much darker than at the borders.
    images = torch.zeros(1, 1, 32, 32)
    images[..., 8:24, 8:24] = 1.0
    out = enc.intensity(images)[0]
    interior = out[:, 12:20, 12:20].mean()
    left_right = out[0, 10:22, [7, 8, 23, 24]].mean()
    top_bottom = out[1, [7, 8, 23, 24], 10:22].mean()
    assert left_right > 5 * interior and top_bottom > 5 * interior


def test_mask_export_import_round_trip(tmp_path):
    cfg = OpticsConfig(n=16)
    enc = FourF(cfg, channels=3, init="random", seed=7)
    out = export_mask(enc.phase, cfg, tmp_path / "mask")
    bitmap = np.asarray(Image.open(out / "mask_c1.png"))
    assert bitmap.dtype == np.uint8 and bitmap.shape == (32, 32)
    np.testing.assert_array_equal(bitmap, gray_levels(enc.phase[1], 8))
    phase, meta = load_mask(out)
    torch.testing.assert_close(phase, enc.phase.detach())
    assert meta["N"] == 32 and meta["wavelength"] == pytest.approx(532e-9)
    again = FourF(cfg, init=str(out))
    torch.testing.assert_close(again.phase.detach(), enc.phase.detach())
    # gray level g shows phase 2π g / 256 on the SLM
    shown = torch.tensor(bitmap, dtype=torch.float32) * TWO_PI / 256
    difference = torch.remainder(shown - enc.slm_phase()[1] + math.pi, TWO_PI) - math.pi
    assert difference.abs().max() < 1e-4


def test_bad_mask_files_raise_one_line_errors(tmp_path):
    with pytest.raises(SimgapError, match="mask file not found"):
        load_mask(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, other=np.zeros(3))
    with pytest.raises(SimgapError, match="bad.npz"):
        load_mask(bad)
    with pytest.raises(SimgapError, match="does not match grid"):
        FourF(OpticsConfig(n=16), init=torch.zeros(1, 8, 8))
