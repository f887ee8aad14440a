"""Augmentation policies: ideal at strength 0, each family acts in its own way, reproducible."""

from __future__ import annotations

import math

import pytest
import torch

from augment.physics import FAMILIES
from augment.policy import available_policies, build_policy
from harness.errors import SimgapError
from harness.optics import Camera, FourF, OpticsConfig
from tests.images import centroid, gaussian_blob

CFG = OpticsConfig(n=16)  # N = 32: small and fast
NAMES = available_policies()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def textured(batch=4, n=16, seed=0):
    """Random images with detail at every frequency (in [0, 1])."""
    return torch.rand(batch, 1, n, n, generator=gen(seed))


def high_frequency_fraction(frames, cutoff=0.2):
    """Share of the (mean-removed) power spectrum above ``cutoff`` cycles / pixel."""
    n = frames.shape[-1]
    power = torch.fft.rfft2(frames - frames.mean((-1, -2), keepdim=True)).abs().square()
    f = torch.sqrt(torch.fft.fftfreq(n)[:, None] ** 2 + torch.fft.rfftfreq(n)[None, :] ** 2)
    return (power * (f > cutoff)).sum((-1, -2)) / power.sum((-1, -2))


def policy_at(name, strength, config=CFG, **kwargs):
    families = build_policy(name, config=config).families
    return build_policy(name, {f: strength for f in families}, config, **kwargs)


# ------------------------------------------------------------------------- registry, validation
def test_registry_holds_every_family_variant_and_each_name_builds_with_flat_params():
    expected = {"none", "physics", "image"}
    for f in FAMILIES:
        expected |= {f"physics:{f}", f"physics-without:{f}", f"image:{f}"}
    assert set(NAMES) == expected
    for name in NAMES:
        policy = build_policy(name, config=CFG)
        params = policy.params()
        assert params["policy"] == name
        assert all(isinstance(v, (str, int, float)) for v in params.values()), name
        assert all(params[f"strength.{f}"] == 0.5 for f in policy.families)
    assert build_policy("physics-without:sensor").families == ("defocus", "misalignment",
                                                               "phase_jitter")
    assert "range.defocus.dz_m" in build_policy("physics", config=CFG).params()


