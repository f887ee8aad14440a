"""Study configs: validation errors name the file and the field; presets and tuned files."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from harness.errors import SimgapError
from studies.config import load_config, parse_config, validate_components

BAD = [
    ({"training": {"epochs": 0}}, "training.epochs"),
    ({"trainig": {"epochs": 1}}, "trainig: unknown field"),
    ({"fractions": [0, 5]}, "fractions: 5.0 is not in [0, 1]"),
    ({"seeds": []}, "seeds: must not be empty"),
    ({"policies": ["none", "none"]}, "label 'none' appears twice"),
    ({"optics": {"n": 16}}, "optics.n (16) must equal data.size (32)"),
    ({"policies": ["none", {"file": "missing.yaml"}]}, "policies[1].file: "),
    ({"policies": [{"name": "physics", "strengths": {"defocus": "x"}}]},
     "policies[0].strengths.defocus"),
]


@pytest.mark.parametrize(("data", "expected"), BAD)
def test_bad_config_names_file_and_field(tmp_path, data, expected):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SimgapError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message


@pytest.mark.parametrize(
    ("data", "expected"),
    [({"policies": ["none", "physics:focus"]}, "policies[1] (physics:focus)"),
     ({"methods": ["finetune-half"]}, "methods"),
     ({"bench": {"preset": "gentle"}}, "bench.preset"),
     ({"data": {"source": "cifar"}}, "data.source"),
     ({"policies": [{"name": "physics", "strengths": {"defocus": 2.0}}]}, "strengths.defocus")],
)
def test_component_names_are_checked(data, expected):
    try:
        config = parse_config(data, "x.yaml")
    except SimgapError as exc:  # some are caught by the schema already
        assert expected.split("[")[0].split(".")[0] in str(exc)
        return
    with pytest.raises(SimgapError, match=r"^x\.yaml: ") as err:
        validate_components(config, "x.yaml")
    assert expected in str(err.value)


def test_cli_bad_config_exits_2_with_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nadapt: {lr: -1}\n")
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "study", "run", str(path)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "adapt.lr" in lines[0]


def test_presets_are_valid():
    quick, paper = load_config("quick"), load_config("paper")
    for config in (quick, paper):
        validate_components(config)
    assert len(quick.seeds) >= 2
    assert len(paper.seeds) == 5 and len(paper.bench.seeds) == 3
    assert paper.data.source == "fashion-mnist" and paper.data.limit is None
    sizes = [*paper.data.sim.model_dump().values(), *paper.data.real.model_dump().values()]
    assert 60_000 <= sum(sizes) <= 70_000


def test_tuned_policy_file_is_inlined(tmp_path):
    (tmp_path / "tuned.yaml").write_text(yaml.safe_dump(
        {"name": "physics", "label": "physics-tuned", "strengths": {"defocus": 0.25},
         "lr": 0.002, "tuning": {"real_val_acc": 0.5}}))
    config = parse_config({"policies": ["none", {"file": "tuned.yaml"}]}, "s.yaml", tmp_path)
    spec = config.policy("physics-tuned")
    assert (spec.name, spec.strengths, spec.lr, spec.file) == ("physics", {"defocus": 0.25},
                                                               0.002, None)


def test_tuned_policy_keeps_its_tuning_provenance(tmp_path):
    """The tuning block (labels tuning read, trials, protocol) stays in the spec and its hash."""
    doc = {"name": "physics", "label": "physics-tuned", "strengths": {"defocus": 0.25},
           "lr": 0.002, "tuning": {"protocol": "real-val", "real_labels": 40, "trials": 3}}
    (tmp_path / "tuned.yaml").write_text(yaml.safe_dump(doc))
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump({k: v for k, v in doc.items()
                                                         if k != "tuning"}))
    tuned = parse_config({"policies": [{"file": "tuned.yaml"}]}, "s.yaml", tmp_path)
    plain = parse_config({"policies": [{"file": "plain.yaml"}]}, "s.yaml", tmp_path)
    record = tuned.policy("physics-tuned").tuning
    assert (record.protocol, record.real_labels, record.trials) == ("real-val", 40, 3)
    assert plain.policy("physics-tuned").tuning is None
    assert tuned.hash() != plain.hash()
    again = parse_config(tuned.model_dump(mode="json"), "config.yaml", tmp_path)
    assert again.hash() == tuned.hash()  # a study folder's config.yaml reads back the same


def test_old_study_folder_with_adapt_epochs_gets_a_hint(tmp_path, capsys):
    """A study folder from before adapt.steps: one line naming the field and what to do."""
    from harness.cli import main
    from studies.storage import CONFIG_YAML
    from tests.studies.tiny import study_of

    handle = study_of(tmp_path, seeds=[0], methods=["finetune-head"])
    path = handle.study_dir / CONFIG_YAML
    old = yaml.safe_load(path.read_text())
    old["adapt"] = {k: v for k, v in old["adapt"].items() if k not in ("steps", "evals")}
    old["adapt"]["epochs"] = 3
    path.write_text(yaml.safe_dump(old))
    for command in ("status", "report"):
        assert main(["study", command, str(handle.study_dir)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "adapt.epochs: replaced by adapt.steps" in err[0], err
        assert "new --out" in err[0]
