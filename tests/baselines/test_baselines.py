"""Adaptation baselines on emulated-bench captures, and the sealed real test split."""

import pytest
import torch

from baselines import METHODS, SiameseOptions, demo, get_method
from harness.data import ImageSet, load_source, split_indices
from harness.datasets import FrameData, ImageData, RealSplits, RealTestSealed
from harness.errors import SimgapError
from harness.lab.bench import EmulatedBench
from harness.lab.captures import write_capture_set
from harness.lab.validate import read_capture_set
from harness.models import HybridModel
from harness.optics import FourF, OpticsConfig
from harness.train import TrainConfig, evaluate, feature_gap, fit

pytestmark = pytest.mark.usefixtures("one_thread")

N = 16


@pytest.fixture(scope="module")
def study():
    """A sim-trained model (ideal optics) and its captures through a typical emulated bench."""
    data = load_source("digits", size=N)
    sizes = {"train": 480, "val": 150, "pool": 300, "rval": 150, "test": 300}
    idx = split_indices(data.labels, sizes, seed=0)
    sim_train = ImageData(data.images[idx["train"]], data.labels[idx["train"]])
    sim_val = ImageData(data.images[idx["val"]], data.labels[idx["val"]], split="sim-val")
    cfg = OpticsConfig(n=N)
    model = HybridModel(FourF(cfg, channels=2, init="random", seed=0), "small_cnn", 10)
    fit(model, sim_train, sim_val, TrainConfig(epochs=3, batch_size=32, progress=False))
    bench = EmulatedBench(cfg, seed=0, preset="typical")

    def capture(name, split):
        rows = idx[name]
        frames = bench.capture(model.encoder, data.images[rows], torch.arange(len(rows)))
        return FrameData(frames, data.labels[rows], split, data.images[rows], rows)

    real = RealSplits(capture("pool", "pool"), capture("rval", "val"), capture("test", "test"))
    return model, sim_train, real


def adapt_config(**kw):
    return TrainConfig(
        **{"epochs": 3, "steps_per_epoch": 10, "batch_size": 32, "progress": False, **kw}
    )


def test_bench_is_a_gap(study):
    model, _, real = study
    test = real.for_final_evaluation()
    sim_acc = evaluate(model, ImageData(test.images, test.labels, split="sim-test"))["accuracy"]
    real_acc = evaluate(model, test)["accuracy"]
    assert sim_acc > 0.7 and real_acc < sim_acc - 0.3


def test_finetune_improves_over_zero(study):
    model, _, real = study
    test = real.for_final_evaluation()
    fractions = real.pool_fractions([0.0, 0.1], seed=0)
    assert len(fractions[0.0]) == 0 and len(fractions[0.1]) == 30
    before = {k: v.clone() for k, v in model.state_dict().items()}
    zero = get_method("finetune-full")(model, fractions[0.0], real.val, adapt_config(), seed=0)
    tuned = get_method("finetune-full")(model, fractions[0.1], real.val, adapt_config(), seed=0)
    # 0 % is no adaptation: same weights; the input model is never modified
    for k, v in zero.model.state_dict().items():
        assert torch.equal(v, before[k]) and torch.equal(model.state_dict()[k], before[k]), k
    assert zero.metrics["adapted"] is False and tuned.metrics["n_real"] == 30
    acc0 = evaluate(zero.model, test)["accuracy"]
    acc10 = evaluate(tuned.model, test)["accuracy"]
    assert acc10 > acc0 + 0.2
    # the mask is physical: fine-tuning never changes it
    assert torch.equal(tuned.model.encoder.phase, model.encoder.phase)


def test_finetune_head_trains_only_the_head(study):
    model, _, real = study
    pool = real.pool_fractions([0.1], seed=0)[0.1]
    result = get_method("finetune-head")(model, pool, real.val, adapt_config(epochs=1), seed=0)
    new, old = result.model.state_dict(), model.state_dict()
    changed = {k.split(".")[0] for k in new if not torch.equal(new[k], old[k])}
    assert result.metrics["best_epoch"] >= 0 and changed == {"head"}


def test_adaptation_never_selects_worse_than_start(study):
    # a destructive learning rate: selection on real val keeps the unadapted weights
    model, _, real = study
    pool = real.pool_fractions([0.1], seed=0)[0.1]
    bad = adapt_config(epochs=2, lr=5.0, weight_decay=0.0)
    result = get_method("finetune-full")(model, pool, real.val, bad, seed=0)
    assert result.metrics["best_epoch"] == -1
    assert all(h["val_accuracy"] < result.metrics["val_accuracy"] for h in result.fit.history)
    for k, v in result.model.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


def test_real_only_trains_from_scratch(study):
    model, _, real = study
    fractions = real.pool_fractions([0.0, 0.1], seed=0)
    empty = get_method("real-only")(model, fractions[0.0], real.val, adapt_config(), seed=0)
    trained = get_method("real-only")(model, fractions[0.1], real.val, adapt_config(), seed=0)
    assert empty.metrics["adapted"] is False
    assert torch.equal(trained.model.encoder.phase, model.encoder.phase)
    assert not torch.equal(trained.model.head.weight, model.head.weight)
    test = real.for_final_evaluation()
    assert evaluate(trained.model, test)["accuracy"] > evaluate(empty.model, test)["accuracy"] + 0.2


