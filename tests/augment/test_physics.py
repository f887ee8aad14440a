"""Physics families as parameter generators: their fields, composition, and the draw order."""

from __future__ import annotations

import pytest
import torch

from augment.physics import FAMILIES, make_family, sample_all
from augment.policy import build_policy
from harness.optics import Imperfections, OpticsConfig
from harness.optics.params import FAMILY_FIELDS, POLICY_FIELDS, Compose, ParameterGenerator

CFG = OpticsConfig(n=16)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_families_are_the_declared_field_groups():
    assert FAMILIES == tuple(FAMILY_FIELDS)
    assert sorted(POLICY_FIELDS) == sorted(f for g in FAMILY_FIELDS.values() for f in g)
    assert len(set(POLICY_FIELDS)) == len(POLICY_FIELDS)  # no field belongs to two families


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_steps_to_exactly_its_fields(name):
    family = make_family(name, 1.0)
    assert isinstance(family, ParameterGenerator)
    imp = family.step(5, gen(), config=CFG)
    assert isinstance(imp, Imperfections)
    assert set(dict(imp.items())) == set(FAMILY_FIELDS[name])
    assert all(v.shape[0] == 5 for _, v in imp.items())
    assert make_family(name, 0.0).step(5, gen(), config=CFG).is_ideal


def test_composed_families_merge_their_draws_in_order():
    families = [make_family(f, 0.7) for f in FAMILIES]
    composed = families[0] + families[1] + families[2] + families[3]
    assert isinstance(composed, Compose) and composed.parts == tuple(families)
    a = composed.step(4, gen(3), config=CFG, channels=2)
    b = sample_all(families, 4, CFG, gen(3), channels=2)
    expected = Imperfections()
    g = gen(3)
    for family in families:  # one generator, drawn family after family
        expected = expected.merge(family.step(4, g, config=CFG, channels=2))
    for imp in (a, b):
        assert dict(imp.items()).keys() == dict(expected.items()).keys()
        assert all(torch.equal(v, getattr(expected, k)) for k, v in imp.items())


def test_a_later_generator_overrides_the_fields_it_sets():
    class Fixed(ParameterGenerator):
        def __init__(self, **values):
            self.values = values

        def step(self, batch, generator=None, **context):
            return Imperfections(**{k: torch.full((batch,), v) for k, v in self.values.items()})

    imp = (Fixed(gain=1.1, gamma=2.0) + Fixed(gain=0.9)).step(3)
    assert torch.equal(imp.gain, torch.full((3,), 0.9))
    assert torch.equal(imp.gamma, torch.full((3,), 2.0))


def test_policy_sample_is_the_composed_step_of_its_families():
    policy = build_policy("physics", {f: 0.6 for f in FAMILIES}, CFG)
    imp = policy.sample(6, CFG, gen(1), channels=3)
    again = Compose(*policy.samplers).step(6, gen(1), config=CFG, channels=3)
    assert all(torch.equal(v, getattr(again, k)) for k, v in imp.items())
    assert set(dict(imp.items())) == set(POLICY_FIELDS)


def test_split_parts_merge_back_to_the_whole():
    imp = build_policy("physics", config=CFG).sample(2, CFG, gen())
    imp.gain = torch.ones(2)
    modelled, rest = imp.split(POLICY_FIELDS)
    assert set(dict(rest.items())) == {"gain"}
    assert set(dict(modelled.items())) == set(POLICY_FIELDS)
    merged = modelled.merge(rest)
    assert all(v is getattr(imp, k) for k, v in merged.items())
    with pytest.raises(ValueError, match="not fields"):
        imp.split(["focus"])
