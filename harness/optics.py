"""Differentiable 4F optical encoder (DESIGN.md section 3).

Geometry, at the defaults (λ = 532 nm, f = 100 mm, SLM pitch p = 8 µm, N = 2 n):

    input-plane pixel   dx    = λ f / (N p)          (104 µm at N = 64)
    pupil radius        ρ_max = N p / 2              (0.256 mm at N = 64)
    numerical aperture  NA    = ρ_max / f
    camera defocus      φ(ρ)  = −π Δz ρ² / (λ f²);   one wave at the pupil edge is Δz = 2 λ f² / ρ_max²

Forward model for intensities I (B, 1, n, n):

    u = sqrt(I^γ) zero-padded to N x N;  U = FFT(u)
    φ_slm = LUT(quantize(wrap(φ + noise)))  [blurred by fringing];  M = A ((1-η) e^{iφ_slm} + η)
    M'(ρ) = M(R⁻¹(ρ − δ)) for an SLM shifted by δ and rotated by R (see FourF.field)
    P(ρ)  = exp(i (2π W_zernike − π Δz ρ²/(λ f²) − 2π t·ρ/N))   system pupil, camera shift t
    frame = camera(crop(|IFFT(U · M' · P)|²))

Everything is kept in the *centred* Fourier layout (DC at index N/2, as displayed on the SLM): a
(−1)^(x+y) checkerboard on the input makes FFT(u) centred, and the same sign pattern on the output
field vanishes in |·|², so no fftshift copies are needed.  The camera shift is an exact Fourier
tilt; an SLM shift becomes an exact tilt of the input (the mask is never resampled, which would
lose energy between the pixels of e^{iφ}).  All parameters are per-sample tensors in :class:`Imperfections`; ``None`` means ideal.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from harness.native import kernels_for
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


def cis(phase: torch.Tensor, amplitude: torch.Tensor | None = None) -> torch.Tensor:
    """A e^{iφ} = A cos φ + i A sin φ (vectorized cos and sin: torch.polar is ~2.5x slower on CPU)."""
    cos, sin = torch.cos(phase), torch.sin(phase)
    if amplitude is not None:
        cos, sin = cos * amplitude, sin * amplitude
    return torch.complex(cos, sin)


def _col(value: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1) to broadcast over (B, k, N, N)."""
    return value.reshape(-1, 1, 1, 1)


