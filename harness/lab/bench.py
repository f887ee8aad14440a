"""The emulated bench: the "real" domain when there is no physical bench (docs/DESIGN.md section 5).

The bench is a parameter generator (:class:`~harness.optics.params.ParameterGenerator`): its
``step(capture_index)`` returns the :class:`Imperfections` of those captures.  A bench seed fixes
ONE draw of every physics family the augmentation policies sample (camera defocus, SLM / camera
misalignment, LUT error, fixed-pattern SLM phase noise, sensor: the fields of
``POLICY_FIELDS``) PLUS effects no policy models, the fields of :data:`UNMODELLED_FIELDS`:
Zernike astigmatism / coma / spherical, zero-order leakage, SLM fringing, a display gamma error
(an uncorrected γ ≈ 2.2 at ``harsh``), a residual dark offset, a gain error, a PRNU map,
vignetting, an SLM off the Fourier plane (axial offset), a LUT scale that varies across the
panel, and display pixel crosstalk.  :meth:`EmulatedBench.split` returns the two parameter
sets.  The ``unmodelled`` preset is a bench that is *not* the policy's families drawn again: it
turns them off (but the camera's shot / read noise) and adds camera pixels that integrate over
their area (``camera_fill``) to the unmodelled effects at typical-to-harsh strength.  Two more
unmodelled effects are not parameter fields: 8-bit display quantization of the inputs and a slow
drift of the mask and camera shifts with the capture index.  The bench shows
the *learned* mask (the phase of the encoder it is given) on its SLM through its own imperfect
optics (same OpticsConfig geometry).

Draws.  Every magnitude is ``level × U(0.6, 1)`` with a random sign (scalars) or a random direction
(2-vectors: shifts, astigmatism, coma); ``level`` comes from the preset (sensor levels are spread
as noted in :class:`BenchPreset`).  The unit draws depend on
the seed only, so ``mild`` / ``typical`` / ``harsh`` of one seed are the same bench at growing
strength.  Defocus is stated in waves W020 at the pupil edge: Δz = W020 · config.dz_per_wave.

Drift.  Mask and camera shifts move with the capture index i (the order in which the inputs are
shown) as a sum of three slow sinusoids per axis, zero at i = 0 (the lab aligned, then it drifts):
``d(i) = Σ_j a_j [sin(2π i / T_j + φ_j) − sin φ_j]`` with rms amplitude ``drift_px`` and periods
T_j in [T/2, 2T], T = ``drift_period`` captures.

Noise.  Frames are deterministic given (bench seed, capture index): the optics are batched, and
each frame's shot and read noise come from a ``torch.Generator`` seeded with
splitmix64(seed, index), so a frame does not depend on the batch it was captured in.  The sensor
is the :class:`~harness.optics.sensor.Camera` with the per-frame noise model
(:class:`~harness.optics.sensor.PerFramePoissonNoise`): e = Poisson(V·y·P) + dark + N(0, read²),
frame = quantize(clip(G · e / P)), y clipped at full scale (full-well saturation) first.

Training code never reads a bench's parameters; they are written to ``bench.json`` next to the
captures (``EmulatedBench.parameters``) for the record.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from tqdm.auto import tqdm

from harness.errors import SimgapError
from harness.optics.fourf import FourF
from harness.optics.params import (
    POLICY_FIELDS,
    ZERNIKE_NAMES,
    Imperfections,
    OpticsConfig,
    ParameterGenerator,
)
from harness.optics.sensor import Camera, PerFramePoissonNoise

MASK_INITS = ("random", "zeros", "edge")
BENCH_VERSION = 2  # bump when a seed would draw another bench (2: exact rotation, LUT level mod
# L, four more effects drawn after the others, so the fields of version 1 keep their values)
DISPLAY_BITS = 8  # the input display (and the exported input PNGs) are 8-bit
_M64 = (1 << 64) - 1
#: The bench's parameter fields that no augmentation policy draws (the policies draw
#: POLICY_FIELDS); the bench sets every field of Imperfections but phase_levels (its LUT levels
#: are the config's lut_bits) and, but in the "unmodelled" preset, camera_fill (point-sampling
#: pixels: the exact box mean with a rotated SLM costs several times a capture).
UNMODELLED_FIELDS = (
    "fringing", "zero_order", "zernike", "gamma", "dark_offset", "gain", "prnu", "vignetting",
    "slm_axial_offset", "lut_scale_tilt", "display_crosstalk", "camera_fill",
)


class BenchPreset(BaseModel):
    """Levels of one strength preset (units in the names; see the module doc for the draw)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    defocus_waves: float  # camera defocus W020 at the pupil edge
    mask_shift_px: float  # SLM mask shift, SLM pixels
    mask_rotation_deg: float
    camera_shift_px: float  # camera pixels
    lut_scale_error: float  # relative error of the 2π phase range
    lut_offset_rad: float
    phase_noise_rad: float  # std of the fixed per-SLM-pixel phase pattern
    astigmatism_waves: float
    coma_waves: float
    spherical_waves: float
    zero_order: float  # leakage η
    fringing_px: float  # Gaussian σ of the SLM fringing blur, SLM pixels
    gamma: float  # display gamma at the centre of the draw (1 = linearised display)
    gamma_error: float
    prnu: float  # std of the pixel gain map
    vignetting: float  # relative fall-off at the frame corner
    photons: float  # electrons at full scale, × U(0.8, 1.2)
    read_noise_e: float  # × U(0.8, 1.2)
    dark_offset_e: float  # residual dark offset, × U(0.5, 1)
    bit_depth: int
    gain_error: float  # relative
    drift_px: float  # rms of the drift of the mask and camera shifts
    drift_period: float  # captures
    slm_axial_offset_mm: float  # SLM distance from the Fourier plane
    lut_scale_tilt: float  # relative change of the LUT scale from the panel centre to its edge
    display_crosstalk: float  # fraction of a display pixel's light in each of its 4 neighbours
    camera_fill: float = 0.0  # linear fill factor of camera pixels × U(0.9, 1); 0 = point samples