@pytest.mark.parametrize(
    "name, kwargs, field",
    [
        ("bogus", {}, "policy"),
        ("physics:focus", {}, "policy"),
        ("physics", {"strengths": {"defocus": 1.5}}, "strengths.defocus"),
        ("physics", {"strengths": {"sensor": -0.1}}, "strengths.sensor"),
        ("image", {"strengths": {"sensor": "high"}}, "strengths.sensor"),
        ("physics", {"strengths": {"defocus": True}}, "strengths.defocus"),
        ("physics", {"strengths": {"blur": 0.5}}, "strengths.blur"),
        ("physics:defocus", {"strengths": {"sensor": 0.5}}, "strengths.sensor"),
        ("none", {"strengths": {"defocus": 0.5}}, "strengths.defocus"),
        ("physics", {"ranges": {"defocus": {"radius": 1.0}}}, "ranges.defocus.radius"),
        ("physics", {"ranges": {"sensor": {"photons": [10, 1]}}}, "ranges.sensor.photons"),
        ("physics", {"ranges": {"misalignment": {"rotation_deg": -1}}},
         "ranges.misalignment.rotation_deg"),
        ("image", {"ranges": {"defocus": {"waves": 1.0}}}, "ranges"),
    ],
)
def test_bad_names_strengths_and_ranges_raise_one_line_errors(name, kwargs, field):
    with pytest.raises(SimgapError) as info:
        build_policy(name, config=CFG, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{field}:") and "\n" not in message


# ------------------------------------------------------------------------- ideal and range
@pytest.mark.parametrize("name", NAMES)
def test_strength_zero_gives_the_ideal_frame_exactly(name):
    encoder = FourF(CFG, channels=2, init="random")
    images = textured()
    policy = policy_at(name, 0.0)
    with torch.no_grad():
        frames = policy.frames(encoder, images, gen())
        ideal = encoder(images)
    assert torch.equal(frames, ideal)
    assert policy.sample(4, CFG, gen()) is None


@pytest.mark.parametrize("name", NAMES)
def test_frames_stay_in_unit_interval_at_full_strength(name):
    encoder = FourF(CFG, channels=2, init="random")
    images = textured(batch=8)
    with torch.no_grad():
        frames = policy_at(name, 1.0).frames(encoder, images * 4, gen())  # saturating input
    assert frames.shape == (8, 2, CFG.n, CFG.n)
    assert frames.min() >= 0 and frames.max() <= 1
    if name != "none":
        assert not torch.equal(frames, encoder(images * 4).detach())


def test_evaluation_mode_is_ideal_whatever_the_policy():
    encoder = FourF(CFG, init="random")
    images = textured()
    for name in ("physics", "image"):
        frames = policy_at(name, 1.0).frames(encoder, images, gen(), train=False)
        assert torch.equal(frames, encoder(images))


def test_sampled_fields_have_the_documented_units_shapes_and_bounds():
    s, batch = 0.8, 512
    policy = policy_at("physics", s, per_channel_noise=True)
    imp = policy.sample(batch, CFG, gen(), channels=3)
    assert imp.phase_noise.shape == (batch, 3, CFG.N, CFG.N)
    assert policy_at("physics:phase_jitter", s).sample(2, CFG, gen()).phase_noise.shape == (
        2, 1, CFG.N, CFG.N)

    def spans(values, low, high):  # inside [low, high] and reaching both ends
        width = high - low
        return values.min() >= low and values.max() <= high and \
            values.min() < low + 0.05 * width and values.max() > high - 0.05 * width

    dz = s * 1.0 * CFG.dz_per_wave  # 1 wave of W020 at strength 1, in metres
    assert spans(imp.defocus_dz, -dz, dz)
    assert spans(imp.mask_shift, -2 * s, 2 * s)
    assert spans(imp.mask_rotation, -math.radians(2 * s), math.radians(2 * s))
    assert spans(imp.camera_shift, -1.5 * s, 1.5 * s)
    assert spans(imp.lut_scale, 1 - 0.15 * s, 1 + 0.15 * s)
    sigma = imp.phase_noise.std((1, 2, 3))  # estimates of σ ~ U(0, 0.3 s), 3 N² pixels each
    assert sigma.max() < 0.3 * s * 1.05 and sigma.max() > 0.3 * s * 0.95
    assert spans(imp.phase_levels, 2 ** (8 - 4 * s), 256)
    assert torch.equal(imp.phase_levels, imp.phase_levels.round())
    assert spans(imp.photons.log10(), 2.5 - 2 * math.log10(s), 4.5 - 2 * math.log10(s))
    assert spans(imp.read_noise, 0, 10 * s)
    assert set(imp.bit_depth.tolist()) == {9.0, 10.0, 11.0, 12.0}


# ------------------------------------------------------------------------- each family
def test_physics_defocus_spreads_the_psf_and_lowers_high_frequency_energy():
    """Coherent imaging: the defocus pupil phase lowers the peak of the point-spread function
    monotonically up to 1 wave (Strehl sinc²(W020)) and removes high frequencies of a frame."""
    encoder = FourF(CFG, init="zeros")
    policy = policy_at("physics:defocus", 1.0)
    imp = policy.sample(24, CFG, gen())
    waves = imp.defocus_dz.abs() / CFG.dz_per_wave
    point = torch.zeros(24, 1, CFG.n, CFG.n)
    point[..., CFG.n // 2, CFG.n // 2] = 1.0
    images = textured(batch=1).expand(24, -1, -1, -1)
    with torch.no_grad():
        peak = encoder(point, imp).amax((1, 2, 3))
        hf = high_frequency_fraction(encoder(images, imp)[:, 0], cutoff=0.3)
        hf_ideal = high_frequency_fraction(encoder(images[:1])[:, 0], cutoff=0.3)
    assert torch.equal(peak[waves.argsort()], peak.sort(descending=True).values)
    assert peak.max() / peak.min() > 5
    assert (hf[waves > 0.2] < 0.9 * hf_ideal).all()


def test_image_defocus_lowers_high_frequency_energy():
    encoder = FourF(CFG, init="zeros")
    images = textured(batch=1).expand(16, -1, -1, -1)
    with torch.no_grad():
        ideal = encoder(images)
        blurred = policy_at("image:defocus", 1.0).frames(encoder, images, gen())
    hf = high_frequency_fraction(blurred[:, 0], cutoff=0.3)
    hf_ideal = high_frequency_fraction(ideal[:1, 0], cutoff=0.3)
    assert (hf <= hf_ideal * 1.001).all() and hf.mean() < 0.7 * hf_ideal


def test_physics_misalignment_moves_the_psf_centroid_by_the_camera_shift():
    cfg = OpticsConfig(n=32)
    encoder = FourF(cfg, init="zeros")  # clear aperture: SLM shift / rotation leave |PSF| as is
    images = gaussian_blob(batch=8, n=32, sigma=1.5)
    imp = policy_at("physics:misalignment", 1.0, cfg).sample(8, cfg, gen())
    with torch.no_grad():
        moved = centroid(encoder(images, imp)[:, 0]) - centroid(encoder(images[:1])[:, 0])
    torch.testing.assert_close(moved, imp.camera_shift, atol=0.05, rtol=0)
    assert imp.camera_shift.abs().max() > 0.5


def test_physics_mask_shift_and_rotation_change_a_structured_psf():
    encoder = FourF(CFG, init="random")
    images = gaussian_blob(batch=6, n=16, sigma=1.5)
    policy = build_policy("physics:misalignment", {"misalignment": 1.0}, CFG,
                          ranges={"misalignment": {"camera_shift_px": 0.0}})
    imp = policy.sample(6, CFG, gen())
    assert imp.camera_shift is None
    with torch.no_grad():
        change = (encoder(images, imp) - encoder(images)).abs().amax((1, 2, 3))
    assert (change > 0.05 * encoder(images).max()).all()


def test_image_misalignment_translates_within_the_camera_shift_range():
    encoder = FourF(CFG, init="zeros")
    images = gaussian_blob(batch=16, n=16, sigma=1.5)
    with torch.no_grad():
        ideal = encoder(images[:1])
        frames = policy_at("image:misalignment", 1.0).frames(encoder, images, gen())
    moved = centroid(frames[:, 0]) - centroid(ideal[:, 0])
    assert moved.abs().max() <= 1.5 + 0.1 and moved.abs().max() > 0.5


def test_phase_jitter_changes_the_psf_but_conserves_energy_on_the_full_grid():
    """Every phase-jitter field acts on the SLM phase only, so |mask| and Parseval hold."""
    encoder = FourF(CFG, init="random")
    images = textured(batch=1).expand(6, -1, -1, -1)
    imp = policy_at("physics:phase_jitter", 1.0).sample(6, CFG, gen())
    with torch.no_grad():
        energy = encoder.field(images, imp).abs().square().sum((-1, -2))
        ideal_energy = encoder.field(images[:1]).abs().square().sum((-1, -2))
        change = (encoder(images, imp) - encoder(images[:1])).abs().amax((1, 2, 3))
    torch.testing.assert_close(energy, ideal_energy.expand_as(energy), rtol=1e-4, atol=0)
    assert (change > 1e-3).all()


def test_lut_offset_alone_is_a_global_phase_and_leaves_frames_unchanged():
    encoder = FourF(CFG, init="random")
    images = textured()
    off = {"noise_rad": 0.0, "lut_scale": 0.0, "quant_bits": None, "lut_offset_rad": 0.5}
    policy = build_policy("physics:phase_jitter", {"phase_jitter": 1.0}, CFG,
                          ranges={"phase_jitter": off})
    imp = policy.sample(4, CFG, gen())
    assert set(dict(imp.items())) == {"lut_offset"}
    with torch.no_grad():
        torch.testing.assert_close(encoder(images, imp), encoder(images), atol=1e-5, rtol=0)


def test_sensor_noise_variance_follows_a_y_plus_b():
    """Flat fields at several levels: var = y / P + read² / P² + Δ² / 12, per sample."""
    ranges = {"sensor": {"photons": [300, 3000], "read_noise_e": 10.0, "bits": [10, 12]}}
    policy = build_policy("physics:sensor", {"sensor": 1.0}, CFG, ranges=ranges)
    batch, levels = 4, torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])
    imp = policy.sample(batch, CFG, gen(1))
    flat = levels[:, None, None, None, None] * torch.ones(len(levels), batch, 1, 96, 96)
    g = gen(2)
    var = torch.stack([Camera()(y, imp, g).var((1, 2, 3)) for y in flat])  # (levels, batch)
    P, read = imp.photons, imp.read_noise
    a, b = 1 / P, read**2 / P**2 + 1 / (12 * (2**imp.bit_depth - 1) ** 2)
    torch.testing.assert_close(var, levels[:, None] * a + b, rtol=0.12, atol=0)
    design = torch.stack((levels, torch.ones_like(levels)), 1)
    fit = torch.linalg.lstsq(design, var).solution  # (2, batch): slope, intercept
    torch.testing.assert_close(fit[0], a, rtol=0.1, atol=0)