def zernike_basis(r: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Zernike terms in the order of ``ZERNIKE_NAMES`` at normalized radius r = ρ / ρ_max:
    2r²−1, r² cos 2θ, r² sin 2θ, (3r³−2r) cos θ, (3r³−2r) sin θ, 6r⁴−6r²+1."""
    r2 = r * r
    coma = 3 * r2 * r - 2 * r
    return (
        2 * r2 - 1,
        r2 * torch.cos(2 * theta),
        r2 * torch.sin(2 * theta),
        coma * torch.cos(theta),
        coma * torch.sin(theta),
        6 * r2 * r2 - 6 * r2 + 1,
    )


def _wrapped(phase: torch.Tensor) -> torch.Tensor:
    """φ − 2π ⌊φ / 2π⌋ in [0, 2π); call without a graph (1.5x faster than torch.remainder)."""
    return phase - torch.floor(phase * (1.0 / TWO_PI)).mul_(TWO_PI)


def wrap_phase(phase: torch.Tensor) -> torch.Tensor:
    """Wrap to [0, 2π); gradient 1 (the wrap is a constant offset, computed without a graph)."""
    with torch.no_grad():
        delta = _wrapped(phase).sub_(phase)
    return phase + delta


def quantize_phase(phase: torch.Tensor, levels) -> torch.Tensor:
    """Wrap to [0, 2π) and round to ``levels`` equal steps; straight-through gradient (wrap and
    rounding are computed in place without a graph: d/dφ = 1)."""
    step = TWO_PI / levels
    with torch.no_grad():
        delta = (_wrapped(phase) / step).round_().mul_(step).sub_(phase)
    return phase + delta


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
        aperture = (r <= cfg.aperture_fraction) if cfg.aperture == "circle" else torch.ones_like(r)
        start = (N - n) // 2
        checker = 1.0 - 2.0 * ((torch.arange(N)[:, None] + torch.arange(N)[None, :]) % 2)
        self.register_buffer("aperture", aperture.float(), persistent=False)
        self.register_buffer("jx", jx, persistent=False)
        self.register_buffer("jy", jy, persistent=False)
        self.register_buffer("checker", checker.float(), persistent=False)
        self._start = start
        self._window = (slice(start, start + n), slice(start, start + n))

    # ----------------------------------------------------------------- SLM and pupil
    def levels(self, imp: Imperfections | None = None):
        if imp is not None and imp.phase_levels is not None:
            return _col(imp.phase_levels.to(self.phase))
        bits = self.config.lut_bits
        return None if bits is None else float(2**bits)

    def _commanded_phase(self, imp: Imperfections | None) -> torch.Tensor:
        """φ + phase noise: what the SLM is asked to show, before its LUT."""
        if imp is not None and imp.phase_noise is not None:
            return self.phase + imp.phase_noise.to(self.phase)
        return self.phase

    @staticmethod
    def _lut_is_ideal(imp: Imperfections | None) -> bool:
        return imp is None or all(
            v is None for v in (imp.lut_scale, imp.lut_offset, imp.fringing)
        )

    def slm_phase(self, imp: Imperfections | None = None) -> torch.Tensor:
        """Phase shown by the SLM: LUT(quantize(wrap(φ + noise))), blurred by fringing.

        (k, N, N) for an ideal display, (B, k, N, N) when per-sample fields are set.
        """
        phase = self._commanded_phase(imp)
        levels = self.levels(imp)
        phase = wrap_phase(phase) if levels is None else quantize_phase(phase, levels)
        if self._lut_is_ideal(imp):
            return phase
        if phase.dim() == 3:
            phase = phase.unsqueeze(0)
        if imp.lut_scale is not None:
            phase = phase * _col(imp.lut_scale.to(phase))
        if imp.lut_offset is not None:
            phase = phase + _col(imp.lut_offset.to(phase))
        if imp.fringing is not None:
            phase = gaussian_blur_fft(phase, imp.fringing.to(phase))
        return phase

    def slm_field(self, imp: Imperfections | None = None) -> torch.Tensor:
        """Complex SLM transmission A ((1-η) e^{iφ} + η), in the SLM's own coordinates.

        With an ideal LUT of integer levels, e^{iφ_slm} is e^{i Q(φ + noise)} and the wrap is a
        whole number of turns, so PhaseField quantizes on its own (no wrap, no separate graph).
        """
        levels = self.levels(imp)
        if self._lut_is_ideal(imp) and (levels is None or isinstance(levels, float)):
            field = PhaseField.apply(self._commanded_phase(imp), self.aperture, levels)
        else:
            field = PhaseField.apply(self.slm_phase(imp), self.aperture, None)
        if imp is not None and imp.zero_order is not None:
            eta = _col(imp.zero_order.to(field.real))
            field = (1 - eta) * field + eta * self.aperture
        return field

    def _rotated_grid(self, imp: Imperfections | None, sign: float = 1.0):
        """Per-sample centred coordinates R(sign θ)(x, y), (B, 1, N, N) each; None without
        rotation.  R(θ)(x, y) = (x cos θ − y sin θ, x sin θ + y cos θ)."""
        if imp is None or imp.mask_rotation is None:
            return None
        rot = _col(imp.mask_rotation.to(self.jx)) * sign
        c, s = torch.cos(rot), torch.sin(rot)
        return c * self.jx - s * self.jy, s * self.jx + c * self.jy

    def _resample(
        self, x: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor, first: int = 0
    ) -> torch.Tensor:
        """Bilinear samples at centred coordinates (gx, gy) of any (H, W) of ``x``, the square
        (B, C, L, L) crop of the N x N grid that starts at grid index ``first`` (zeros outside)."""
        size = x.shape[-1]
        offset, scale = self.config.N // 2 - first, 2.0 / (size - 1)
        height, width = gx.shape[-2:]
        grid = torch.stack(((gx + offset) * scale - 1, (gy + offset) * scale - 1), dim=-1)
        grid = grid.reshape(-1, height, width, 2).expand(x.shape[0], height, width, 2)
        return torch.nn.functional.grid_sample(
            x, grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )

    def pupil_phase(self, imp: Imperfections | None, grid=None) -> torch.Tensor | None:
        """System pupil phase (B, 1, N, N) in radians at the pupil points R ρ + δ.

        W = 2π Σ_j z_j Z_j(r, θ) − π Δz ρ² / (λ f²) − 2π t·ρ / N  (Zernike in waves, camera
        defocus Δz, camera shift t in camera pixels).  (R, δ) is the SLM rotation and shift: a
        mask moved on the SLM sees the fixed system pupil at shifted, rotated points.
        """
        if imp is None or all(
            v is None for v in (imp.zernike, imp.defocus_dz, imp.camera_shift)
        ):
            return None
        x, y = grid if grid is not None else (self.jx, self.jy)
        if imp.mask_shift is not None:
            shift = imp.mask_shift.to(self.jx)
            x = x + shift[:, 0, None, None, None]
            y = y + shift[:, 1, None, None, None]
        cfg = self.config
        terms = []
        if imp.zernike is not None:
            r = torch.sqrt(x**2 + y**2) / (cfg.N / 2)
            theta = torch.atan2(y, x)
            z = imp.zernike.to(self.jx)
            waves = sum(_col(z[:, i]) * term for i, term in enumerate(zernike_basis(r, theta)))
            terms.append(TWO_PI * waves)
        if imp.defocus_dz is not None:
            curvature = -math.pi * cfg.slm_pitch**2 / (cfg.wavelength * cfg.focal_length**2)
            terms.append(curvature * _col(imp.defocus_dz.to(self.jx)) * (x**2 + y**2))
        if imp.camera_shift is not None:
            t = imp.camera_shift.to(self.jx) * cfg.camera.binning  # camera px -> grid px
            terms.append((-TWO_PI / cfg.N) * (_col(t[:, 0]) * x + _col(t[:, 1]) * y))
        return sum(terms[1:], terms[0])

    def mask(self, imp: Imperfections | None = None) -> torch.Tensor:
        """Complex Fourier-plane mask of an aligned SLM times the system pupil, centred layout:
        (k, N, N) ideal or (B, k, N, N).  SLM shift and rotation act in :meth:`field`."""
        field = self.slm_field(imp)
        pupil = self.pupil_phase(imp)
        if pupil is not None:
            field = field * cis(pupil)
        return field

    # ----------------------------------------------------------------- propagation
    def input_spectrum(self, images: torch.Tensor, imp: Imperfections | None = None) -> torch.Tensor:
        """FFT of the displayed input field times the system pupil, (B, 1, N, N), centred.

        An SLM moved by δ and rotated by R shows M'(ρ) = M(R⁻¹(ρ − δ)).  Substituting
        ρ = R ρ' + δ keeps the mask on its own grid (no resampling of e^{iφ}, no energy loss):
        the input is rotated, u(R x), and tilted, exp(−2πi δ·R x / N); the pupil phase is taken at
        R ρ' + δ; the output intensity is |w(Rᵀ x)|² (rotated back in :meth:`intensity`).
        """
        cfg = self.config
        if images.dim() != 4 or images.shape[1] != 1 or images.shape[-1] != cfg.n:
            raise ValueError(f"expected images (B, 1, {cfg.n}, {cfg.n}), got {tuple(images.shape)}")
        intensity = images.to(self.phase.dtype)
        if imp is not None and imp.gamma is not None:
            intensity = intensity.clamp_min(0) ** _col(imp.gamma.to(intensity))
        grid = self._rotated_grid(imp)
        aligned = grid is None and (imp is None or imp.mask_shift is None)
        if aligned and not (torch.is_grad_enabled() and intensity.requires_grad):
            return self._with_pupil(torch.fft.fft2(self._display_grid(intensity)), imp, None)
        amplitude = torch.sqrt(intensity.clamp_min(0))
        pad = (self._start, cfg.N - cfg.n - self._start)
        if grid is None:
            u = torch.nn.functional.pad(amplitude * self.checker[self._window], pad + pad)
            gx, gy = self.jx, self.jy
        else:
            u = torch.nn.functional.pad(amplitude, pad + pad)
            u = self._resample(u, *grid) * self.checker
            gx, gy = grid
        if imp is not None and imp.mask_shift is not None:
            shift = imp.mask_shift.to(u)
            tilt = (-TWO_PI / cfg.N) * (_col(shift[:, 0]) * gx + _col(shift[:, 1]) * gy)
            u = cis(tilt, u)
        return self._with_pupil(torch.fft.fft2(u), imp, grid)

    def _display_grid(self, intensity: torch.Tensor) -> torch.Tensor:
        """Complex N x N grid (B, 1, N, N), zero but for the checkered amplitude
        (−1)^(x+y) sqrt(I) on the input window (no graph).  The FFT of a real input runs as a
        complex one anyway, so writing the real part of a complex grid saves the padded copy
        and its promotion."""
        cfg = self.config
        u = intensity.new_zeros(intensity.shape[:2] + (cfg.N, cfg.N),
                                dtype=intensity.dtype.to_complex())
        fused = kernels_for(intensity, u)
        if fused is not None:
            fused.display_window(intensity, self._start, u)
        else:
            amplitude = torch.sqrt(intensity.clamp_min(0))
            real_window = (..., *self._window, 0)
            torch.mul(amplitude, self.checker[self._window], out=torch.view_as_real(u)[real_window])
        return u

    def _with_pupil(self, spectrum: torch.Tensor, imp: Imperfections | None, grid) -> torch.Tensor:
        pupil = self.pupil_phase(imp, grid)
        return spectrum if pupil is None else spectrum * cis(pupil)

    def field(self, images: torch.Tensor, imp: Imperfections | None = None) -> torch.Tensor:
        """Output field w = IFFT(spectrum · M) on the full N x N grid (B, k, N, N), up to a
        (−1)^(x+y) sign and, with an SLM rotation, in the rotated frame."""
        return torch.fft.ifft2(self.input_spectrum(images, imp) * self.slm_field(imp))

    def intensity(self, images: torch.Tensor, imp: Imperfections | None = None) -> torch.Tensor:
        """Optical intensity on the camera window (B, k, n, n), before the sensor."""
        spectrum, mask = self.input_spectrum(images, imp), self.slm_field(imp)
        back = self._rotated_grid(imp, sign=-1.0)
        if back is None:
            return CroppedIntensity.apply(spectrum, mask, self._start, self.config.n)
        # |w(Rᵀ x)|²: the power on the window grown by the farthest a window point moves,
        # |R(−θ) x − x| <= |θ| |x| <= |θ| n / √2, sampled at R(−θ) x.
        reach = float(imp.mask_rotation.abs().max()) * self.config.n / math.sqrt(2.0)
        first = max(0, self._start - math.ceil(reach) - 1)
        power = CroppedIntensity.apply(spectrum, mask, first, self.config.N - 2 * first)
        window = (..., *self._window)
        return self._resample(power, back[0][window], back[1][window], first)

    def forward(
        self,
        images: torch.Tensor,
        imp: Imperfections | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        return self.camera(self.intensity(images, imp), imp, generator)


class PhaseField(torch.autograd.Function):
    """f = A e^{i Q(φ)} for a real phase φ and a fixed amplitude A, Q(φ) = φ rounded to a multiple
    of 2π / levels (``levels`` None: Q(φ) = φ).  Straight-through: the one-line backward
    ∂L/∂φ = Im(conj(f) ∂L/∂f) = Re f · Im g − Im f · Re g (PyTorch's complex-gradient convention)
    treats Q as the identity.  On CPU a quantized field is one table read per pixel
    (harness.native) instead of a cos and a sin."""

    @staticmethod
    def forward(ctx, phase, amplitude, levels=None):
        amplitude = amplitude.to(phase)  # in place: no graph here, and this is the hot path
        fused = None if levels is None else kernels_for(phase, amplitude)
        if fused is not None:
            field = torch.empty(phase.shape, dtype=phase.dtype.to_complex())
            fused.quantized_phase_field(phase, amplitude, int(levels), field)
        else:
            if levels is not None:
                phase = torch.round(phase * (levels / TWO_PI)).mul_(TWO_PI / levels)
            field = torch.complex(torch.cos(phase).mul_(amplitude),
                                  torch.sin(phase).mul_(amplitude))
        ctx.save_for_backward(field)
        return field

    @staticmethod
    def backward(ctx, grad):
        (field,) = ctx.saved_tensors
        fused = kernels_for(field, grad)
        if fused is not None:
            return fused.phase_gradient(field, grad), None, None
        grad_phase = field.real * grad.imag
        return grad_phase.sub_(field.imag * grad.real), None, None


def _sum_to(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a broadcast gradient back to ``shape`` (leading dims and size-1 dims)."""
    lead = grad.dim() - len(shape)
    if lead:
        grad = grad.sum(tuple(range(lead)))
    dims = tuple(i for i, size in enumerate(shape) if size == 1 and grad.shape[i] != 1)
    return grad.sum(dims, keepdim=True) if dims else grad


#: On CPU the fused 4F kernels work on batch chunks of about this many bytes of complex field, so
#: the product, IFFT and crop of one chunk stay in cache (2-3x less memory traffic for large
#: batches).  On GPUs the whole batch is one chunk.
CPU_CHUNK_BYTES = 2 << 20


def batch_chunks(shape: torch.Size, device: torch.device) -> list[slice]:
    """Slices of the batch dimension of a (B, k, N, N) complex field, one per chunk."""
    batch = shape[0]
    if device.type != "cpu":
        return [slice(0, batch)]
    per_sample = 8 * math.prod(shape[1:])  # complex64 bytes
    size = max(1, min(batch, CPU_CHUNK_BYTES // per_sample))
    return [slice(i, min(batch, i + size)) for i in range(0, batch, size)]


def _broadcast_4d(a: torch.Size, b: torch.Size) -> torch.Size:
    """Broadcast shape of two operands of a (B, k, N, N) field (torch.broadcast_shapes costs
    ~30 µs a call)."""
    a, b = (1,) * (4 - len(a)) + tuple(a), (1,) * (4 - len(b)) + tuple(b)
    if len(a) != 4 or any(x != y and 1 not in (x, y) for x, y in zip(a, b)):
        raise ValueError(f"expected operands of a (B, k, N, N) field, got {a} and {b}")
    return torch.Size(max(x, y) for x, y in zip(a, b))


def _batched(x: torch.Tensor, batch: int) -> bool:
    """Whether an operand of a (B, k, N, N) field has its own batch dimension."""
    return x.dim() == 4 and x.shape[0] == batch and batch > 1


def _rows(x: torch.Tensor, rows: slice, batch: int) -> torch.Tensor:
    """The chunk ``rows`` of an operand that has the batch dimension, else (or when the chunk is
    the whole batch) the operand itself."""
    return x[rows] if _batched(x, batch) and rows.stop - rows.start < batch else x


def _head(buffer: torch.Tensor, rows: slice) -> torch.Tensor:
    """The first rows of a chunk-sized buffer, as many as the chunk ``rows`` has."""
    size = rows.stop - rows.start
    return buffer if size == buffer.shape[0] else buffer[:size]


class CroppedIntensity(torch.autograd.Function):
    """I = |w|² on the n x n camera window of w = IFFT(S · M), fused and chunked over the batch.

    Backward, with g = ∂L/∂I zero-padded to N x N: PyTorch's complex gradients are
    ∂L/∂M = Σ conj(S) G and ∂L/∂S = Σ conj(M) G with G = FFT(2 w g) / N² (adjoint of the IFFT).
    Since conj(G) = 2 IFFT(conj(w) g), each chunk runs one IFFT of conj(w) g written into the
    window of a zero-padded buffer (zeroed once), multiplies it in place by S (or M), reduces
    over the broadcast dimensions, and only the reduced result is conjugated and doubled: no
    full-size temporaries or conj copies.  Only conj(w) on the window is kept for the backward.
    On CPU (complex64) the crop + conj + |w|² step and, for a mask shared by the batch, the
    multiply + batch sum of ∂L/∂M are one pass each in harness.native when it is built.
    """

    @staticmethod
    def forward(ctx, spectrum, mask, start: int, n: int):
        shape = _broadcast_4d(spectrum.shape, mask.shape)
        batch, window = shape[0], (..., slice(start, start + n), slice(start, start + n))
        chunks = batch_chunks(shape, spectrum.device)
        buffer = spectrum.new_empty((chunks[0].stop,) + shape[1:])
        crops = spectrum.new_empty(shape[:2] + (n, n))
        intensity = spectrum.new_empty(crops.shape, dtype=spectrum.dtype.to_real())
        fused = kernels_for(crops)
        for rows in chunks:
            product = _head(buffer, rows)
            torch.mul(_rows(spectrum, rows, batch), _rows(mask, rows, batch), out=product)
            field = torch.fft.ifft2(product)  # (out= would add a copy)
            crop = _rows(crops, rows, batch)  # conj(w), as the backward needs it
            if fused is not None:
                fused.crop_intensity(field, start, crop, _rows(intensity, rows, batch))
                continue
            crop.copy_(field[window].conj())
            squares = torch.view_as_real(crop).square()
            torch.add(squares[..., 0], squares[..., 1], out=intensity[rows])
        ctx.save_for_backward(spectrum, mask, crops)
        ctx.geometry = (start, window, shape, chunks)
        return intensity

    @staticmethod
    def backward(ctx, grad):
        spectrum, mask, crops = ctx.saved_tensors
        start, window, shape, chunks = ctx.geometry
        batch = shape[0]
        need_spectrum, need_mask = ctx.needs_input_grad[:2]
        buffer = crops.new_zeros((chunks[0].stop,) + shape[1:])  # zero outside the window
        grads = {}
        fused = None  # Σ_b over a batched (B, 1, N, N) spectrum for a shared mask, in one pass
        shared_mask = not _batched(mask, batch) and _batched(spectrum, batch)
        if need_mask and not need_spectrum and shared_mask and spectrum.shape[1] == 1:
            fused = kernels_for(spectrum, mask)
        if fused is not None:
            grads[1] = torch.empty(mask.shape, dtype=mask.dtype)
        window_product = kernels_for(crops, grad) if grad.dtype == torch.float32 else None
        for rows in chunks:
            padded = _head(buffer, rows)
            crop, g = _rows(crops, rows, batch), _rows(grad, rows, batch)
            if window_product is not None:
                window_product.window_product(crop, g, start, padded)
            else:
                torch.mul(crop, g, out=padded[window])
            half_conj_G = torch.fft.ifft2(padded)  # conj(G) / 2 = IFFT(conj(w) g)
            m, s = _rows(mask, rows, batch), _rows(spectrum, rows, batch)
            if fused is not None:
                fused.multiply_accumulate(half_conj_G, s, grads[1], accumulate=rows.start > 0,
                                          finish=rows.stop == batch)
                continue
            if need_spectrum:
                product = half_conj_G * m if need_mask else half_conj_G.mul_(m)
                _accumulate(grads, 0, spectrum, rows, batch, _sum_to(product, s.shape))
            if need_mask:
                _accumulate(grads, 1, mask, rows, batch, _sum_to(half_conj_G.mul_(s), m.shape))
        if fused is not None:  # already 2 conj(Σ ...)
            return None, grads[1], None, None
        out = [grads[i].conj_physical_().mul_(2.0) if i in grads else None for i in (0, 1)]
        return out[0], out[1], None, None


def _accumulate(grads: dict, index: int, operand, rows: slice, batch: int, value) -> None:
    """Write (batched operand) or add (broadcast operand) one chunk's gradient into grads."""
    batched = _batched(operand, batch)
    if index not in grads:
        grads[index] = (torch.empty_like if batched else torch.zeros_like)(operand)
    if batched:
        grads[index][rows] = value
    else:
        grads[index] += value


def gaussian_blur_fft(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Circular Gaussian blur of (B, k, N, N) with per-sample σ (pixels), via rFFT:
    X(f) exp(−2π² σ² |f|²)."""
    N = x.shape[-1]
    fy = torch.fft.fftfreq(N, device=x.device, dtype=x.dtype)
    fx = torch.fft.rfftfreq(N, device=x.device, dtype=x.dtype)
    f2 = fy[:, None] ** 2 + fx[None, :] ** 2
    transfer = torch.exp(-2 * math.pi**2 * _col(sigma) ** 2 * f2)
    return torch.fft.irfft2(torch.fft.rfft2(x) * transfer, s=x.shape[-2:])
