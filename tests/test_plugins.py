"""User plug-ins (harness/plugins.py): a policy, a digital network, an adaptation method and an
image source from tests/plugins/toy.py, named by ``module:attr`` and through entry points."""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint

import pytest
import torch

from augment.policy import build_policy
from baselines import get_method
from harness import plugins
from harness.data import load_source
from harness.datasets import FrameData, ImageData
from harness.errors import SimgapError
from harness.models import DigitalNet, HybridModel, build_digital, load_model, save_model
from harness.optics import FourF, OpticsConfig
from harness.train import TrainConfig, evaluate, fit
from studies.config import parse_config, validate_components
from studies.worker import run_study
from tests.plugins import toy
from tests.studies.tiny import TINY

REF = "tests.plugins.toy:"
CFG = OpticsConfig(n=8)


def test_module_attr_references_resolve_each_kind():
    policy = build_policy(REF + "policy", {"defocus": 1.0}, CFG)
    assert policy.name == REF + "policy" and policy.strengths == {"defocus": 1.0}
    assert policy.families == ("defocus",)
    assert isinstance(build_digital(REF + "network", 2), DigitalNet)
    assert get_method(REF + "method") is toy.method
    data = load_source(REF + "source", size=8, limit=20)
    assert data.source == "toy" and len(data) == 20 and data.images.shape[-1] == 8


def test_a_plugin_network_and_source_train_and_reload(tmp_path):
    data = load_source(REF + "source", size=8)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    parts = {"sim_train": order[:60], "sim_val": order[60:80], "test": order[80:]}
    pick = {k: ImageData(data.images[v], data.labels[v]) for k, v in parts.items()}
    model = HybridModel(FourF(CFG, channels=2, init="edge", seed=0), REF + "network", 2, seed=0)
    fit(model, pick["sim_train"], pick["sim_val"], TrainConfig(epochs=4, batch_size=16, lr=0.02,
        progress=False), policy=build_policy(REF + "policy", config=CFG))  # fmt: skip
    assert evaluate(model, pick["test"])["accuracy"] > 0.8  # two easy classes, chance 0.5
    save_model(model, tmp_path / "m.pt")
    again = load_model(tmp_path / "m.pt")
    assert again.spec()["digital"] == REF + "network"
    frames = model.simulate(data.images[:4])
    logits = model.forward_frames(frames)["logits"]
    assert torch.equal(again.forward_frames(frames)["logits"], logits)
    pool = FrameData(frames, data.labels[:4], split="pool")
    val = FrameData(frames, data.labels[:4], split="val")
    result = get_method(REF + "method")(model, pool, val, TrainConfig(epochs=1, batch_size=4,
                                                                      progress=False))
    assert result.metrics["toy"] is True


def test_a_study_config_names_plugins():
    config = parse_config({**TINY, "data": {**TINY["data"], "source": REF + "source"},
                           "model": {**TINY["model"], "digital": REF + "network"},
                           "policies": ["none", REF + "policy"],
                           "methods": [REF + "method", "finetune-head"]})  # fmt: skip
    validate_components(config)  # raises on an unknown name
    with pytest.raises(SimgapError, match="methods: .*has no attribute 'nothing'"):
        parse_config({**TINY, "methods": [REF + "nothing"]})
    with pytest.raises(SimgapError, match="methods: 'dann' is not one of finetune-head"):
        parse_config({**TINY, "methods": ["dann"]})


def test_entry_points_register_by_name(monkeypatch):
    installed = {
        group: [EntryPoint(name="toy", value=REF + attr, group=group)]
        for group, attr in [("simgap.policies", "policy"), ("simgap.networks", "network"),
                            ("simgap.methods", "method"), ("simgap.sources", "source")]
    }  # fmt: skip
    monkeypatch.setattr(plugins, "entry_points", lambda group: installed.get(group, []))
    assert build_policy("toy", config=CFG).name == "toy"
    assert isinstance(build_digital("toy", 3), DigitalNet)
    assert get_method("toy") is toy.method
    assert load_source("toy", size=8).source == "toy"
    with pytest.raises(SimgapError, match=r"unknown policy 'tyo' .*physics, .*toy, or a module"):
        build_policy("tyo")


def test_plugin_errors_are_one_line():
    for name, message in [
        (REF + "nope", "has no attribute 'nope'"),
        ("tests.plugins.broken:policy", "importing tests.plugins.broken failed: toy plug-in"),
        ("physics:nope", "unknown policy 'physics:nope'"),
        ("no_such_package.mod:make", "unknown policy"),
    ]:
        with pytest.raises(SimgapError) as err:
            build_policy(name)
        assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SimgapError, match="did not return an ImageSet of 8x8 images"):
        load_source(REF + "bad_source", size=8)


def test_a_plugin_that_raises_is_one_line():
    calls = [("policies", lambda: build_policy(REF + "raising", config=CFG)),
             ("networks", lambda: build_digital(REF + "raising", 2)),
             ("sources", lambda: load_source(REF + "raising", size=8))]  # fmt: skip
    for kind, call in calls:
        with pytest.raises(SimgapError) as err:
            call()
        assert str(err.value) == (f"{kind}: {REF + 'raising'!r} failed "
                                  "(ValueError: toy plug-in refuses)")  # fmt: skip
    with pytest.raises(SimgapError, match=r"policies\[1\] .*raising' failed .*plug-in refuses\)$"):
        validate_components(parse_config({**TINY, "policies": ["none", REF + "raising"]}))


def test_a_module_in_the_working_directory_is_found(tmp_path, monkeypatch):
    (tmp_path / "simgap_user_nets.py").write_text(
        "from tests.plugins.toy import network\n\ndef wide(in_channels):\n"
        "    return network(in_channels)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert isinstance(build_digital("simgap_user_nets:wide", 2), DigitalNet)
    assert str(tmp_path) not in sys.path  # only for the import
    assert isinstance(build_digital("simgap_user_nets:wide", 2), DigitalNet)  # imported once
    with pytest.raises(SimgapError, match="is not one of"):
        build_digital("simgap_no_such_module:net", 2)


def test_a_study_runs_on_plugins_only(tmp_path):
    """Source, network, policy and method all plug-ins: every cell of a study completes."""
    config = parse_config({
        **TINY, "data": {**TINY["data"], "source": REF + "source",
                         "sim": {"train": 40, "val": 10, "test": 10},
                         "real": {"pool": 30, "val": 10, "test": 20}},
        "model": {**TINY["model"], "digital": REF + "network"},
        "policies": ["none", REF + "policy"], "methods": [REF + "method"],
        "training": {**TINY["training"], "epochs": 2}, "fractions": [0, 0.5], "seeds": [0],
    })  # fmt: skip
    validate_components(config)
    summary = run_study(config, tmp_path / "study", workers=1, report=False)
    assert (summary["complete"], summary["cells"], summary["errors"]) == (4, 4, {})
