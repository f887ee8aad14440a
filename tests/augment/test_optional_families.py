"""Opt-in physics families (slm_axial, lut_tilt, crosstalk): off unless a policy names them, drawn
in their documented SI ranges, and the default policy and its frames untouched by them."""

from __future__ import annotations

import pytest
import torch

from augment.physics import FAMILIES, OPTIONAL_FAMILIES, make_family
from augment.policy import available_policies, build_policy
from harness.errors import SimgapError
from harness.optics import FourF, OpticsConfig
from harness.optics.params import OPTIONAL_FAMILY_FIELDS, POLICY_FIELDS

CFG = OpticsConfig(n=16)

#: family -> (its field, the bound of |value| at strength 1 in SI units, whether it is >= 0)
BOUNDS = {
    "slm_axial": ("slm_axial_offset", 3e-3, False),  # metres
    "lut_tilt": ("lut_scale_tilt", 0.08, False),  # relative scale change, centre to edge
    "crosstalk": ("display_crosstalk", 0.05, True),  # light fraction per neighbour
}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_no_registered_policy_has_an_optional_family():
    assert set(OPTIONAL_FAMILIES) == set(BOUNDS) and not set(OPTIONAL_FAMILIES) & set(FAMILIES)
    optional_fields = {f for group in OPTIONAL_FAMILY_FIELDS.values() for f in group}
    assert not optional_fields & set(POLICY_FIELDS)  # the bench's split keeps them unmodelled
    for name in available_policies():
        assert not set(build_policy(name, config=CFG).families) & set(OPTIONAL_FAMILIES), name
    assert build_policy("physics", config=CFG).families == FAMILIES


@pytest.mark.parametrize("strength", [0.3, 1.0])
@pytest.mark.parametrize("name", OPTIONAL_FAMILIES)
def test_family_draws_its_field_in_the_documented_range(name, strength):
    field, bound, positive = BOUNDS[name]
    imp = make_family(name, strength).step(4000, gen(), config=CFG)
    assert set(dict(imp.items())) == {field}
    value = getattr(imp, field)
    assert value.shape[0] == 4000
    half = strength * bound
    assert value.abs().max() <= half * (1 + 1e-6)
    assert value.abs().max() > 0.95 * half  # the range is used, not a narrow part of it
    if positive:
        assert value.min() >= 0
    else:
        assert value.min() < -0.95 * half and abs(float(value.mean())) < 0.05 * half


@pytest.mark.parametrize("name", OPTIONAL_FAMILIES)
def test_strength_zero_leaves_frames_bitwise_unchanged(name):
    encoder = FourF(CFG, channels=2, init="random")
    images = torch.rand(4, 1, 16, 16, generator=gen(5))
    plain = build_policy("physics", config=CFG)
    zero = build_policy("physics", {name: 0.0}, CFG)
    assert zero.families == FAMILIES + (name,) and make_family(name, 0.0).is_ideal
    with torch.no_grad():  # (the sensor noise too: the generator is left as it was)
        expected = plain.frames(encoder, images, gen(3))
        assert torch.equal(zero.frames(encoder, images, gen(3)), expected)
        # The control, without sensor noise: at strength 1 the frames move.
        defocus = build_policy("physics:defocus", config=CFG).frames(encoder, images, gen(3))
        on = build_policy("physics:defocus", {name: 1.0}, CFG).frames(encoder, images, gen(3))
        assert (on - defocus).abs().max() > 1e-3
    # Opted in, it draws after the policy's own families: their draws stay the same.
    on = build_policy("physics", {name: 1.0}, CFG)
    drawn, default = on.sample(4, CFG, gen(3)), plain.sample(4, CFG, gen(3))
    assert all(torch.equal(v, getattr(drawn, k)) for k, v in default.items())
    assert getattr(drawn, BOUNDS[name][0]) is not None


def test_optional_family_needs_a_physics_policy_and_a_sane_range():
    with pytest.raises(SimgapError, match="^strengths.crosstalk: policy 'image' has no"):
        build_policy("image", {"crosstalk": 0.5}, CFG)
    with pytest.raises(SimgapError, match="^ranges.crosstalk.fraction: expected a < 0.2"):
        build_policy("physics", ranges={"crosstalk": {"fraction": 0.3}}, config=CFG)
    policy = build_policy("physics:defocus", ranges={"slm_axial": {"offset_mm": 0.5}}, config=CFG)
    assert policy.strengths["slm_axial"] == 0.0  # ranges alone opt in, at the given range
    offset = policy.sample(500, CFG, gen()).slm_axial_offset
    assert 0.45e-3 < offset.abs().max() <= 0.5e-3
