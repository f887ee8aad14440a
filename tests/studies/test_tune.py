"""``simgap tune``'s checks (before anything is written) and lr-only tuning of any policy."""

from __future__ import annotations

import pytest
import torch
import yaml

from harness.errors import SimgapError
from harness.lab.validate import read_capture_set
from studies.config import parse_config
from studies.tune import run_tuning
from tests.studies.tiny import TINY

FAST = {**TINY, "seeds": [0], "methods": ["finetune-head"],
        "training": {"epochs": 1, "batch_size": 16, "lr": 0.003}}


def test_policy_without_strengths_gets_its_lr_tuned(tmp_path):
    """The baseline gets the same sim-lr search the physics policy gets."""
    result = run_tuning(parse_config(FAST), tmp_path / "tune", trials=2, policy="none")
    doc = yaml.safe_load(result["path"].read_text())
    assert set(result["params"]) == {"lr"} and doc["name"] == "none"
    assert doc["strengths"] == {} and doc["lr"] == result["params"]["lr"] > 0
    assert doc["tuning"]["trials"] == 2


@pytest.mark.parametrize(("changes", "kwargs", "field"), [
    ({}, {"method": "finetune-head", "fraction": 0}, "--fraction"),
    ({}, {"method": "finetune-head", "fraction": 0.5}, "--fraction"),
    ({}, {"method": "finetune-head", "fraction": 1.5}, "--fraction"),
    ({}, {"fraction": 0.1}, "--fraction"),
    ({}, {"policy": "no-such-policy"}, "--policy"),
    ({"selection": {"adapt": "oracle", "oracle": True}}, {}, "selection.adapt"),
])
def test_refusals_write_nothing(tmp_path, changes, kwargs, field):
    out = tmp_path / "tune"
    with pytest.raises(SimgapError) as err:
        run_tuning(parse_config({**FAST, **changes}), out, trials=2, **kwargs)
    message = str(err.value)
    assert message.startswith(field) and "\n" not in message
    assert not out.exists()


def test_tuning_captures_on_the_bench_block_of_its_bench_seed(tmp_path, monkeypatch):
    """A study with two bench blocks: tuning on bench 1 uses bench 1's preset, not the first's."""
    from studies import tune

    presets = []
    real = tune.captures.Emulated

    def recording(optics, seed, preset, *args, **kwargs):
        presets.append((seed, preset))
        return real(optics, seed, preset, *args, **kwargs)

    monkeypatch.setattr(tune.captures, "Emulated", recording)
    config = parse_config({**FAST, "selection": {"adapt": "real-val"}, "bench": {
        "seeds": [0], "preset": "typical", "also": [{"seeds": [1], "preset": "mild"}]}})
    result = run_tuning(config, tmp_path / "tune", trials=1, policy="none", bench_seed=1)
    doc = yaml.safe_load(result["path"].read_text())
    assert presets and set(presets) == {(1, "mild")}
    assert doc["tuning"]["bench_preset"] == "mild" and doc["tuning"]["bench_seed"] == 1


def test_tuner_val_frames_are_the_frames_a_cell_sees(tmp_path):
    """The real-val objective captures a val input at its capture index of the study's plan:
    its frame equals that input's frame in the capture set of a cell of the same (policy
    model, bench seed), and only val inputs are captured."""
    from studies import cells, tune
    from studies.cache import ArtifactCache

    config = parse_config({**FAST, "selection": {"adapt": "real-val"}})
    cache = ArtifactCache(tmp_path / "cache")
    model, _, _ = cells.sim_model(config, cache, "physics", 0)
    cell_set = read_capture_set(cells.capture_set(config, cache, "physics", 0, 0, model))
    val = torch.as_tensor(cell_set.splits == "val")
    cell_frames = dict(zip(cell_set.input_ids[val].tolist(), cell_set.frames[val], strict=True))
    tune.real_val_accuracy(config, model, 0, tmp_path / "tune")  # the trial's final score
    tuned = read_capture_set(tmp_path / "tune" / "val-captures")
    assert set(tuned.splits) == {"val"} and sorted(tuned.input_ids.tolist()) == sorted(cell_frames)
    for input_id, frame in zip(tuned.input_ids.tolist(), tuned.frames, strict=True):
        assert torch.equal(frame, cell_frames[input_id])
    phase = model.encoder.phase  # the per-epoch score: the same frames, in memory
    frames, labels = tune._val_frames(config, tune.captures.bench_device(config, 0), phase, 0)
    ids = tune._val_request(config, phase, 0).ids.tolist()
    assert sorted(ids) == sorted(cell_frames) and len(frames) == len(labels) == len(ids)
    for input_id, frame in zip(ids, frames, strict=True):
        torch.testing.assert_close(frame, cell_frames[input_id], rtol=0, atol=1e-6)
