"""``--set key.sub=value`` overrides of a study config, and naming the fields a stored study's
config differs in."""

from __future__ import annotations

import pytest

from harness.cli import main
from harness.errors import SimgapError
from studies.config import load_config
from studies.overrides import apply_overrides, changed_fields
from tests.studies.tiny import study_of


def test_a_valid_override_changes_the_field_and_the_hash():
    base = load_config("quick")
    changed = load_config("quick", ["training.epochs=5", "bench.preset=harsh",
                                    "fractions=[0, 0.05]"])  # fmt: skip
    assert (changed.training.epochs, changed.bench.preset) == (5, "harsh")
    assert changed.fractions == [0.0, 0.05] and base.training.epochs != 5
    assert changed.hash() != base.hash()
    assert changed_fields(base.model_dump(mode="json"), changed.model_dump(mode="json")) == [
        "bench.preset", "fractions", "training.epochs"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.epochs=abc", "training.epochs: Input should be a valid integer"),
        ("training.epoch=3", "training.epoch: unknown field"),
        ("training", "--set 'training': expected key.sub=value"),
        ("name.sub=1", "--set name.sub: name is not a mapping"),
    ],
)
def test_an_invalid_override_is_one_line_naming_the_field(override, message):
    with pytest.raises(SimgapError, match=None) as err:
        load_config("quick", [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_study_check_with_a_bad_override_exits_2_with_one_line(capsys):
    assert main(["study", "check", "quick", "--set", "adapt.steps=-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("simgap: error: ") and "adapt.steps" in err and "\n" not in err


def test_overrides_do_not_touch_the_data_read():
    data = {"training": {"epochs": 3}}
    assert apply_overrides(data, ["training.lr=0.1", "new.deep.key=x"]) == {
        "training": {"epochs": 3, "lr": 0.1}, "new": {"deep": {"key": "x"}}}
    assert data == {"training": {"epochs": 3}}


def test_a_changed_config_names_the_changed_fields(tmp_path):
    study_of(tmp_path)
    with pytest.raises(SimgapError, match=r"different config .*changed: seeds\)"):
        study_of(tmp_path, seeds=[0, 1, 2])