PRESETS: dict[str, BenchPreset] = {
    "mild": BenchPreset(
        defocus_waves=0.15, mask_shift_px=0.3, mask_rotation_deg=0.1, camera_shift_px=0.3,
        lut_scale_error=0.02, lut_offset_rad=0.1, phase_noise_rad=0.03,
        astigmatism_waves=0.03, coma_waves=0.02, spherical_waves=0.02,
        zero_order=0.01, fringing_px=0.2, gamma=1.0, gamma_error=0.03, prnu=0.005,
        vignetting=0.03, photons=20000.0, read_noise_e=2.0, dark_offset_e=1.0, bit_depth=12,
        gain_error=0.01, drift_px=0.05, drift_period=2000.0,
        slm_axial_offset_mm=0.2, lut_scale_tilt=0.01, display_crosstalk=0.005,
    ),
    "typical": BenchPreset(
        defocus_waves=0.5, mask_shift_px=1.5, mask_rotation_deg=0.5, camera_shift_px=1.2,
        lut_scale_error=0.1, lut_offset_rad=0.3, phase_noise_rad=0.1,
        astigmatism_waves=0.1, coma_waves=0.07, spherical_waves=0.05,
        zero_order=0.05, fringing_px=0.5, gamma=1.0, gamma_error=0.25, prnu=0.01,
        vignetting=0.1, photons=2000.0, read_noise_e=5.0, dark_offset_e=5.0, bit_depth=12,
        gain_error=0.05, drift_px=0.3, drift_period=1000.0,
        slm_axial_offset_mm=1.0, lut_scale_tilt=0.03, display_crosstalk=0.02,
    ),
    "harsh": BenchPreset(
        defocus_waves=1.2, mask_shift_px=3.0, mask_rotation_deg=1.5, camera_shift_px=3.0,
        lut_scale_error=0.2, lut_offset_rad=0.6, phase_noise_rad=0.25,
        astigmatism_waves=0.25, coma_waves=0.2, spherical_waves=0.15,
        zero_order=0.12, fringing_px=1.0, gamma=2.2, gamma_error=0.2, prnu=0.02,
        vignetting=0.25, photons=500.0, read_noise_e=10.0, dark_offset_e=15.0, bit_depth=10,
        gain_error=0.1, drift_px=1.0, drift_period=500.0,
        slm_axial_offset_mm=3.0, lut_scale_tilt=0.08, display_crosstalk=0.05,
    ),
    # "not our policy": the policy families are off (no defocus, misalignment, drift, LUT error
    # or phase pattern; only the shot / read noise and ADC every camera has), so the whole gap
    # comes from effects no default policy draws: an SLM 2 mm off the Fourier plane, a LUT
    # scale varying across the panel, display crosstalk, pixels integrating over their area,
    # on top of the Zernike, zero-order, fringing, gamma, PRNU, vignetting and gain effects
    "unmodelled": BenchPreset(
        defocus_waves=0.0, mask_shift_px=0.0, mask_rotation_deg=0.0, camera_shift_px=0.0,
        lut_scale_error=0.0, lut_offset_rad=0.0, phase_noise_rad=0.0,
        astigmatism_waves=0.15, coma_waves=0.1, spherical_waves=0.08,
        zero_order=0.06, fringing_px=0.6, gamma=1.0, gamma_error=0.25, prnu=0.01,
        vignetting=0.12, photons=2000.0, read_noise_e=5.0, dark_offset_e=5.0, bit_depth=12,
        gain_error=0.05, drift_px=0.0, drift_period=1000.0,
        slm_axial_offset_mm=2.0, lut_scale_tilt=0.06, display_crosstalk=0.04, camera_fill=1.0,
    ),
}  # fmt: skip


