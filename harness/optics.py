"""Differentiable 4F optical encoder (DESIGN.md section 3).

Geometry, at the defaults (λ = 532 nm, f = 100 mm, SLM pitch p = 8 µm, N = 2 n):

    input-plane pixel   dx    = λ f / (N p)          (104 µm at N = 64)
    pupil radius        ρ_max = N p / 2              (0.256 mm at N = 64)
    numerical aperture  NA    = ρ_max / f
    camera defocus      φ(ρ)  = −π Δz ρ² / (λ f²);   one wave at the pupil edge is Δz = 2 λ f² / ρ_max²

Forward model for intensities I (B, 1, n, n):

    u = sqrt(I^γ) zero-padded to N x N;  U = FFT(u)
    φ_slm = LUT(quantize(wrap(φ + noise)))  [blurred by fringing];  M = A ((1-η) e^{iφ_slm} + η)
    M <- shift/rotate(M) (the SLM moves);  M <- M exp(i (2π W_zernike − π Δz ρ²/(λ f²) + camera tilt))
    frame = camera(crop(|IFFT(U · M)|²))

Everything is kept in the *centred* Fourier layout (DC at index N/2, as displayed on the SLM): a
(−1)^(x+y) checkerboard on the input makes FFT(u) centred, and the same sign pattern on the output
field vanishes in |·|², so no fftshift copies are needed.  The camera shift is an exact Fourier
tilt.  All parameters are per-sample tensors in :class:`Imperfections`; ``None`` means ideal.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from harness.sensor import Camera, CameraConfig

TWO_PI = 2.0 * math.pi
ZERNIKE_NAMES = ("defocus", "astig_0", "astig_45", "coma_x", "coma_y", "spherical")


class OpticsConfig(BaseModel):
    """Physical parameters of the 4F bench (SI units)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(32, ge=4, description="input / camera image size in pixels")
    pad: int = Field(2, ge=1, description="grid N = pad * n (zero padding against wrap-around)")
    wavelength: float = Field(532e-9, gt=0, description="metres")
    focal_length: float = Field(0.1, gt=0, description="metres, both lenses")
    slm_pitch: float = Field(8e-6, gt=0, description="metres")
    lut_bits: int | None = Field(8, ge=1, le=16, description="SLM phase LUT bits; None = continuous")
    aperture: Literal["circle", "none"] = "circle"
    aperture_fraction: float = Field(1.0, gt=0, le=1.0, description="aperture radius / (N p / 2)")
    camera: CameraConfig = CameraConfig()

    @property
    def N(self) -> int:
        return self.pad * self.n

    @property
    def dx(self) -> float:
        """Input-plane (and camera) sampling in metres: λ f / (N p)."""
        return self.wavelength * self.focal_length / (self.N * self.slm_pitch)

    @property
    def rho_max(self) -> float:
        """Pupil radius in metres: N p / 2."""
        return self.N * self.slm_pitch / 2.0

    @property
    def na(self) -> float:
        return self.rho_max / self.focal_length

    @property
    def dz_per_wave(self) -> float:
        """Camera defocus Δz (m) giving one wave of W020 at the pupil edge: 2 λ f² / ρ_max²."""
        return 2.0 * self.wavelength * self.focal_length**2 / self.rho_max**2

    def describe(self) -> dict:
        return {
            **self.model_dump(),
            "N": self.N,
            "dx_m": self.dx,
            "rho_max_m": self.rho_max,
            "NA": self.na,
            "dz_per_wave_m": self.dz_per_wave,
        }


