"""Python API semantics: ``evaluate(..., policy=...)`` and partial policy strengths."""

from __future__ import annotations

import pytest
import torch

from augment.physics import FAMILIES
from augment.policy import DEFAULT_STRENGTH, build_policy
from harness.data import load_source
from harness.datasets import FrameData, ImageData
from harness.errors import SimgapError
from harness.models import HybridModel
from harness.optics import FourF, OpticsConfig
from harness.train import evaluate, predict

CFG = OpticsConfig(n=8)


@pytest.fixture(scope="module")
def model_and_data():
    data = load_source("digits", size=8, limit=120)
    model = HybridModel(FourF(CFG, channels=2, init="edge", seed=0), "small_cnn", 10, seed=0)
    return model, ImageData(data.images, data.labels, split="sim-test")


def test_evaluate_applies_its_policy(model_and_data):
    model, data = model_and_data
    strong = build_policy("physics", {f: 1.0 for f in FAMILIES}, CFG)
    ideal = predict(model, data)["logits"]
    drawn = predict(model, data, strong, seed=3)["logits"]
    assert not torch.allclose(ideal, drawn)  # the policy's draws reach the frames
    assert torch.equal(drawn, predict(model, data, strong, seed=3)["logits"])  # seeded
    assert not torch.equal(drawn, predict(model, data, strong, seed=4)["logits"])
    assert evaluate(model, data, strong, seed=3)["loss"] != evaluate(model, data)["loss"]
    none = build_policy("none", config=CFG)
    assert torch.equal(predict(model, data, none)["logits"], ideal)
    frames = FrameData(model.simulate(data.images[:8]).detach(), data.labels[:8], split="val")
    with pytest.raises(SimgapError, match="policy: applies to simulated data"):
        evaluate(model, frames, strong)


def test_strengths_name_every_family_of_the_policy_or_none():
    assert build_policy("physics", None, CFG).strengths == {f: DEFAULT_STRENGTH for f in FAMILIES}
    assert build_policy("physics", {}, CFG).strengths == {f: DEFAULT_STRENGTH for f in FAMILIES}
    with pytest.raises(SimgapError) as err:
        build_policy("physics", {"defocus": 0.5}, CFG)
    message = str(err.value)
    assert "missing: misalignment, phase_jitter, sensor" in message and "physics" in message
    only = build_policy("physics:defocus", {"defocus": 0.3}, CFG)
    assert only.families == ("defocus",) and only.strengths == {"defocus": 0.3}
    off = build_policy("physics", {"defocus": 1.0, "misalignment": 0, "phase_jitter": 0,
                                   "sensor": 0}, CFG)  # fmt: skip
    params = off.params()
    assert params["strength.misalignment"] == 0.0 and params["strength.defocus"] == 1.0