def _splitmix64(x: int) -> int:
    """SplitMix64 finalizer (Steele et al. 2014): a bijective 64-bit hash."""
    z = (x + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def frame_seed(bench_seed: int, capture_index: int) -> int:
    """Seed of one frame's noise generator: splitmix64(splitmix64(seed) xor index)."""
    return _splitmix64(_splitmix64(int(bench_seed) & _M64) ^ (int(capture_index) & _M64))


class EmulatedBench(ParameterGenerator):
    """One emulated bench: the fixed draw of imperfections of ``seed`` at ``preset`` strength."""

    def __init__(self, config: OpticsConfig, seed: int, preset: str = "typical"):
        if preset not in PRESETS:
            raise SimgapError(f"preset: '{preset}' is not one of {', '.join(PRESETS)}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise SimgapError(f"bench seed: must be a non-negative integer, got {seed!r}")
        self.config = config
        self.seed = int(seed)
        self.preset = preset
        self.levels = PRESETS[preset]
        self.frame_size = config.n // config.camera.binning
        self._draw()

    # ------------------------------------------------------------------ the draw
    def _draw(self) -> None:
        """Draw every fixed parameter from the seed (same unit draws for every preset)."""
        p, cfg = self.levels, self.config
        gen = torch.Generator().manual_seed(_splitmix64(self.seed ^ 0xBE4C))
        units = iter(torch.rand(64, generator=gen, dtype=torch.float64).tolist())

        def mag(level):  # level × U(0.6, 1)
            return level * (0.6 + 0.4 * next(units))

        def signed(level):
            return mag(level) * (1.0 if next(units) < 0.5 else -1.0)

        def vec(level):
            r, a = mag(level), 2 * math.pi * next(units)
            return [r * math.cos(a), r * math.sin(a)]

        def spread(level, lo, hi):  # level × U(lo, hi)
            return level * (lo + (hi - lo) * next(units))

        defocus = signed(p.defocus_waves)
        astig, coma = vec(p.astigmatism_waves), vec(p.coma_waves)
        self.fixed = {
            "defocus_waves": defocus,
            "defocus_dz_m": defocus * cfg.dz_per_wave,
            "mask_shift_px": vec(p.mask_shift_px),
            "mask_rotation_deg": signed(p.mask_rotation_deg),
            "camera_shift_px": vec(p.camera_shift_px),
            "lut_scale": 1.0 + signed(p.lut_scale_error),
            "lut_offset_rad": signed(p.lut_offset_rad),
            "phase_noise_rad": p.phase_noise_rad,
            "zernike_waves": dict(
                zip(ZERNIKE_NAMES, [0.0, *astig, *coma, signed(p.spherical_waves)])
            ),
            "zero_order": mag(p.zero_order),
            "fringing_px": mag(p.fringing_px),
            "gamma": p.gamma + signed(p.gamma_error),
            "display_bits": DISPLAY_BITS,
            "photons": spread(p.photons, 0.8, 1.2),
            "read_noise_e": spread(p.read_noise_e, 0.8, 1.2),
            "dark_offset_e": spread(p.dark_offset_e, 0.5, 1.0),
            "bit_depth": p.bit_depth,
            "gain": 1.0 + signed(p.gain_error),
            "prnu_std": p.prnu,
            "vignetting": mag(p.vignetting),
            # drawn after every version-1 field, so those keep their values
            "slm_axial_offset_m": signed(p.slm_axial_offset_mm) * 1e-3,
            "lut_scale_tilt": vec(p.lut_scale_tilt),
            "display_crosstalk": mag(p.display_crosstalk),
            "camera_fill": spread(p.camera_fill, 0.9, 1.0),  # 0 (point pixels) but "unmodelled"
        }
        self._off = self._ideal_fields()
        self._drift_terms = self._draw_drift(gen)
        N, H = cfg.N, self.frame_size
        self._phase_noise = p.phase_noise_rad * torch.randn(1, 1, N, N, generator=gen)
        self._prnu = 1.0 + p.prnu * torch.randn(1, 1, H, H, generator=gen)

    def _draw_drift(self, gen: torch.Generator) -> tuple:
        """Slow drift: (2 shifts, 2 axes, 3 sinusoids) amplitudes, periods, phases."""
        p = self.levels
        w = torch.rand(2, 2, 3, generator=gen, dtype=torch.float64) + 0.25
        amp = w * (p.drift_px * math.sqrt(2.0) / w.square().sum(-1, keepdim=True).sqrt())
        period = p.drift_period * 4.0 ** (
            torch.rand(2, 2, 3, generator=gen, dtype=torch.float64) - 0.5
        )
        phase = 2 * math.pi * torch.rand(2, 2, 3, generator=gen, dtype=torch.float64)
        return amp, period, phase

    def _ideal_fields(self) -> set[str]:
        """The fields a preset turns off (level 0): left ideal (None), not set to zero."""
        p = self.levels
        drift = float(p.drift_px != 0)
        levels = {"defocus_dz": p.defocus_waves, "mask_rotation": p.mask_rotation_deg,
                  "mask_shift": p.mask_shift_px + drift, "camera_shift": p.camera_shift_px + drift,
                  "lut_scale": p.lut_scale_error, "lut_offset": p.lut_offset_rad,
                  "phase_noise": p.phase_noise_rad, "camera_fill": p.camera_fill}  # fmt: skip
        return {name for name, level in levels.items() if level == 0}

    def drift(self, capture_index: torch.Tensor) -> torch.Tensor:
        """(B, 2, 2) drift of (mask shift, camera shift) × (x, y), pixels, at each capture index."""
        amp, period, phase = self._drift_terms
        t = torch.as_tensor(capture_index).reshape(-1).cpu().double()[:, None, None, None]
        d = amp * (torch.sin(2 * math.pi * t / period + phase) - torch.sin(phase))
        return d.sum(-1).float()

    # ------------------------------------------------------------------ parameters
    def step(self, capture_index, generator: torch.Generator | None = None, **context):
        """Per-sample Imperfections for these capture indices (fixed parts have batch 1).

        The draws are fixed by the bench seed (``generator`` is not used); the capture indices
        set the drift.
        """
        index = torch.as_tensor(capture_index).reshape(-1)
        f = self.fixed

        def one(value):
            return torch.tensor([value], dtype=torch.float32)

        drift = self.drift(index)
        imp = Imperfections(
            defocus_dz=one(f["defocus_dz_m"]),
            mask_shift=torch.tensor([f["mask_shift_px"]]) + drift[:, 0],
            mask_rotation=one(math.radians(f["mask_rotation_deg"])),
            camera_shift=torch.tensor([f["camera_shift_px"]]) + drift[:, 1],
            phase_noise=self._phase_noise,
            lut_scale=one(f["lut_scale"]),
            lut_offset=one(f["lut_offset_rad"]),
            fringing=one(f["fringing_px"]),
            zero_order=one(f["zero_order"]),
            zernike=torch.tensor([list(f["zernike_waves"].values())]),
            gamma=one(f["gamma"]),
            photons=one(f["photons"]),
            read_noise=one(f["read_noise_e"]),
            dark_offset=one(f["dark_offset_e"]),
            bit_depth=one(f["bit_depth"]),
            gain=one(f["gain"]),
            prnu=self._prnu,
            vignetting=one(f["vignetting"]),
            slm_axial_offset=one(f["slm_axial_offset_m"]),
            lut_scale_tilt=torch.tensor([f["lut_scale_tilt"]]),
            display_crosstalk=one(f["display_crosstalk"]),
            camera_fill=one(f["camera_fill"]),
        )
        kept = {k: v for k, v in imp.items() if k not in self._off}
        return Imperfections(**kept).to(index.device)

    def split(self, capture_index) -> tuple[Imperfections, Imperfections]:
        """(the fields the policy families draw too, the effects no policy models) at these
        captures: the two parameter sets whose merge is :meth:`step`."""
        return self.step(capture_index).split(POLICY_FIELDS)

    # ------------------------------------------------------------------ capture
    def optics(self, encoder_or_mask: FourF | torch.Tensor) -> FourF:
        """The bench's own 4F system showing the encoder's mask (phase (k, N, N) radians)."""
        phase = encoder_or_mask.phase if isinstance(encoder_or_mask, FourF) else encoder_or_mask
        phase = torch.as_tensor(phase).detach()
        if phase.dim() == 2:
            phase = phase[None]
        if phase.dim() != 3 or phase.shape[-2:] != (self.config.N, self.config.N):
            raise SimgapError(
                f"mask: phase of shape {tuple(phase.shape)} does not fit the bench grid "
                f"N={self.config.N} (k, N, N)"
            )
        return FourF(self.config, channels=phase.shape[0], init=phase.float().cpu()).to(
            phase.device
        )

    @torch.no_grad()
    def capture(
        self, encoder: FourF | torch.Tensor, images: torch.Tensor, capture_index
    ) -> torch.Tensor:
        """Frames (B, k, H, W) in [0, 1] of ``images`` (B, 1, n, n) shown at ``capture_index``."""
        return self._capture(self.optics(encoder).to(images.device), images, capture_index)

    @torch.no_grad()
    def capture_batched(self, optics: FourF, images: torch.Tensor, capture_index, rows=None,
                        batch_size: int = 256, progress: bool = False) -> torch.Tensor:  # fmt: skip
        """Frames (M, k, H, W) on the CPU of the images ``images[rows]`` (all rows when None)
        shown through ``optics`` at ``capture_index`` (M,), ``batch_size`` inputs at a time."""
        index = torch.as_tensor(capture_index, dtype=torch.long).reshape(-1)
        rows = torch.arange(len(index)) if rows is None else torch.as_tensor(rows).reshape(-1)
        frames = torch.empty(len(index), optics.channels, self.frame_size, self.frame_size)
        device = optics.phase.device
        with tqdm(total=len(index), desc="capturing", unit="input", disable=not progress) as bar:
            for chunk in torch.arange(len(index)).split(max(1, int(batch_size))):
                shown = images[rows[chunk]].to(device)
                frames[chunk] = self._capture(optics, shown, index[chunk]).cpu()
                bar.update(len(chunk))
        return frames

    def _capture(self, optics: FourF, images: torch.Tensor, capture_index) -> torch.Tensor:
        index = torch.as_tensor(capture_index, dtype=torch.long).reshape(-1)
        if index.numel() != images.shape[0]:
            raise ValueError(f"capture_index: {index.numel()} indices for {images.shape[0]} images")
        imp = self.step(index).to(images.device)
        levels = 2**DISPLAY_BITS - 1
        shown = torch.round(images.clamp(0, 1) * levels) / levels
        return self.sense(optics.intensity(shown, imp), imp, index)

    def sense(
        self, intensity: torch.Tensor, imp: Imperfections, index: torch.Tensor
    ) -> torch.Tensor:
        """The camera with noise drawn per frame, each frame's generator seeded by its capture:
        e = Poisson(V y P) + dark + N(0, read²); q(G e / P)."""
        seeds = [frame_seed(self.seed, i) for i in index.tolist()]
        return Camera(self.config.camera, PerFramePoissonNoise(seeds))(intensity, imp)

    # ------------------------------------------------------------------ record
    def parameters(self) -> dict:
        """JSON-friendly description of this bench (what bench.json records)."""
        amp, period, phase = self._drift_terms
        drift = {
            name: {
                "amplitude_px": amp[s].tolist(),
                "period_captures": period[s].tolist(),
                "phase_rad": phase[s].tolist(),
            }
            for s, name in enumerate(("mask_shift", "camera_shift"))
        }
        return {
            "kind": "emulated",
            "version": BENCH_VERSION,
            "seed": self.seed,
            "preset": self.preset,
            "levels": self.levels.model_dump(),
            "fixed": self.fixed,
            "drift": {
                "model": "d(i) = sum_j a_j [sin(2 pi i / T_j + phi_j) - sin(phi_j)], per axis",
                **drift,
            },
            "noise": "per frame: torch.Generator seeded with splitmix64(splitmix64(seed) ^ index)",
            "optics": self.config.describe(),
        }