@dataclass
class Imperfections:
    """Per-sample non-idealities; units in docs/ARCHITECTURE.md.  ``None`` = ideal."""

    defocus_dz: torch.Tensor | None = None
    mask_shift: torch.Tensor | None = None
    mask_rotation: torch.Tensor | None = None
    camera_shift: torch.Tensor | None = None
    phase_noise: torch.Tensor | None = None
    lut_scale: torch.Tensor | None = None
    lut_offset: torch.Tensor | None = None
    phase_levels: torch.Tensor | None = None
    fringing: torch.Tensor | None = None
    zero_order: torch.Tensor | None = None
    zernike: torch.Tensor | None = None
    gamma: torch.Tensor | None = None
    photons: torch.Tensor | None = None
    read_noise: torch.Tensor | None = None
    dark_offset: torch.Tensor | None = None
    bit_depth: torch.Tensor | None = None
    gain: torch.Tensor | None = None
    prnu: torch.Tensor | None = None
    vignetting: torch.Tensor | None = None

    def items(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                yield f.name, value

    @property
    def is_ideal(self) -> bool:
        return next(self.items(), None) is None

    @property
    def batch_size(self) -> int | None:
        sizes = {v.shape[0] for _, v in self.items() if v.shape[0] != 1}
        if len(sizes) > 1:
            raise ValueError(f"Imperfections: inconsistent batch sizes {sorted(sizes)}")
        return sizes.pop() if sizes else None

    def merge(self, other: Imperfections | None) -> Imperfections:
        """Fields of ``other`` that are set override those of ``self``."""
        if other is None:
            return self
        return dataclasses.replace(self, **dict(other.items()))

    def map(self, fn) -> Imperfections:
        return dataclasses.replace(self, **{k: fn(v) for k, v in self.items()})

    def to(self, *args, **kwargs) -> Imperfections:
        return self.map(lambda v: v.to(*args, **kwargs))

    def select(self, index: torch.Tensor | slice) -> Imperfections:
        """Rows ``index`` of every per-sample field (fields of batch 1 broadcast and stay)."""
        return self.map(lambda v: v if v.shape[0] == 1 else v[index])

    def as_dict(self) -> dict:
        """JSON-friendly nested lists (for bench.json and logging)."""
        return {k: v.detach().cpu().tolist() for k, v in self.items()}

    @classmethod
    def from_dict(cls, data: dict, device=None) -> Imperfections:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"Imperfections: unknown fields {sorted(unknown)}")
        return cls(**{k: torch.tensor(v, dtype=torch.float32, device=device) for k, v in data.items()})


