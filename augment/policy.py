"""Named augmentation policies: the subject of every study (docs/DESIGN.md section 4).

Names (families = defocus, misalignment, phase_jitter, sensor):

    none                         ideal simulated frames
    physics                      all four families sampled inside the optical model
    physics:<family>             one family
    physics-without:<family>     all but one (leave-one-out ablation)
    image                        albumentations analogues of all four on the camera frames
    image:<family>               one image-space analogue

A policy is built from a name, per-family strengths in [0, 1] (default 0.5; see
:mod:`augment.physics` for the strength -> physical range mapping) and, for physics policies,
optional explicit ranges.  A physics policy whose strengths or ranges name an opt-in family
(slm_axial, lut_tilt, crosstalk) draws it too, after its own families; no name includes them.
Training calls ``policy.frames(encoder, images, generator)`` once per batch.

Gradient through image policies: albumentations runs on detached numpy copies, so the frame that
the head sees is ``aug + (frames − frames.detach())``: the augmented values forward, the identity
backward (straight-through).  The head is trained on augmented frames exactly; the mask gradient
is that of the un-augmented frame, i.e. it ignores the Jacobian of the transform (the transpose
of the blur / affine warp and the noise-free scaling).  For the additive noise transforms this is
exact; for blur and warps it is an approximation, which is one more way the image-space policy
is not the physics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial

import torch

from augment.image import ImageAugment
from augment.physics import (
    FAMILIES,
    OPTIONAL_FAMILIES,
    check_strength,
    make_family,
    sample_all,
)
from harness.errors import SimgapError
from harness.optics import FourF, Imperfections, OpticsConfig
from harness.plugins import call_plugin, find_plugin, known_names

DEFAULT_STRENGTH = 0.5


class Policy:
    """A named policy; ``kind`` is ``none``, ``physics`` or ``image``."""

    def __init__(
        self,
        name: str,
        kind: str,
        families: tuple[str, ...],
        strengths: Mapping[str, float] | None = None,
        config: OpticsConfig | None = None,
        ranges: Mapping[str, Mapping] | None = None,
        per_channel_noise: bool = False,
    ):
        strengths, ranges = dict(strengths or {}), dict(ranges or {})
        if kind == "physics":  # opt-in families, drawn after the policy's own
            families += tuple(f for f in OPTIONAL_FAMILIES if f in strengths or f in ranges)
        self.name, self.kind, self.families = name, kind, families
        self.config = config or OpticsConfig()
        for family, value in strengths.items():
            self._check_family(family, "strengths")
            check_strength(value, f"strengths.{family}")
        self.strengths = {f: float(strengths.get(f, DEFAULT_STRENGTH if f in FAMILIES else 0.0))
                          for f in families}
        if ranges and kind != "physics":
            raise SimgapError(f"ranges: only physics policies take explicit ranges, not {name!r}")
        for family in ranges:
            self._check_family(family, "ranges")
        options = {"phase_jitter": {"per_channel": per_channel_noise}}
        self.samplers = [
            make_family(f, self.strengths[f], ranges.get(f), **options.get(f, {}))
            for f in families if kind == "physics"
        ]  # fmt: skip
        self._image: dict[OpticsConfig, ImageAugment] = {}

    def _check_family(self, family: str, field: str) -> None:
        if family not in FAMILIES + OPTIONAL_FAMILIES:
            raise SimgapError(f"{field}.{family}: unknown family "
                              f"(choose from {', '.join(FAMILIES + OPTIONAL_FAMILIES)})")
        if family not in self.families:
            raise SimgapError(
                f"{field}.{family}: policy {self.name!r} has no {family} family "
                f"(its families: {', '.join(self.families) or 'none'})"
            )

    def __repr__(self) -> str:
        return f"Policy({self.name!r}, strengths={self.strengths})"

    def image_augment(self, config: OpticsConfig | None = None) -> ImageAugment:
        """The albumentations pipeline of an image policy for ``config`` (n, binning)."""
        config = config or self.config
        if config not in self._image:
            self._image[config] = ImageAugment(self.strengths, config)
        return self._image[config]

    def params(self) -> dict:
        """Flat parameters for logging: name, kind, strengths and the ranges they resolve to."""
        out: dict = {"policy": self.name, "policy.kind": self.kind,
                     "policy.families": ",".join(self.families)}
        out.update({f"strength.{f}": s for f, s in self.strengths.items()})
        if self.kind == "physics":
            for sampler in self.samplers:
                for key, value in sampler.ranges(self.config).items():
                    out[f"range.{sampler.name}.{key}"] = loggable(value)
                if sampler.name == "defocus":
                    dz = sampler.ranges()["waves"] * self.config.dz_per_wave
                    out["range.defocus.dz_m"] = dz
        elif self.kind == "image":
            settings = self.image_augment().settings
            out.update({f"image.{k}": loggable(v) for k, v in settings.items()})
        return out

    def sample(
        self,
        batch: int,
        config: OpticsConfig | None = None,
        generator: torch.Generator | None = None,
        device=None,
        channels: int = 1,
    ) -> Imperfections | None:
        """Per-sample imperfections for a batch (physics policies); ``None`` when ideal."""
        if self.kind != "physics":
            return None
        return sample_all(self.samplers, batch, config or self.config, generator, device, channels)

    def frames(
        self,
        encoder: FourF,
        images: torch.Tensor,
        generator: torch.Generator,
        train: bool = True,
    ) -> torch.Tensor:
        """Camera frames (B, k, n, n) of ``images`` under this policy (ideal when not ``train``).

        ``generator`` must live on the images' device (the camera draws its noise from it).
        """
        if not train or self.kind == "none":
            return encoder(images)
        if self.kind == "physics":
            imp = self.sample(images.shape[0], encoder.config, generator, images.device,
                              encoder.channels)
            return encoder(images, imp, generator)
        frames = encoder(images)
        augment = self.image_augment(encoder.config)
        if augment.is_ideal:
            return frames
        return augment(frames, generator) + (frames - frames.detach())


def loggable(value):
    """A range as a log-friendly value: "off", "[low, high]" or the number."""
    if value is None:
        return "off"
    if isinstance(value, tuple):
        return f"[{value[0]:.6g}, {value[1]:.6g}]"
    return value


def _registry() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Built-in policy name -> (kind, families)."""
    names: dict[str, tuple[str, tuple[str, ...]]] = {
        "none": ("none", ()),
        "physics": ("physics", FAMILIES),
    }
    names.update({f"physics:{f}": ("physics", (f,)) for f in FAMILIES})
    for f in FAMILIES:
        names[f"physics-without:{f}"] = ("physics", tuple(g for g in FAMILIES if g != f))
    names["image"] = ("image", FAMILIES)
    names.update({f"image:{f}": ("image", (f,)) for f in FAMILIES})
    return names