def test_siamese_reduces_feature_distance(study):
    model, sim_train, real = study
    pool = real.pool_fractions([0.1], seed=0)[0.1]
    test = real.for_final_evaluation()
    before = feature_gap(model, test)
    result = get_method("siamese")(
        model, pool, real.val, adapt_config(), seed=0, sim_train=sim_train,
        options=SiameseOptions(adversarial_weight=0.1),
    )  # fmt: skip
    after = feature_gap(result.extras["siamese_model"], test)
    assert after["mmd2"] < 0.5 * before["mmd2"]
    assert result.metrics["val_gap_mmd2"] < 0.5 * before["mmd2"]
    # the returned model is the real branch: a plain hybrid model that beats the sim model
    acc = evaluate(result.model, test)["accuracy"]
    assert isinstance(result.model, HybridModel)
    assert acc > evaluate(model, test)["accuracy"] + 0.2
    assert torch.equal(result.model.encoder.phase, model.encoder.phase)


def test_real_test_is_sealed(study, tmp_path):
    model, sim_train, real = study
    with pytest.raises(RealTestSealed):
        real.test  # noqa: B018 - reading the attribute is the violation
    test = real.for_final_evaluation()
    assert evaluate(model, test)["n"] == len(test)  # the final evaluation may read it
    with pytest.raises(RealTestSealed):
        fit(model, test, real.val, adapt_config())
    with pytest.raises(RealTestSealed):
        fit(model, real.pool, test, adapt_config())
    for method in METHODS.values():
        with pytest.raises(RealTestSealed):  # selecting on test
            method(model, real.pool, test, adapt_config(), 0, sim_train=sim_train)
        with pytest.raises(RealTestSealed):  # training on test
            method(model, test, real.val, adapt_config(), 0, sim_train=sim_train)
    # subsets keep the tag
    with pytest.raises(RealTestSealed):
        fit(model, test.subset(range(10)), None, adapt_config())


def test_real_splits_from_capture_set(study, tmp_path):

    model, _, real = study
    parts = {"pool": real.pool, "val": real.val, "test": real.for_final_evaluation()}
    write_capture_set(
        tmp_path / "captures",
        torch.cat([p.frames for p in parts.values()]),
        torch.cat([p.input_ids for p in parts.values()]),
        [name for name, p in parts.items() for _ in range(len(p))],
        torch.cat([p.labels for p in parts.values()]),
        [str(c) for c in range(10)],
        {"source": "digits"},
        model.encoder.phase,
        progress=False,
    )
    source = load_source("digits", size=N)
    again = RealSplits.from_capture_set(read_capture_set(tmp_path / "captures"), source)
    for name, part in (("pool", again.pool), ("val", again.val)):
        order = torch.argsort(parts[name].input_ids)  # the reader orders by input id
        torch.testing.assert_close(part.frames, parts[name].frames[order], atol=1e-4, rtol=0)
        assert torch.equal(part.images, parts[name].images[order])
        assert torch.equal(part.labels, parts[name].labels[order])
    assert again.for_final_evaluation().split == "test"
    partial = ImageSet(source.images[:10], source.labels[:10], source.classes, "digits", "x")
    with pytest.raises(SimgapError, match="not in the source"):
        RealSplits.from_capture_set(read_capture_set(tmp_path / "captures"), partial)


def test_registry():
    assert set(METHODS) == {"finetune-head", "finetune-full", "real-only", "siamese"}
    with pytest.raises(SimgapError, match="method"):
        get_method("dann")


def test_demo_command(tmp_path, capsys):
    import json

    from harness.cli import main

    out = tmp_path / "demo.json"
    args = "demo --source digits --size 16 --train 100 --val 50 --pool 100 --real-val 50 "
    args += "--test 50 --epochs 1 --channels 1 --mask random --adapt-epochs 1 "
    args += f"--adapt-steps 2 --fractions 0.05,0.2 --quiet --json {out} --out {tmp_path / 'run'}"
    assert main(args.split()) == 0
    printed = capsys.readouterr().out
    assert "| none" in printed and "| physics" in printed and "bench 20%" in printed
    rows = json.loads(out.read_text())["rows"]
    assert [r["policy"] for r in rows] == ["none", "physics"]
    assert all(0 <= r[k] <= 1 for r in rows for k in ("sim", "bench 0%", "bench 5%"))
    assert rows[0]["n 5%"] == 10 and rows[0]["n 20%"] == 20
    # the captures are kept in --out, with the results
    for policy in ("none", "physics"):
        assert len(read_capture_set(tmp_path / "run" / policy)) == 200  # pool + val + test
    assert json.loads((tmp_path / "run" / "results.json").read_text())["rows"] == rows
    assert (tmp_path / "run" / demo.MARKER).is_file()  # a later demo may replace this folder
    for bad in ("0.05,abc", "5,20"):  # fractions are proportions, as in a study config
        with pytest.raises(SystemExit):
            main(["demo", "--fractions", bad])


def test_demo_refuses_an_out_folder_it_did_not_write(tmp_path, capsys):
    """--out . must not replace unrelated none/ and physics/ folders: a non-empty --out without
    the demo's marker is one line and exit 2, before any training; nothing there changes."""
    from harness.cli import main

    (tmp_path / "physics").mkdir()
    (tmp_path / "physics" / "notes.txt").write_text("mine")
    args = ["demo", "--source", "digits", "--size", "16", "--quiet", "--out", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"simgap: error: --out: {tmp_path} ") and "\n" not in err
    assert demo.MARKER in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["physics"]
    assert (tmp_path / "physics" / "notes.txt").read_text() == "mine"
    demo.check_out(tmp_path / "new")  # a new folder, an empty one, or a previous demo output
    (tmp_path / "empty").mkdir()
    demo.check_out(tmp_path / "empty")
    (tmp_path / "physics" / demo.MARKER).write_text("")
    demo.check_out(tmp_path / "physics")
