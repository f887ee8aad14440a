"""Physics-consistent augmentation: per-sample :class:`~harness.optics.params.Imperfections`
generators.

One parameter generator per family (:class:`~harness.optics.params.ParameterGenerator`:
``family.step(batch, generator, config=...)`` returns the family's fields, those of
``FAMILY_FIELDS[family.name]``; families compose with ``+``).  Each has a *strength* s in
[0, 1] that sets the half-widths of the distributions linearly (s = 0 is the ideal bench:
every field stays ``None``), and optional explicit ranges that override the mapping.
Half-widths are s times their value at s = 1:

=============  ==================  ===========================================================
family         range key           distribution (at s = 1)
=============  ==================  ===========================================================
defocus        ``waves``           W020 ~ U(−w, w) waves at the pupil edge (w = 1);
                                   Δz = W020 · dz_per_wave = W020 · 2 λ f² / ρ_max²
misalignment   ``mask_shift_px``   SLM mask shift (x, y) ~ U(−m, m) SLM px each (m = 2)
               ``rotation_deg``    SLM rotation ~ U(−r, r) degrees (r = 2), stored in radians
               ``camera_shift_px`` camera shift (x, y) ~ U(−t, t) camera px each (t = 1.5)
phase_jitter   ``noise_rad``       per-pixel phase noise N(0, σ²), σ ~ U(0, σ_max) rad (0.3)
               ``lut_scale``       LUT scale ~ U(1 − a, 1 + a) (a = 0.15)
               ``lut_offset_rad``  LUT offset ~ U(−o, o) rad (0.5; only visible with zero order)
               ``quant_bits``      levels = round(2^U(b − 4 s, b)), b = lut_bits (8 → 16..256)
sensor         ``photons``         electrons at full scale, log-U(10^2.5 / s², 10^4.5 / s²)
               ``read_noise_e``    read noise ~ U(0, r) e⁻ (r = 10 s)
               ``bits``            ADC bits, integer ~ U{round(12 − 4 s), …, 12}
slm_axial      ``offset_mm``       SLM axial offset from the Fourier plane ~ U(−d, d) mm (d = 3),
                                   stored in metres (``slm_axial_offset``)
lut_tilt       ``tilt``            LUT scale tilt (a_x, a_y) ~ U(−a, a) each (a = 0.08): the
                                   scale changes by a from the panel centre to its edge
crosstalk      ``fraction``        display crosstalk c ~ U(0, c) per neighbour (c = 0.05, < 0.2)
=============  ==================  ===========================================================

The last three are *opt-in* (:data:`OPTIONAL_FAMILIES`): no registered policy has them, and a
physics policy draws one only when its strengths (or ranges) name it, e.g.
``build_policy("physics", {"slm_axial": 0.5})``; at strength 0 it draws nothing.  They model
effects of the emulated bench that the default policy leaves out (harness.lab.bench), so the
default study keeps a bench that is not its policy.  Their s = 1 ranges are the ``harsh`` bench
levels.  The camera fill factor (``camera_fill``) is no family: it is a fixed, known property of
a camera, not an error to randomise.  Only the emulated bench sets it; no OpticsConfig,
CameraConfig or study key does, so simulated training samples points.

``quant_bits``, ``photons`` and ``bits`` take a (low, high) pair or ``None`` (off); the other
keys are half-widths (maxima for σ and read noise) where 0 means off.  With a continuous LUT
(``lut_bits`` None) ``quant_bits`` counts down from 8.  The sensor noise std at full scale,
1/√photons, scales linearly with s (5.6 % .. 0.56 % at s = 1), so s → 0 fades to no noise.
The geometric blur of W020 waves of defocus is a disk of radius 4 |W020| input pixels
(ε = 2 W020 λ f / ρ_max, dx = λ f / (2 ρ_max)); :mod:`augment.image` matches that.

Sampling is batched: one call draws all B samples with torch ops from an explicit
``torch.Generator`` (on the generator's device), then moves them to ``device``.  The emulated
bench (harness.lab.bench) is a generator too; the fields it sets beyond ``POLICY_FIELDS`` are what
no family here models.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from harness.errors import SimgapError
from harness.optics.params import (
    FAMILY_FIELDS,
    OPTIONAL_FAMILY_FIELDS,
    Compose,
    Imperfections,
    OpticsConfig,
    ParameterGenerator,
)

FAMILIES = tuple(FAMILY_FIELDS)  # defocus, misalignment, phase_jitter, sensor
OPTIONAL_FAMILIES = tuple(OPTIONAL_FAMILY_FIELDS)  # slm_axial, lut_tilt, crosstalk: opt-in

Range = float | tuple[float, float] | None


@dataclass(frozen=True)
class Knob:
    """One range of a family: its unit, what it means, and its value at strength s."""

    unit: str
    doc: str
    at: Callable[[float], Range]
    pair: bool = False  # (low, high) or None; otherwise a half-width >= 0
    maximum: float = math.inf  # a half-width must stay below it


def check_strength(value, field: str) -> float:
    """A strength must be a real number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise SimgapError(f"{field}: strength must be a number in [0, 1], got {value!r}")
    return float(value)


