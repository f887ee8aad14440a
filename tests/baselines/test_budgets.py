"""A fair comparison: equal optimizer steps per method and fraction, selection within the label
budget, the oracle only when named, method hyper-parameters declared once."""

from __future__ import annotations

import pytest
import torch

from baselines import METHODS, get_method
from baselines.hparams import METHOD_HPARAMS, method_options, resolve
from harness.datasets import FrameData, ImageData, RealSplits
from harness.errors import SimgapError
from harness.models import HybridModel
from harness.optics import FourF, OpticsConfig
from studies import cells
from studies.config import parse_config, validate_components
from studies.grid import Cell
from studies.protocol import ORACLE_STAMP

pytestmark = pytest.mark.usefixtures("one_thread")
N, CLASSES = 8, 4


def _frames(model, images, labels, split, ids):
    with torch.no_grad():
        frames = model.simulate(images)
    return FrameData(frames, labels, split, images, ids)


@pytest.fixture(scope="module")
def setup():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(260, 1, N, N, generator=gen)
    labels = torch.arange(260) % CLASSES
    model = HybridModel(FourF(OpticsConfig(n=N), channels=1, init="random", seed=0),
                        "small_cnn", CLASSES)
    ids = torch.arange(260)
    real = RealSplits(_frames(model, images[:200], labels[:200], "pool", ids[:200]),
                      _frames(model, images[200:230], labels[200:230], "val", ids[200:230]),
                      _frames(model, images[230:], labels[230:], "test", ids[230:]))
    sim = ImageData(images[:100], labels[:100])
    return model, sim, real


def _config(**changes):
    return parse_config({"adapt": {"steps": 12, "evals": 3, "batch_size": 8}, "device": "cpu",
                         **changes})


@pytest.mark.parametrize("fraction", [0.02, 0.1, 0.5, 1.0])
def test_every_method_makes_the_same_steps(setup, monkeypatch, fraction):
    model, sim, real = setup
    config = _config(selection={"adapt": "last"})
    pool = real.pool_fractions([fraction], seed=0)[fraction]
    counted = []
    step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step",
                        lambda self, *a, **k: counted.append(1) or step(self, *a, **k))
    steps = {}
    for method in METHODS:
        hp = resolve(method)
        tconfig, kwargs = method_options(method, hp, cells.adapt_train_config(config, 0))
        counted.clear()
        get_method(method)(model, pool, None, tconfig, 0, sim_train=sim, **kwargs)
        steps[method] = len(counted)
    assert set(steps.values()) == {12}, (len(pool), steps)


class _Poison:
    """Real val that must not be read: any use raises."""

    def __getattr__(self, name):
        raise AssertionError(f"real val read ({name})")

    def __len__(self):
        raise AssertionError("real val read (len)")


@pytest.mark.parametrize("fraction", [0.02, 0.04, 0.1, 1.0])
def test_budget_selection_reads_only_the_fraction(setup, fraction):
    _, _, real = setup
    config = _config()
    assert config.selection.adapt == "real-val-from-budget"  # the default
    fenced = RealSplits(real.pool, real.val, real.for_final_evaluation())
    fenced.val = _Poison()
    fenced.for_final_evaluation = lambda: pytest.fail("real test read")
    pool = fenced.pool_fractions([fraction], seed=1)[fraction]
    cell = Cell("none", "finetune-full", fraction, 1, 0)
    train, val, counts = cells.selection_data(config, None, cell, pool, fenced)
    inside = set(pool.input_ids.tolist())
    got_train, got_val = set(train.input_ids.tolist()), set(val.input_ids.tolist())
    assert got_train | got_val == inside and not got_train & got_val
    # one image per class (2 % here) leaves nothing to hold out: the last step is selected
    assert bool(got_val) == (len(pool) >= 2 * CLASSES)
    assert counts["n_real_labels"] == len(pool) and counts["n_real_labels_extra"] == 0
    assert val.split == "budget-val"
    if got_val:  # every class of the fraction is held out once at least
        assert set(val.labels.tolist()) == set(pool.labels.tolist())


def test_real_val_counts_its_labels_as_extra(setup):
    _, _, real = setup
    pool = real.pool_fractions([0.1], seed=0)[0.1]
    cell = Cell("none", "finetune-full", 0.1, 0, 0)
    _, val, counts = cells.selection_data(_config(selection={"adapt": "real-val"}), None, cell,
                                          pool, real)
    assert val is real.val and counts["n_real_labels_extra"] == len(real.val) == 30
    assert counts["n_real_labels"] == len(pool) + 30 and counts["oracle_invalid"] == 0.0


def test_oracle_only_when_named_twice_and_stamped(setup):
    for selection in ({"adapt": "oracle"}, {"oracle": True}):
        with pytest.raises(SimgapError, match="oracle"):
            _config(selection=selection)
    config = _config(selection={"adapt": "oracle", "oracle": True})
    _, _, real = setup
    pool = real.pool_fractions([0.1], seed=0)[0.1]
    cell = Cell("none", "finetune-full", 0.1, 0, 0)
    _, val, counts = cells.selection_data(config, None, cell, pool, real)
    assert counts["oracle_invalid"] == 1.0 and len(val) == 30 and val.split == "oracle-test"
    assert "not a valid result" in ORACLE_STAMP


def test_hparams_defaults_overrides_and_errors():
    assert set(METHOD_HPARAMS) == set(METHODS)
    hp = resolve("siamese", {"margin": 0.5, "adversarial": True}, {"lr": 0.01})
    assert hp["margin"] == 0.5 and hp["lr"] == 0.01 and hp["align_weight"] == 1.0
    base = cells.adapt_train_config(_config(), 0)
    tconfig, kwargs = method_options("siamese", hp, base)
    assert kwargs["options"].adversarial_weight == 0.1 and tconfig.lr == 0.01
    _, kwargs = method_options("siamese", resolve("siamese"), base)
    assert kwargs["options"].adversarial_weight == 0.0  # adversarial off by default
    assert method_options("finetune-full", resolve("finetune-full", {"layers": "head"}),
                          base)[1] == {"mode": "head"}
    for bad, field in (({"siamese": {"margn": 1}}, "hparams.siamese.margn"),
                       ({"finetune-half": {}}, "finetune-half"),
                       ({"finetune-full": {"layers": "all"}}, "hparams.finetune-full.layers")):
        with pytest.raises(SimgapError, match="^x.yaml: ") as err:
            validate_components(_config(hparams=bad), "x.yaml")
        assert field in str(err.value)


def test_hparams_that_must_be_positive_refuse_zero():
    """lr 0 would train nothing and margin 0 turns CCSA off: one line naming the field."""
    for method, name in (("finetune-head", "lr"), ("siamese", "margin"), ("siamese", "lr")):
        message = rf"^x.yaml: .*hparams.{method}.{name}: 0(\.0)? is not a number > 0$"
        with pytest.raises(SimgapError, match=message):
            validate_components(_config(hparams={method: {name: 0}}), "x.yaml")
    hp = resolve("siamese", {"weight_decay": 0, "align_weight": 0, "adversarial_weight": 0})
    assert hp["weight_decay"] == hp["align_weight"] == hp["adversarial_weight"] == 0.0
    with pytest.raises(SimgapError, match="hparams.siamese.align_weight: -1 "):
        resolve("siamese", {"align_weight": -1})


def test_adapt_steps_must_split_evenly():
    with pytest.raises(SimgapError, match="adapt: steps"):
        parse_config({"adapt": {"steps": 10, "evals": 3}})
