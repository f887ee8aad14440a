"""Phase masks: initialisation, export for a phase SLM, and import.

Exported folder (what a lab loads onto its SLM):
    mask_c{i}.png   8-bit (or 16-bit for lut_bits > 8) gray levels
                    g = round(wrap(φ) / 2π · 2^bits) mod 2^bits, N x N, centred layout (optical
                    axis at pixel N/2)
    mask.npz        ``phase``: float32 (k, N, N) radians
    optics.json     the optical parameters (OpticsConfig + derived N, dx, NA)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from harness.errors import SimgapError
from harness.files import atomic_write, read_json_object, staged_dir, write_text
from harness.optics.functional import TWO_PI
from harness.optics.params import OpticsConfig

# Signed 3x3 edge kernels used as target amplitude PSFs for the "edge" initialisation.
EDGE_KERNELS = (
    ((-1, 0, 1), (-2, 0, 2), (-1, 0, 1)),  # Sobel x
    ((-1, -2, -1), (0, 0, 0), (1, 2, 1)),  # Sobel y
    ((-2, -1, 0), (-1, 0, 1), (0, 1, 2)),  # diagonal
    ((0, 1, 2), (-1, 0, 1), (-2, -1, 0)),  # anti-diagonal
    ((0, 1, 0), (1, -4, 1), (0, 1, 0)),  # Laplacian
)


def initial_phase(init, config, channels: int, seed: int = 0) -> torch.Tensor:
    """(k, N, N) float32 phases for ``init`` in {zeros, random, edge}, a tensor, or a saved mask."""
    N = config.N
    if isinstance(init, torch.Tensor):
        phase = init.detach().float()
        if phase.dim() == 2:
            phase = phase[None]
        if phase.shape[-2:] != (N, N):
            raise SimgapError(f"mask: phase shape {tuple(phase.shape)} does not match grid N={N}")
        return phase.clone()
    if init == "zeros":
        return torch.zeros(channels, N, N)
    if init == "random":
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(channels, N, N, generator=gen) * TWO_PI
    if init == "edge":
        return gerchberg_saxton_edges(config, channels, seed)
    path = Path(str(init))
    if path.exists():
        phase, _ = load_mask(path)
        return initial_phase(phase, config, channels, seed)
    raise SimgapError(f"mask init: '{init}' is not zeros, random, edge or an existing mask path")


def gerchberg_saxton_edges(
    config, channels: int, seed: int = 0, iterations: int = 60
) -> torch.Tensor:
    """Phase-only masks whose amplitude PSF approximates signed edge kernels.

    Alternates between the pupil (constraint: amplitude = aperture A) and the PSF plane
    (constraint: field = target kernel inside its 3x3 support, zero outside); the pupil phase of
    the last iterate is the mask.  Centred layout, as the SLM shows it.
    """
    N = config.N
    j = torch.arange(N) - N // 2
    r = torch.sqrt(j[:, None] ** 2 + j[None, :] ** 2) / (N / 2)
    if config.aperture == "circle":
        aperture = (r <= config.aperture_fraction).float()
    else:
        aperture = torch.ones(N, N)
    aperture = torch.fft.ifftshift(aperture)
    gen = torch.Generator().manual_seed(seed)
    phases = []
    for c in range(channels):
        kernel = torch.tensor(EDGE_KERNELS[c % len(EDGE_KERNELS)], dtype=torch.float32)
        target = torch.zeros(N, N, dtype=torch.complex64)
        target[:3, :3] = kernel.to(torch.complex64)
        target = torch.roll(target, shifts=(-1, -1), dims=(0, 1))  # kernel centre at the origin
        support = target.abs() > 0
        scale = math.sqrt(aperture.sum().item()) / (N * kernel.square().sum().sqrt().item())
        pupil = torch.polar(aperture, torch.rand(N, N, generator=gen) * TWO_PI)
        for _ in range(iterations):
            psf = torch.fft.ifft2(pupil)
            psf = torch.where(support, target * scale, torch.zeros_like(psf))
            pupil = torch.polar(aperture, torch.angle(torch.fft.fft2(psf)))
        phases.append(torch.remainder(torch.fft.fftshift(torch.angle(pupil)), TWO_PI))
    return torch.stack(phases).float()


def gray_levels(phase: torch.Tensor, bits: int) -> np.ndarray:
    """SLM gray levels round(wrap(φ)/2π · 2^bits) mod 2^bits."""
    levels = 2**bits
    wrapped = torch.remainder(phase.detach().cpu().double(), TWO_PI)
    return (torch.round(wrapped / TWO_PI * levels).long() % levels).numpy()


def export_mask(phase: torch.Tensor, config, out_dir: str | Path) -> Path:
    """Write bitmaps + npz + optics.json into ``out_dir``; returns the folder.

    A new folder appears whole (built under a temporary name).  An existing one may hold other
    files (``simgap export-mask`` writes the inputs next to the mask): only its mask files are
    replaced, each atomically, and bitmaps of channels the new mask lacks are removed.
    """
    out_dir = Path(out_dir)
    if not out_dir.exists():
        with staged_dir(out_dir) as tmp:
            _write_mask_files(phase, config, tmp)
        return out_dir
    written = _write_mask_files(phase, config, out_dir)
    for p in out_dir.glob("mask_c*"):
        if p.name not in written:
            p.unlink()
    return out_dir


def _write_mask_files(phase: torch.Tensor, config, folder: Path) -> set[str]:
    """The bitmaps, mask.npz and optics.json of ``phase`` in ``folder``; their names."""
    bits = config.lut_bits or 8
    names = set()
    for c, g in enumerate(gray_levels(phase, bits)):
        if bits <= 8:
            image = Image.fromarray(g.astype(np.uint8), mode="L")
        else:
            image = Image.fromarray(g.astype(np.uint16))
        atomic_write(folder / f"mask_c{c}.png", lambda tmp, im=image: im.save(tmp, format="PNG"))
        names.add(f"mask_c{c}.png")
    array = phase.detach().cpu().float().numpy()
    atomic_write(folder / "mask.npz", lambda tmp: _save_npz(tmp, array))
    write_text(folder / "optics.json", json.dumps(config.describe(), indent=2))
    return names | {"mask.npz", "optics.json"}


def _save_npz(path: Path, phase: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append .npz to a path
        np.savez(f, phase=phase)


def load_mask(path: str | Path) -> tuple[torch.Tensor, dict | None]:
    """Read (phase (k, N, N), optics dict or None) from an exported folder or a mask.npz."""
    path = Path(path)
    npz = path / "mask.npz" if path.is_dir() else path
    if not npz.exists():
        raise SimgapError(f"{npz}: mask file not found")
    try:
        with np.load(npz, allow_pickle=False) as data:
            phase = torch.from_numpy(np.asarray(data["phase"], dtype=np.float32))
    except (KeyError, ValueError, OSError) as exc:
        raise SimgapError(f"{npz}: not a mask file with a 'phase' array ({exc})") from None
    if phase.dim() != 3 or phase.shape[-1] != phase.shape[-2] or not torch.isfinite(phase).all():
        raise SimgapError(
            f"{npz}: 'phase' must be a finite (k, N, N) array, got {tuple(phase.shape)}"
        )
    meta_path = npz.parent / "optics.json"
    meta = read_json_object(meta_path) if meta_path.exists() else None
    return phase, meta


def optics_config_from_meta(meta: dict) -> OpticsConfig:
    """OpticsConfig from an optics.json dict (derived keys are dropped)."""
    keys = set(OpticsConfig.model_fields)
    return OpticsConfig(**{k: v for k, v in meta.items() if k in keys})
