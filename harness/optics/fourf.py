"""Differentiable 4F optical encoder (docs/DESIGN.md section 3).

Geometry, at the defaults (λ = 532 nm, f = 100 mm, SLM pitch p = 8 µm, N = 2 n):

    input-plane pixel   dx    = λ f / (N p)          (104 µm at N = 64)
    pupil radius        ρ_max = N p / 2              (0.256 mm at N = 64)
    numerical aperture  NA    = ρ_max / f
    camera defocus      φ(ρ)  = −π Δz ρ² / (λ f²)
                        (one wave at the pupil edge is Δz = 2 λ f² / ρ_max²)

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
lose energy between the pixels of e^{iφ}); an SLM rotation is evaluated exactly as non-uniform
DFTs (harness.optics.nufft).  All parameters are per-sample tensors in
:class:`~harness.optics.params.Imperfections`; ``None`` means ideal.
"""

from __future__ import annotations

import math

import torch

from harness.optics.functional import (
    TWO_PI,
    cis,
    gaussian_blur_fft,
    per_sample,
    quantize_phase,
    wrap_phase,
    zernike_basis,
)
from harness.optics.fused import CroppedIntensity, PhaseField
from harness.optics.masks import initial_phase
from harness.optics.nufft import Gridding
from harness.optics.params import Imperfections, OpticsConfig
from harness.optics.pixels import box_averaged_intensity, rotated_box_average
from harness.optics.sensor import Camera


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
            return per_sample(imp.phase_levels.to(self.phase))
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
            v is None for v in (imp.lut_scale, imp.lut_offset, imp.fringing, imp.lut_scale_tilt)
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
            phase = phase * per_sample(imp.lut_scale.to(phase))
        if imp.lut_scale_tilt is not None:  # scale · (1 + a·j / (N/2)) across the panel
            tilt = imp.lut_scale_tilt.to(phase) / (self.config.N / 2)
            ramp = per_sample(tilt[:, 0]) * self.jx + per_sample(tilt[:, 1]) * self.jy
            phase = phase * (1 + ramp)
        if imp.lut_offset is not None:
            phase = phase + per_sample(imp.lut_offset.to(phase))
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
            eta = per_sample(imp.zero_order.to(field.real))
            field = (1 - eta) * field + eta * self.aperture
        return field

    def _rotated_grid(self, imp: Imperfections | None):
        """Per-sample centred coordinates R(θ)(x, y), (B, 1, N, N) each; None without
        rotation.  R(θ)(x, y) = (x cos θ − y sin θ, x sin θ + y cos θ)."""
        if imp is None or imp.mask_rotation is None:
            return None
        rot = per_sample(imp.mask_rotation.to(self.jx))
        c, s = torch.cos(rot), torch.sin(rot)
        return c * self.jx - s * self.jy, s * self.jx + c * self.jy

    def _window_points(self, imp: Imperfections) -> torch.Tensor:
        """R(−θ) x for the centred points x of the n x n window, (G, n², 2) as (x, y): where an
        SLM rotated by θ sees the input pixels and the camera pixels (see :meth:`intensity`)."""
        rot = imp.mask_rotation.detach().to(self.jx).reshape(-1, 1)
        x, y = self.jx[self._window].reshape(1, -1), self.jy[self._window].reshape(1, -1)
        c, s = torch.cos(rot), torch.sin(rot)
        return torch.stack((c * x + s * y, c * y - s * x), dim=-1)

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
            basis = zernike_basis(r, theta)
            waves = sum(per_sample(z[:, i]) * term for i, term in enumerate(basis))
            terms.append(TWO_PI * waves)
        if imp.defocus_dz is not None:
            curvature = -math.pi * cfg.slm_pitch**2 / (cfg.wavelength * cfg.focal_length**2)
            terms.append(curvature * per_sample(imp.defocus_dz.to(self.jx)) * (x**2 + y**2))
        if imp.camera_shift is not None:
            t = imp.camera_shift.to(self.jx) * cfg.camera.binning  # camera px -> grid px
            terms.append((-TWO_PI / cfg.N) * (per_sample(t[:, 0]) * x + per_sample(t[:, 1]) * y))
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
    def input_spectrum(
        self, images: torch.Tensor, imp: Imperfections | None = None, gridding=None
    ) -> torch.Tensor:
        """FFT of the displayed input field times the system pupil, (B, 1, N, N), centred.

        An SLM moved by δ and rotated by R puts its pixel j at ρ = R j + δ, where it sees the
        spectrum Û(R j + δ) = Σ_x u(x) e^{−2πi δ·x/N} e^{−2πi j·(Rᵀx)/N}: the input tilted by δ
        and evaluated exactly at the rotated points Rᵀx (a type-1 non-uniform DFT,
        harness.optics.nufft; no resampling of the input or of e^{iφ}).  The pupil phase is taken
        at R j + δ; the camera sees the field at Rᵀx too (:meth:`intensity`).
        """
        cfg = self.config
        if images.dim() != 4 or images.shape[1] != 1 or images.shape[-1] != cfg.n:
            raise ValueError(f"expected images (B, 1, {cfg.n}, {cfg.n}), got {tuple(images.shape)}")
        intensity = self._displayed(images.to(self.phase.dtype), imp)
        grid = self._rotated_grid(imp)
        aligned = grid is None and (imp is None or imp.mask_shift is None)
        aligned = aligned and (imp is None or imp.slm_axial_offset is None)
        if aligned and not (torch.is_grad_enabled() and intensity.requires_grad):
            return self._with_pupil(torch.fft.fft2(self._display_grid(intensity)), imp, None)
        amplitude = torch.sqrt(intensity.clamp_min(0))
        window = (..., *self._window)
        if grid is None:
            pad = (self._start, cfg.N - cfg.n - self._start)
            u = torch.nn.functional.pad(amplitude * self.checker[self._window], pad + pad)
            gx, gy = self.jx, self.jy
        else:
            u, (gx, gy) = amplitude, (self.jx[window], self.jy[window])
        u = self._input_phase(u, imp, gx, gy)
        if grid is None:
            return self._with_pupil(torch.fft.fft2(u), imp, None)
        gridding = gridding or Gridding(self._window_points(imp), cfg.N)
        values = u.to(u.dtype.to_complex()) if not u.is_complex() else u
        spectrum = gridding.spread(values.reshape(values.shape[0], 1, -1)) * self.checker
        return self._with_pupil(spectrum, imp, grid)

    @staticmethod
    def _displayed(intensity: torch.Tensor, imp: Imperfections | None) -> torch.Tensor:
        """The display's light: I^γ, then crosstalk c to each of the 4 neighbours,
        (1 − 4c) I + c Σ I_neighbour (light leaking past the window edge is lost)."""
        if imp is not None and imp.gamma is not None:
            intensity = intensity.clamp_min(0) ** per_sample(imp.gamma.to(intensity))
        if imp is not None and imp.display_crosstalk is not None:
            c = per_sample(imp.display_crosstalk.to(intensity))
            padded = torch.nn.functional.pad(intensity, (1, 1, 1, 1))
            around = (padded[..., :-2, 1:-1] + padded[..., 2:, 1:-1] + padded[..., 1:-1, :-2]
                      + padded[..., 1:-1, 2:])
            intensity = (1 - 4 * c) * intensity + c * around
        return intensity

    def _input_phase(self, u: torch.Tensor, imp: Imperfections | None, gx, gy) -> torch.Tensor:
        """u e^{iψ} at the input points (gx, gy) (pixels, centred): the tilt of an SLM shift δ,
        ψ = −2π δ·x / N, and the quadratic phase of an SLM off the Fourier plane by d,
        ψ = −π d |x dx|² / (λ f²)."""
        if imp is None or (imp.mask_shift is None and imp.slm_axial_offset is None):
            return u
        cfg, psi = self.config, 0.0
        if imp.mask_shift is not None:
            shift = imp.mask_shift.to(u)
            psi = (-TWO_PI / cfg.N) * (per_sample(shift[:, 0]) * gx + per_sample(shift[:, 1]) * gy)
        if imp.slm_axial_offset is not None:
            curvature = -math.pi * cfg.dx**2 / (cfg.wavelength * cfg.focal_length**2)
            d = per_sample(imp.slm_axial_offset.to(u))
            psi = psi + curvature * d * (gx**2 + gy**2)
        return cis(psi, u)

    def _display_grid(self, intensity: torch.Tensor) -> torch.Tensor:
        """Complex N x N grid (B, 1, N, N), zero but for the checkered amplitude
        (−1)^(x+y) sqrt(I) on the input window (no graph).  The FFT of a real input runs as a
        complex one anyway, so writing the real part of a complex grid saves the padded copy
        and its promotion."""
        cfg = self.config
        u = intensity.new_zeros(intensity.shape[:2] + (cfg.N, cfg.N),
                                dtype=intensity.dtype.to_complex())
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
        """Optical intensity on the camera window (B, k, n, n), before the sensor.

        With an SLM rotation R the output w(x) = N⁻² Σ_j c_j e^{2πi (R j + δ)·x/N},
        c = Û(R j + δ) M_j P(R j + δ), is evaluated exactly at the camera pixels x as a type-2
        non-uniform DFT at the points Rᵀx (the phase e^{2πi δ·x/N} drops out of |w|²).
        """
        n, fill = self.config.n, None if imp is None else imp.camera_fill
        if imp is None or imp.mask_rotation is None:
            spectrum, mask = self.input_spectrum(images, imp), self.slm_field(imp)
            if fill is not None:  # pixels that integrate over their area (harness.optics.pixels)
                return box_averaged_intensity(spectrum * mask, fill, self._start, n)
            return CroppedIntensity.apply(spectrum, mask, self._start, n)
        points = self._window_points(imp)
        gridding = Gridding(points, self.config.N)
        coefficients = self.input_spectrum(images, imp, gridding) * self.slm_field(imp)
        coefficients = coefficients * self.checker  # the centred input coordinates of Û
        if fill is not None:  # the box mean of |w|², exactly (harness.optics.pixels)
            power = rotated_box_average(coefficients, fill, imp.mask_rotation.detach(), points)
        else:
            power = (gridding.interpolate(coefficients) * (1.0 / self.config.N**2)).abs().square()
        return power.reshape(*power.shape[:2], n, n)

    def forward(
        self,
        images: torch.Tensor,
        imp: Imperfections | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        return self.camera(self.intensity(images, imp), imp, generator)