def _col(value: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1) to broadcast over (B, k, N, N)."""
    return value.reshape(-1, 1, 1, 1)


def quantize_phase(phase: torch.Tensor, levels) -> torch.Tensor:
    """Wrap to [0, 2π) and round to ``levels`` equal steps; straight-through gradient."""
    wrapped = torch.remainder(phase, TWO_PI)
    step = TWO_PI / levels
    return wrapped + (torch.round(wrapped / step) * step - wrapped).detach()


class FourF(torch.nn.Module):
    """Phase-mask 4F encoder + camera: (B, 1, n, n) intensities -> (B, k, n, n) frames in [0, 1].

    ``init``: "zeros" (identity system), "random" (uniform phase), "edge" (Gerchberg-Saxton fit of
    signed edge-filter PSFs), a path to an exported mask, or a (k, N, N) tensor of phases.
    """

    def __init__(
        self,
        config: OpticsConfig | None = None,
        channels: int = 1,
        init: str | torch.Tensor = "random",
        seed: int = 0,
    ):
        super().__init__()
        from harness.masks import initial_phase

        self.config = cfg = config or OpticsConfig()
        phase = initial_phase(init, cfg, channels, seed)
        self.channels = phase.shape[0]
        self.phase = torch.nn.Parameter(phase)
        self.camera = Camera(cfg.camera)

        N, n = cfg.N, cfg.n
        j = torch.arange(N, dtype=torch.float32) - N // 2  # centred SLM pixel index, DC at N/2
        jy, jx = torch.meshgrid(j, j, indexing="ij")
        r = torch.sqrt(jx**2 + jy**2) / (N / 2)  # ρ / ρ_max
        theta = torch.atan2(jy, jx)
        aperture = (r <= cfg.aperture_fraction) if cfg.aperture == "circle" else torch.ones_like(r)
        zernike = torch.stack(
            [
                2 * r**2 - 1,
                r**2 * torch.cos(2 * theta),
                r**2 * torch.sin(2 * theta),
                (3 * r**3 - 2 * r) * torch.cos(theta),
                (3 * r**3 - 2 * r) * torch.sin(theta),
                6 * r**4 - 6 * r**2 + 1,
            ]
        )
        start = (N - n) // 2
        checker = 1.0 - 2.0 * ((torch.arange(N)[:, None] + torch.arange(N)[None, :]) % 2)
        self.register_buffer("aperture", aperture.float(), persistent=False)
        self.register_buffer("jx", jx, persistent=False)
        self.register_buffer("jy", jy, persistent=False)
        self.register_buffer("rho2", (jx**2 + jy**2) * cfg.slm_pitch**2, persistent=False)
        self.register_buffer("zernike_basis", zernike, persistent=False)
        self.register_buffer("checker", checker[start : start + n, start : start + n].float(),
                             persistent=False)
        self._start = start

    # ----------------------------------------------------------------- SLM and pupil
    def levels(self, imp: Imperfections | None = None):
        if imp is not None and imp.phase_levels is not None:
            return _col(imp.phase_levels.to(self.phase))
        bits = self.config.lut_bits
        return None if bits is None else float(2**bits)

    def slm_phase(self, imp: Imperfections | None = None) -> torch.Tensor:
        """Phase shown by the SLM: LUT(quantize(wrap(φ + noise))), blurred by fringing.

        (k, N, N) for an ideal display, (B, k, N, N) when per-sample fields are set.
        """
        phase = self.phase
        if imp is not None and imp.phase_noise is not None:
            phase = phase + imp.phase_noise.to(phase)
        levels = self.levels(imp)
        phase = torch.remainder(phase, TWO_PI) if levels is None else quantize_phase(phase, levels)
        if imp is None:
            return phase
        if phase.dim() == 3 and any(
            v is not None for v in (imp.lut_scale, imp.lut_offset, imp.fringing)
        ):
            phase = phase.unsqueeze(0)
        if imp.lut_scale is not None:
            phase = phase * _col(imp.lut_scale.to(phase))
        if imp.lut_offset is not None:
            phase = phase + _col(imp.lut_offset.to(phase))
        if imp.fringing is not None:
            phase = gaussian_blur_fft(phase, imp.fringing.to(phase))
        return phase

    def slm_field(self, imp: Imperfections | None = None) -> torch.Tensor:
        """Complex SLM transmission A ((1-η) e^{iφ} + η) after the SLM shift / rotation."""
        phase = self.slm_phase(imp)
        field = torch.polar(self.aperture.expand_as(phase), phase)
        if imp is None:
            return field
        if imp.zero_order is not None:
            eta = _col(imp.zero_order.to(phase))
            field = (1 - eta) * field + eta * self.aperture
        if imp.mask_shift is not None or imp.mask_rotation is not None:
            field = self._move(field, imp)
        return field

    def _move(self, field: torch.Tensor, imp: Imperfections) -> torch.Tensor:
        """Resample the SLM field shifted by (δx, δy) pixels and rotated by θ (bilinear)."""
        batch = imp.batch_size or 1
        if field.dim() == 3:
            field = field.unsqueeze(0)
        field = field.expand(batch, *field.shape[1:])
        k, N = field.shape[1], field.shape[-1]
        x, y = self.jx, self.jy
        if imp.mask_shift is not None:
            shift = imp.mask_shift.to(x)
            x = x - shift[:, 0, None, None]
            y = y - shift[:, 1, None, None]
        if imp.mask_rotation is not None:
            rot = imp.mask_rotation.to(x)[:, None, None]
            c, s = torch.cos(rot), torch.sin(rot)
            x, y = c * x + s * y, -s * x + c * y
        x, y = torch.broadcast_tensors(x, y)
        scale = 2.0 / (N - 1)
        grid = torch.stack(((x + N // 2) * scale - 1, (y + N // 2) * scale - 1), dim=-1)
        grid = grid.expand(batch, N, N, 2)
        parts = torch.view_as_real(field).permute(0, 1, 4, 2, 3).reshape(batch, 2 * k, N, N)
        moved = torch.nn.functional.grid_sample(
            parts, grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )
        moved = moved.reshape(batch, k, 2, N, N).permute(0, 1, 3, 4, 2).contiguous()
        return torch.view_as_complex(moved)

    def pupil_phase(self, imp: Imperfections | None) -> torch.Tensor | None:
        """System pupil phase (B, 1, N, N) in radians: Zernike + camera defocus + camera tilt."""
        if imp is None:
            return None
        terms = []
        if imp.zernike is not None:
            waves = torch.einsum("bz,zhw->bhw", imp.zernike.to(self.jx), self.zernike_basis)
            terms.append(TWO_PI * waves[:, None])
        if imp.defocus_dz is not None:
            cfg = self.config
            curvature = -math.pi / (cfg.wavelength * cfg.focal_length**2)
            terms.append(curvature * _col(imp.defocus_dz.to(self.jx)) * self.rho2)
        if imp.camera_shift is not None:
            t = imp.camera_shift.to(self.jx)
            tilt = t[:, 0, None, None] * self.jx + t[:, 1, None, None] * self.jy
            terms.append((-TWO_PI / self.config.N) * tilt[:, None])
        if not terms:
            return None
        return sum(terms[1:], terms[0])

    def mask(self, imp: Imperfections | None = None) -> torch.Tensor:
        """Complex Fourier-plane mask, centred layout: (k, N, N) ideal or (B, k, N, N)."""
        field = self.slm_field(imp)
        pupil = self.pupil_phase(imp)
        if pupil is not None:
            field = field * torch.polar(torch.ones_like(pupil), pupil)
        return field

    # ----------------------------------------------------------------- propagation
    def field(self, images: torch.Tensor, imp: Imperfections | None = None) -> torch.Tensor:
        """Output field on the full N x N grid (B, k, N, N), up to a (−1)^(x+y) sign."""
        cfg = self.config
        if images.dim() != 4 or images.shape[1] != 1 or images.shape[-1] != cfg.n:
            raise ValueError(f"expected images (B, 1, {cfg.n}, {cfg.n}), got {tuple(images.shape)}")
        intensity = images.to(self.phase.dtype)
        if imp is not None and imp.gamma is not None:
            intensity = intensity.clamp_min(0) ** _col(imp.gamma.to(intensity))
        amplitude = torch.sqrt(intensity.clamp_min(0)) * self.checker
        pad = (self._start, cfg.N - cfg.n - self._start)
        u = torch.nn.functional.pad(amplitude, pad + pad)
        spectrum = torch.fft.fft2(u)
        return torch.fft.ifft2(spectrum * self.mask(imp))

    def intensity(self, images: torch.Tensor, imp: Imperfections | None = None) -> torch.Tensor:
        """Optical intensity on the camera window (B, k, n, n), before the sensor."""
        out = self.field(images, imp)
        s, n = self._start, self.config.n
        crop = torch.view_as_real(out[..., s : s + n, s : s + n])
        return crop.square().sum(-1)

    def forward(
        self,
        images: torch.Tensor,
        imp: Imperfections | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        return self.camera(self.intensity(images, imp), imp, generator)


def gaussian_blur_fft(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Circular Gaussian blur of (B, k, N, N) with per-sample σ (pixels), via rFFT:
    X(f) exp(−2π² σ² |f|²)."""
    N = x.shape[-1]
    fy = torch.fft.fftfreq(N, device=x.device, dtype=x.dtype)
    fx = torch.fft.rfftfreq(N, device=x.device, dtype=x.dtype)
    f2 = fy[:, None] ** 2 + fx[None, :] ** 2
    transfer = torch.exp(-2 * math.pi**2 * _col(sigma) ** 2 * f2)
    return torch.fft.irfft2(torch.fft.rfft2(x) * transfer, s=x.shape[-2:])