def _linear(at_one: float) -> Callable[[float], float]:
    return lambda s: s * at_one


class Family(ParameterGenerator):
    """A family of imperfections: ``strength`` in [0, 1] plus optional explicit ``ranges``.

    Its :meth:`step` draws the fields ``FAMILY_FIELDS[name]`` (those that are not off)."""

    name: ClassVar[str]
    KNOBS: ClassVar[dict[str, Knob]]

    def __init__(self, strength: float = 0.5, ranges: Mapping[str, Range] | None = None):
        self.strength = check_strength(strength, f"strength.{self.name}")
        self.overrides = {k: self._check_range(k, v) for k, v in (ranges or {}).items()}

    def _check_range(self, key: str, value) -> Range:
        field = f"ranges.{self.name}.{key}"
        knob = self.KNOBS.get(key)
        if knob is None:
            raise SimgapError(f"{field}: unknown range (choose from {', '.join(self.KNOBS)})")
        if knob.pair:
            if value is None:
                return None
            try:
                low, high = (float(v) for v in value)
            except (TypeError, ValueError):
                raise SimgapError(f"{field}: expected [low, high] or null, got {value!r}") from None
            if not 0 < low <= high < math.inf:
                raise SimgapError(f"{field}: need 0 < low <= high < inf, got {value!r}")
            return (low, high)
        real = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not real or not 0 <= value < knob.maximum:
            bound = "finite" if knob.maximum == math.inf else f"< {knob.maximum:g}"
            raise SimgapError(f"{field}: expected a {bound} number >= 0, got {value!r}")
        return float(value)

    def ranges(self, config: OpticsConfig | None = None) -> dict[str, Range]:
        """Ranges in use: the strength mapping, overridden by explicit ranges."""
        mapped = {key: knob.at(self.strength) for key, knob in self.KNOBS.items()}
        return {**mapped, **self.overrides}

    @property
    def is_ideal(self) -> bool:
        """True when every range is off (None or 0): sampling returns no fields."""
        return all(v is None or v == 0 for v in self.ranges().values())

    def step(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        *,
        config: OpticsConfig,
        device: torch.device | str | None = None,
        channels: int = 1,
    ) -> Imperfections:
        """Draw ``batch`` independent samples as :class:`Imperfections` on ``device``."""
        draw = Draw(batch, generator)
        fields = self._draw(draw, self.ranges(config), config, channels)
        device = generator.device if device is None else device
        return Imperfections(**{k: v.to(device) for k, v in fields.items() if v is not None})

    def _draw(self, draw: Draw, r: dict, config: OpticsConfig, channels: int) -> dict:
        raise NotImplementedError