def test_image_sensor_noise_raises_the_variance_of_a_flat_field():
    encoder = FourF(CFG, init="zeros")
    flat = torch.full((8, 1, CFG.n, CFG.n), 0.5)
    with torch.no_grad():
        ideal = encoder(flat)[:, :, 4:-4, 4:-4]
        noisy = policy_at("image:sensor", 1.0).frames(encoder, flat, gen())[:, :, 4:-4, 4:-4]
    assert ((noisy - ideal).var((1, 2, 3)) > 1e-6).all()


@pytest.mark.parametrize("kind", ["physics", "image"])
@pytest.mark.parametrize("family", FAMILIES)
def test_larger_strength_perturbs_frames_more(kind, family):
    encoder = FourF(CFG, init="random")
    images = textured(batch=1).expand(32, -1, -1, -1)
    with torch.no_grad():
        ideal = encoder(images[:1])
        error = [
            (policy_at(f"{kind}:{family}", s).frames(encoder, images, gen()) - ideal).abs().mean()
            for s in (0.25, 0.5, 1.0)
        ]
    assert error[0] < error[1] < error[2], error


# ------------------------------------------------------------------------- randomness
@pytest.mark.parametrize("name", ["physics", "image"])
def test_same_seed_reproduces_and_other_seed_differs(name):
    encoder = FourF(CFG, channels=2, init="random")
    images = textured()
    policy = policy_at(name, 1.0)
    with torch.no_grad():
        first = policy.frames(encoder, images, gen(7))
        again = build_policy(name, policy.strengths, CFG).frames(encoder, images, gen(7))
        other = policy.frames(encoder, images, gen(8))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