POLICIES: dict[str, tuple[str, tuple[str, ...]]] = _registry()


def available_policies() -> list[str]:
    return list(POLICIES)


def build_policy(
    name: str,
    strengths: Mapping[str, float] | None = None,
    config: OpticsConfig | None = None,
    ranges: Mapping[str, Mapping] | None = None,
    per_channel_noise: bool = False,
) -> Policy:
    """Policy ``name`` (see :func:`available_policies`) with per-family ``strengths`` in [0, 1].

    ``strengths`` names every family of the policy or none of them (then each is at
    ``DEFAULT_STRENGTH``): ``build_policy("physics", {"defocus": 0.5})`` is an error, as it would
    leave the other three families at a strength nobody chose; use ``physics:defocus`` for one
    family, or a strength of 0 to turn one off.
    ``ranges`` (physics only): ``{family: {key: value}}`` overriding the strength mapping;
    ``per_channel_noise``: independent SLM phase noise for each of the k masks.
    A name that is not built in may be a plug-in (:mod:`harness.plugins`, group
    ``simgap.policies``): a callable ``(strengths, config, ranges, per_channel_noise)``; the
    policy it returns takes ``name``.
    """
    if name in POLICIES:
        factory: Callable[..., Policy] | None = partial(Policy, name, *POLICIES[name])
    else:
        factory = find_plugin("policies", name)
    if factory is None:
        raise SimgapError(f"policy: unknown policy {name!r} (choose from "
                          f"{known_names('policies', available_policies())})")
    # the call checks the values
    policy = call_plugin("policies", name, factory, strengths, config, ranges, per_channel_noise)
    policy.name = name  # a plug-in is known (and logged) by the name it was asked for
    if name in POLICIES and strengths:
        own = POLICIES[name][1]
        named = [f for f in own if f in strengths]
        if named and len(named) < len(own):
            rest = ", ".join(f for f in own if f not in strengths)
            raise SimgapError(
                f"strengths: {name!r} has families {', '.join(own)}; give each a strength "
                f"(0 turns one off) or none (all {DEFAULT_STRENGTH}); missing: {rest}"
            )
    return policy