class Draw:
    """Batched uniform draws of shape (B, *shape) from one generator."""

    def __init__(self, batch: int, generator: torch.Generator):
        if not isinstance(generator, torch.Generator):
            raise TypeError("sampling needs an explicit torch.Generator")
        self.batch, self.gen = batch, generator

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(self.batch, *shape, generator=self.gen, device=self.gen.device)

    def sym(self, half: float, *shape: int) -> torch.Tensor | None:
        """U(−half, half), or None when half = 0."""
        return None if half == 0 else (2 * self.rand(*shape) - 1) * half

    def between(self, pair: tuple[float, float] | None, log: bool = False) -> torch.Tensor | None:
        """U(low, high) (log-uniform with ``log``), or None when the pair is None."""
        if pair is None:
            return None
        low, high = (math.log(v) for v in pair) if log else pair
        value = low + (high - low) * self.rand()
        return value.exp() if log else value

    def integers(self, pair: tuple[float, float] | None, field: str) -> torch.Tensor | None:
        """Uniform integers in {ceil(low), ..., floor(high)} as floats, or None."""
        if pair is None:
            return None
        low, high = math.ceil(pair[0]), math.floor(pair[1])
        if high < low:
            raise SimgapError(f"{field}: range {list(pair)} holds no integer")
        return low + torch.floor(self.rand() * (high - low + 1)).clamp_max(high - low)

    def normal(self, *shape: int) -> torch.Tensor:
        return torch.randn(self.batch, *shape, generator=self.gen, device=self.gen.device)


class Defocus(Family):
    """Camera defocus: W020 ~ U(−w, w) waves, Δz = W020 · config.dz_per_wave metres."""

    name = "defocus"
    KNOBS: ClassVar[dict[str, Knob]] = {
        "waves": Knob("waves W020", "|defocus| at the pupil edge", _linear(1.0)),
    }

    def _draw(self, draw, r, config, channels):
        waves = draw.sym(r["waves"])
        return {"defocus_dz": None if waves is None else waves * config.dz_per_wave}


class Misalignment(Family):
    """SLM shift (SLM px) and rotation (deg -> rad), camera shift (camera px), all uniform."""

    name = "misalignment"
    KNOBS: ClassVar[dict[str, Knob]] = {
        "mask_shift_px": Knob("SLM px", "mask shift, each axis", _linear(2.0)),
        "rotation_deg": Knob("deg", "mask rotation", _linear(2.0)),
        "camera_shift_px": Knob("camera px", "camera shift, each axis", _linear(1.5)),
    }

    def _draw(self, draw, r, config, channels):
        rotation = draw.sym(r["rotation_deg"])
        return {
            "mask_shift": draw.sym(r["mask_shift_px"], 2),
            "mask_rotation": None if rotation is None else torch.deg2rad(rotation),
            "camera_shift": draw.sym(r["camera_shift_px"], 2),
        }


def _quant_bits(s: float, bits: float = 8.0) -> tuple[float, float] | None:
    return None if s == 0 else (bits - 4.0 * s, bits)


class PhaseJitter(Family):
    """SLM phase errors: white per-pixel noise, LUT scale / offset error, coarser quantization.

    ``per_channel``: independent noise for each of the k masks (temporal flicker) instead of
    one static pattern shared by all k (pixel flatness error, the default).
    """

    name = "phase_jitter"
    KNOBS: ClassVar[dict[str, Knob]] = {
        "noise_rad": Knob("rad", "max per-sample σ of per-pixel phase noise", _linear(0.3)),
        "lut_scale": Knob("1", "LUT scale error a: scale ~ U(1 − a, 1 + a)", _linear(0.15)),
        "lut_offset_rad": Knob("rad", "LUT offset", _linear(0.5)),
        "quant_bits": Knob("bits", "log2 phase levels (low, high)", _quant_bits, pair=True),
    }

    def __init__(self, strength=0.5, ranges=None, per_channel: bool = False):
        super().__init__(strength, ranges)
        self.per_channel = per_channel

    def ranges(self, config=None):
        out = super().ranges(config)
        bits = config.lut_bits if config is not None else None
        if "quant_bits" not in self.overrides and bits is not None:
            out["quant_bits"] = _quant_bits(self.strength, float(bits))
        return out

    def _draw(self, draw, r, config, channels):
        noise = None
        if r["noise_rad"] > 0:
            sigma = draw.rand() * r["noise_rad"]
            shape = (channels if self.per_channel else 1, config.N, config.N)
            noise = sigma[:, None, None, None] * draw.normal(*shape)
        scale = draw.sym(r["lut_scale"])
        bits = draw.between(r["quant_bits"])
        return {
            "phase_noise": noise,
            "lut_scale": None if scale is None else 1.0 + scale,
            "lut_offset": draw.sym(r["lut_offset_rad"]),
            "phase_levels": None if bits is None else torch.round(2.0**bits).clamp_min(2.0),
        }


