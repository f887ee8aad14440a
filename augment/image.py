"""Image-space analogues of the physics families, applied to camera frames with albumentations.

Frames (B, k, n, n) in [0, 1] become one float32 HWC image per sample (the k channels on the
channel axis, so one draw of parameters acts on all k frames of a sample); albumentations draws
new parameters per image.  Magnitudes follow the physics strength mapping of
:mod:`augment.physics` at the same strength s (camera binning b, n camera pixels):

============  ======================  ======================================================
family        albumentations          parameters at strength s
============  ======================  ======================================================
defocus       GaussianBlur            σ ~ U(0, 2 w / b) px: the geometric blur of W020 ~ U(−w, w)
                                      is a disk of radius 4 |W020| px, whose rms per axis is R/2
misalignment  Affine                  translate U(−t, t) camera px per axis, rotate U(−r, r) deg,
                                      t, r = the physics camera shift / rotation; the SLM mask
                                      shift changes the PSF, not the image: no analogue
phase_jitter  RandomBrightnessContrast contrast × U(1 − c, 1), c = 1 − exp(−(σ² + (2π a)²/12))
                                      with σ, a the physics noise / LUT-scale bounds
sensor        ShotNoise, GaussNoise,  uniform shot scale and read std whose means match the
              + ADC rounding (torch)  physics (log-uniform P): E[scale] = 2.2² E[1/P],
                                      E[std²] = r² E[1/P²] / 3; integer bits as in physics
============  ======================  ======================================================

The blur matches the physics *PSF* (at 1 wave its 80 % encircled-energy radius is 3.6 px, the
disk's 0.89 R), not the frames: the 4F system is coherent, so defocus there also makes ringing
and, with a random mask, reshuffles speckle rather than smoothing it; a Gaussian blur of the
frame removes far more high-frequency energy than the physics defocus does at the same strength.

Phase jitter has no faithful image-space analogue: SLM phase errors scatter light from the
designed PSF into a diffuse halo and a residual unmodulated term, which depends on the mask and
the input.  The closest generic effect is the loss of PSF efficiency (Strehl ratio
exp(−σ²) for white phase noise; about 1 − (2π a)²/12 for a LUT scale error a on a uniformly
distributed phase), applied as a contrast reduction.

``ShotNoise`` assumes gamma-encoded images (it linearizes with y^2.2 and re-encodes); on our
linear frames its variance is about scale · y^(−0.2) / 2.2², not a · y, so ``scale = 2.2² / P``
matches the physics variance 1/P at full scale only (at y = 0.1 it is 16 times larger).  That
mismatch is part of what an image-space policy is: generic, not the camera model.
"""

from __future__ import annotations

import math

import albumentations as A
import numpy as np
import torch

from augment.physics import FAMILIES, Draw, make_family
from harness.optics.params import OpticsConfig

_TINY = 1e-6  # GaussianBlur divides by σ: its lower bound must be > 0
_GAMMA = 2.2  # albumentations ShotNoise linearizes with this gamma


def _transforms(family: str, strength: float, config: OpticsConfig):
    """Albumentations transforms of one family at ``strength`` and their ranges, for logging."""
    if strength == 0:
        return [], {}
    r = make_family(family, strength).ranges(config)
    if family == "defocus":
        sigma = (_TINY, 2.0 * r["waves"] / config.camera.binning)
        return [A.GaussianBlur(sigma_limit=sigma, p=1.0)], {"sigma_px": sigma}
    if family == "misalignment":
        shift, rot = r["camera_shift_px"], r["rotation_deg"]
        affine = A.Affine(translate_percent=(-shift / config.n, shift / config.n),
                          rotate=(-rot, rot), interpolation=1, border_mode=0, fill=0, p=1.0)
        return [affine], {"translate_px": (-shift, shift), "rotate_deg": (-rot, rot)}
    if family == "phase_jitter":
        loss = 1.0 - math.exp(-(r["noise_rad"] ** 2 + (2 * math.pi * r["lut_scale"]) ** 2 / 12))
        contrast = A.RandomBrightnessContrast(brightness_limit=(0.0, 0.0),
                                              contrast_limit=(-loss, 0.0), p=1.0)
        return [contrast], {"contrast": (1.0 - loss, 1.0)}
    if family == "sensor":
        low, high = r["photons"]  # P ~ log-U(low, high): E[P^-m] = (low^-m - high^-m) / (m ln)
        log_span = math.log(high / low)
        inv_p, inv_p2 = (1 / low - 1 / high) / log_span, (low**-2 - high**-2) / (2 * log_span)
        shot = (_GAMMA**2 / high, _GAMMA**2 * (2 * inv_p - 1 / high))  # mean 2.2² E[1/P]
        read = (0.0, r["read_noise_e"] * math.sqrt(inv_p2))  # E[std²] = r² E[1/P²] / 3
        steps = [A.ShotNoise(scale_range=shot, p=1.0),
                 A.GaussNoise(std_range=read, per_channel=True, p=1.0)]
        return steps, {"shot_scale": shot, "read_std": read, "bits": r["bits"]}
    raise ValueError(f"unknown family {family!r}")


class ImageAugment:
    """Image-space policy: ``strengths`` maps families (of :data:`FAMILIES`) to s in [0, 1]."""

    def __init__(self, strengths: dict[str, float], config: OpticsConfig):
        self.config = config
        self.strengths = {f: strengths[f] for f in FAMILIES if f in strengths}
        steps, self.settings = [], {}
        for family, strength in self.strengths.items():
            transforms, settings = _transforms(family, strength, config)
            steps += transforms
            self.settings.update({f"{family}.{k}": v for k, v in settings.items()})
        self.compose = A.Compose(steps, p=1.0) if steps else None
        self.bits = self.settings.get("sensor.bits")

    @property
    def is_ideal(self) -> bool:
        return self.compose is None and self.bits is None

    def __call__(self, frames: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augmented copy of ``frames`` (B, k, n, n) in [0, 1], detached, on their device."""
        if self.is_ideal:
            return frames.detach()
        out = frames.detach().float()
        if self.compose is not None:
            # one seed per transform: Compose(seed=...) would give all of them the same stream
            seeds = torch.randint(0, 2**31 - 1, (len(self.compose.transforms),),
                                  generator=generator, device=generator.device).tolist()
            for transform, seed in zip(self.compose.transforms, seeds):
                transform.set_random_seed(seed)
            hwc = np.ascontiguousarray(out.cpu().permute(0, 2, 3, 1).numpy())
            augmented = np.stack([self.compose(image=img)["image"] for img in hwc])
            out = torch.from_numpy(augmented.reshape(hwc.shape)).permute(0, 3, 1, 2)
            out = out.to(frames.device).clamp(0.0, 1.0)
        if self.bits is not None:
            depth = Draw(out.shape[0], generator).integers(self.bits, "sensor.bits")
            levels = (2.0 ** depth.to(out.device) - 1.0).reshape(-1, 1, 1, 1)
            out = torch.round(out * levels) / levels
        return out.to(frames.dtype)