@pytest.mark.parametrize("name", [f"{k}:{f}" for k in ("physics", "image") for f in FAMILIES])
def test_samples_in_a_batch_are_independent(name):
    encoder = FourF(CFG, init="random")
    batch = 6
    images = textured(batch=1).expand(batch, -1, -1, -1)
    policy = policy_at(name, 1.0)
    with torch.no_grad():
        frames = policy.frames(encoder, images, gen()).flatten(1)
    distance = torch.cdist(frames, frames)
    assert (distance + torch.eye(batch) > 1e-4).all()  # every pair of samples differs
    if policy.kind == "physics":
        for key, value in policy.sample(batch, CFG, gen()).items():
            rows = value.flatten(1) if value.dim() > 1 else value[:, None]
            if key not in ("bit_depth", "phase_levels"):  # integers may repeat by chance
                assert len(torch.unique(rows, dim=0)) == batch, key


@pytest.mark.parametrize("name", ["physics", "image"])
def test_gradients_reach_the_mask_through_the_policy(name):
    encoder = FourF(CFG, init="random")
    frames = policy_at(name, 1.0).frames(encoder, textured(), gen())
    (frames * torch.linspace(0, 1, CFG.n)).sum().backward()
    grad = encoder.phase.grad
    assert torch.isfinite(grad).all() and grad.abs().max() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["physics", "image"])
def test_policies_run_on_cuda_with_a_cuda_generator(name):
    encoder = FourF(CFG, channels=2, init="random").cuda()
    generator = torch.Generator(device="cuda").manual_seed(0)
    policy = policy_at(name, 1.0)
    frames = policy.frames(encoder, textured().cuda(), generator)
    assert frames.device.type == "cuda" and frames.min() >= 0 and frames.max() <= 1
    if name == "physics":
        imp = policy.sample(4, CFG, generator, "cuda", channels=2)
        assert all(v.device.type == "cuda" for _, v in imp.items())