def _photons(s: float) -> tuple[float, float] | None:
    return None if s == 0 else (10**2.5 / s**2, 10**4.5 / s**2)


def _adc_bits(s: float) -> tuple[float, float] | None:
    return None if s == 0 else (float(math.floor(12.0 - 4.0 * s + 0.5)), 12.0)


class Sensor(Family):
    """Camera noise: photons at full scale (log-uniform), read noise, ADC bit depth.

    Normalized frame variance a·y + b with a = 1/photons, b = read² / photons² + Δ²/12,
    Δ = 1 / (2^bits − 1) (see :mod:`harness.optics.sensor`).
    """

    name = "sensor"
    KNOBS: ClassVar[dict[str, Knob]] = {
        "photons": Knob("e⁻", "electrons at full scale (low, high), log-uniform", _photons, True),
        "read_noise_e": Knob("e⁻ rms", "max read noise", _linear(10.0)),
        "bits": Knob("bits", "ADC bit depth (low, high), integer", _adc_bits, pair=True),
    }

    def _draw(self, draw, r, config, channels):
        photons = draw.between(r["photons"], log=True)
        read = None if r["read_noise_e"] == 0 else draw.rand() * r["read_noise_e"]
        if read is not None and photons is None:
            raise SimgapError("ranges.sensor.read_noise_e: read noise needs photons (not null)")
        bits = draw.integers(r["bits"], "ranges.sensor.bits")
        return {"photons": photons, "read_noise": read, "bit_depth": bits}


class SlmAxial(Family):
    """Opt-in: the SLM off the Fourier plane by d ~ U(−d_max, d_max), drawn in mm, stored in m."""

    name = "slm_axial"
    KNOBS: ClassVar[dict[str, Knob]] = {
        "offset_mm": Knob("mm", "SLM axial offset from the Fourier plane", _linear(3.0)),
    }

    def _draw(self, draw, r, config, channels):
        offset = draw.sym(r["offset_mm"])
        return {"slm_axial_offset": None if offset is None else offset * 1e-3}


class LutTilt(Family):
    """Opt-in: a LUT scale that varies linearly across the panel, (a_x, a_y) ~ U(−a, a)."""

    name = "lut_tilt"
    KNOBS: ClassVar[dict[str, Knob]] = {
        "tilt": Knob("1", "LUT scale change from the panel centre to its edge, each axis",
                     _linear(0.08)),
    }

    def _draw(self, draw, r, config, channels):
        return {"lut_scale_tilt": draw.sym(r["tilt"], 2)}


class Crosstalk(Family):
    """Opt-in: input display crosstalk c ~ U(0, c_max) to each of the 4 neighbours."""

    name = "crosstalk"
    KNOBS: ClassVar[dict[str, Knob]] = {
        "fraction": Knob("1", "max light fraction leaking into each neighbour", _linear(0.05),
                         maximum=0.2),
    }

    def _draw(self, draw, r, config, channels):
        return {"display_crosstalk": None if r["fraction"] == 0 else draw.rand() * r["fraction"]}


SAMPLERS: dict[str, type[Family]] = {
    cls.name: cls
    for cls in (Defocus, Misalignment, PhaseJitter, Sensor, SlmAxial, LutTilt, Crosstalk)
}


def make_family(name: str, strength: float = 0.5, ranges=None, **options) -> Family:
    """The sampler of family ``name`` (one of :data:`FAMILIES` or :data:`OPTIONAL_FAMILIES`)."""
    if name not in SAMPLERS:
        raise SimgapError(f"family: unknown family {name!r} (choose from {', '.join(SAMPLERS)})")
    return SAMPLERS[name](strength, ranges, **options)


def sample_all(
    families: list[Family],
    batch: int,
    config: OpticsConfig,
    generator: torch.Generator,
    device=None,
    channels: int = 1,
) -> Imperfections | None:
    """The merged draws of several families, in order; ``None`` when all of them are ideal."""
    imp = Compose(*families).step(batch, generator, config=config, device=device,
                                  channels=channels)
    return None if imp.is_ideal else imp
