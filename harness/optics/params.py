"""Parameters of the optical encoder: the bench geometry, the camera, and per-sample imperfections.

A leaf module: it imports nothing from the project, so every other module (the 4F model, the
camera, the masks, the augmentation families, the emulated bench) can depend on it.

:class:`ParameterGenerator` is what draws :class:`Imperfections`: ``step(batch, generator)``
returns one batch of parameters, and generators compose (``a + b``, :class:`Compose`) by merging
their draws in order.  The augmentation families (augment.physics) and the emulated bench
(harness.lab.bench) are such generators; :data:`FAMILY_FIELDS` names the fields the families can
produce, so what a bench has beyond them (:meth:`Imperfections.split`) is what no policy models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

ZERNIKE_NAMES = ("defocus", "astig_0", "astig_45", "coma_x", "coma_y", "spherical")


class CameraConfig(BaseModel):
    """Optical-to-camera geometry and exposure; noise lives in ``Imperfections``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    exposure: float = Field(
        1.0, gt=0, description="intensity scale: 1 maps an input of 1 to full scale"
    )
    binning: int = Field(1, ge=1, description="camera pixel = binning x binning input-plane pixels")


class OpticsConfig(BaseModel):
    """Physical parameters of the 4F bench (SI units)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(32, ge=4, description="input / camera image size in pixels")
    pad: int = Field(2, ge=1, description="grid N = pad * n (zero padding against wrap-around)")
    wavelength: float = Field(532e-9, gt=0, description="metres")
    focal_length: float = Field(0.1, gt=0, description="metres, both lenses")
    slm_pitch: float = Field(8e-6, gt=0, description="metres")
    lut_bits: int | None = Field(
        8, ge=1, le=16, description="SLM phase LUT bits; None = continuous"
    )
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
    """Per-sample non-idealities; units in docs/ARCHITECTURE.md.  ``None`` = ideal.

    The last fields (after ``vignetting``): ``slm_axial_offset`` d (B,) metres, the SLM moved
    along the axis off the Fourier plane (a quadratic phase exp(−iπ d x² / (λ f²)) across the
    input, x in metres; harness.optics.fourf ``_input_phase``).  d > 0 puts the SLM beyond the
    Fourier plane, away from the first lens: the phase is the paraxial transfer
    exp(−iπ λ d ν²) of propagation by +d at the frequency ν = x / (λ f) that input point x maps
    to (exp(i(kz − ωt)) convention, as for the camera defocus Δz > 0: the camera farther from
    the second lens); ``lut_scale_tilt`` (B, 2), a LUT scale that varies linearly across the
    panel, scale · (1 + a_x j_x / (N/2) + a_y j_y / (N/2)); ``display_crosstalk`` c (B,), the
    fraction of each input display pixel's light that leaks into each of its 4 neighbours;
    ``camera_fill`` a (B,) in (0, 1], the linear fill factor of a grid pixel: each grid pixel of
    the camera window records the mean intensity over a square a x a grid pixels wide
    (harness.optics.pixels); with ``CameraConfig.binning`` b > 1 a camera pixel is then the
    mean of b x b such boxes, so its fill factor is not a.  Only the emulated bench sets it
    (harness.lab.bench); no policy, OpticsConfig or study key does.
    """

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
    slm_axial_offset: torch.Tensor | None = None
    lut_scale_tilt: torch.Tensor | None = None
    display_crosstalk: torch.Tensor | None = None
    camera_fill: torch.Tensor | None = None

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

    def split(self, names: Iterable[str]) -> tuple[Imperfections, Imperfections]:
        """(the fields in ``names``, every other field): two parameter sets whose merge is
        ``self``."""
        names = set(names)
        unknown = names - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"not fields of Imperfections: {sorted(unknown)}")
        inside = {k: v for k, v in self.items() if k in names}
        outside = {k: v for k, v in self.items() if k not in names}
        return Imperfections(**inside), Imperfections(**outside)


#: The fields each physics family of the augmentation policies draws (augment.physics).  Every
#: other field of :class:`Imperfections` is an effect no policy models.
FAMILY_FIELDS: dict[str, tuple[str, ...]] = {
    "defocus": ("defocus_dz",),
    "misalignment": ("mask_shift", "mask_rotation", "camera_shift"),
    "phase_jitter": ("phase_noise", "lut_scale", "lut_offset", "phase_levels"),
    "sensor": ("photons", "read_noise", "bit_depth"),
}
POLICY_FIELDS: tuple[str, ...] = tuple(f for group in FAMILY_FIELDS.values() for f in group)
#: Opt-in families (augment.physics): off unless a physics policy names them in its strengths.
#: Their fields are not in POLICY_FIELDS, which are those of the default families, so the emulated
#: bench's effects beyond the default policy stay unmodelled unless a study opts in.
OPTIONAL_FAMILY_FIELDS: dict[str, tuple[str, ...]] = {
    "slm_axial": ("slm_axial_offset",),
    "lut_tilt": ("lut_scale_tilt",),
    "crosstalk": ("display_crosstalk",),
}


class ParameterGenerator:
    """Draws per-sample :class:`Imperfections`.

    ``step(batch, generator, **context)`` returns the parameters of one batch, drawn from the
    explicit ``torch.Generator``; ``context`` carries what a generator needs besides (the optics
    config, the number of masks, the device).  ``a + b`` is a generator that merges the draws of
    ``a`` and then ``b`` (fields of ``b`` override those of ``a``).
    """

    def step(self, batch, generator: torch.Generator | None = None, **context) -> Imperfections:
        raise NotImplementedError

    def __add__(self, other: ParameterGenerator) -> Compose:
        return Compose(self, other)


class Compose(ParameterGenerator):
    """The merged draws of several generators, each drawn in order from the same generator."""

    def __init__(self, *parts: ParameterGenerator):
        self.parts: tuple[ParameterGenerator, ...] = tuple(
            q for p in parts for q in (p.parts if isinstance(p, Compose) else (p,))
        )

    def step(self, batch, generator: torch.Generator | None = None, **context) -> Imperfections:
        imp = Imperfections()
        for part in self.parts:
            imp = imp.merge(part.step(batch, generator, **context))
        return imp
