"""Hybrid models and the training loop: every task learns, selection, checkpoints, determinism."""

import pytest
import torch

from augment.policy import build_policy
from harness.data import load_source, split_indices
from harness.datasets import ImageData
from harness.errors import SimgapError
from harness.models import HybridModel, load_model, save_model
from harness.optics import FourF, OpticsConfig
from harness.train import TrainConfig, evaluate, fit

pytestmark = pytest.mark.usefixtures("one_thread")

N = 16  # image side; the digits source is 8x8 upsampled


@pytest.fixture(scope="module")
def digits():
    data = load_source("digits", size=N)
    split = split_indices(data.labels, {"train": 480, "val": 200}, seed=0)
    train = ImageData(data.images[split["train"]], data.labels[split["train"]])
    val = ImageData(data.images[split["val"]], data.labels[split["val"]], split="sim-val")
    return train, val


def make_model(task="classify", digital="small_cnn", n=N, channels=2, seed=0):
    encoder = FourF(OpticsConfig(n=n), channels=channels, init="random", seed=seed)
    return HybridModel(encoder, digital, num_classes=10, task=task, seed=seed)


def quick(**kw):
    return TrainConfig(**{"epochs": 3, "batch_size": 32, "progress": False, **kw})


@pytest.mark.parametrize("task", ["classify", "reconstruct", "both"])
def test_small_cnn_learns_each_task(digits, task):
    train, val = digits
    model = make_model(task)
    # reconstruction first learns the mean image, then the details: more, smaller steps
    config = quick() if task == "classify" else quick(epochs=5, batch_size=16, lr=3e-3)
    result = fit(model, train, val, config)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.7 * losses[0]
    metrics = evaluate(model, val)
    if task != "reconstruct":
        # chance is 10 %; P(>= 50 % of 200 by guessing) is below 1e-40
        assert metrics["accuracy"] > 0.5
    if task != "classify":
        # better than the best constant guess: the mean training image
        mean = train.images.mean(0, keepdim=True).expand_as(val.images)
        baseline = 10 * torch.log10(1 / ((mean - val.images) ** 2).mean((1, 2, 3))).mean()
        assert metrics["psnr"] > float(baseline) + 0.75
        assert 0 < metrics["ssim"] <= 1


def test_resnet18_learns():
    # ResNet-18 is ~30x the small CNN: a two-class problem (digits 0 / 1) at 8 px keeps it quick
    data = load_source("digits", size=8)
    keep = (data.labels < 2).nonzero().squeeze(1)
    images, labels = data.images[keep], data.labels[keep]
    split = split_indices(labels, {"train": 96, "val": 100}, seed=1)
    train = ImageData(images[split["train"]], labels[split["train"]])
    val = ImageData(images[split["val"]], labels[split["val"]], split="sim-val")
    encoder = FourF(OpticsConfig(n=8), channels=1, init="random", seed=0)
    model = HybridModel(encoder, "resnet18", num_classes=2)
    assert model.digital.stem[1].in_channels == 1 and model.digital.feature_dim == 512
    result = fit(model, train, val, quick(epochs=3, batch_size=16, lr=3e-4))
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.5 * losses[0]
    # chance is 50 %; P(>= 86 of 100 by guessing) < 1e-12
    assert evaluate(model, val)["accuracy"] > 0.85


def test_frames_path_equals_image_path():
    model = make_model().eval()
    images = torch.rand(4, 1, N, N)
    with torch.no_grad():
        direct = model(images)["logits"]
        via_frames = model.forward_frames(model.encoder(images))["logits"]
        via_policy = model.forward_frames(model.simulate(images, build_policy("none")))["logits"]
    torch.testing.assert_close(direct, via_frames)
    torch.testing.assert_close(direct, via_policy)


def test_selection_keeps_best_epoch(digits):
    train, val = digits
    model = make_model()
    result = fit(model, train.subset(range(160)), val, quick(epochs=4, lr=3e-3))
    accs = [h["val_accuracy"] for h in result.history]
    assert result.best_epoch == max(range(len(accs)), key=lambda i: (accs[i], -i))
    assert result.best_score == pytest.approx(max(accs))
    assert evaluate(model, val)["accuracy"] == pytest.approx(max(accs))


def test_early_stopping_stops():
    # A validation set the model cannot improve on: labels are a shuffled copy -> no gain after 1.
    data = load_source("digits", size=N)
    val = ImageData(
        data.images[:64],
        data.labels[torch.randperm(64, generator=torch.Generator().manual_seed(0))],
    )
    train = ImageData(data.images[64:128], data.labels[64:128])
    result = fit(make_model(), train, val, quick(epochs=30, patience=2, lr=1e-5, optics_lr=1e-5))
    assert result.stopped_early
    assert len(result.history) < 30
    assert len(result.history) == result.best_epoch + 1 + 2


def test_trainable_parts(digits):
    train, _ = digits
    small = train.subset(range(64))
    for trainable, train_optics, changes in (
        ("all", True, {"encoder", "digital", "head"}),
        ("all", False, {"digital", "head"}),
        ("digital", True, {"digital", "head"}),
        ("head", True, {"head"}),
    ):
        model = make_model()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        fit(model, small, None, quick(epochs=1), train_optics=train_optics, trainable=trainable)
        changed = {
            k.split(".")[0] for k, v in model.state_dict().items() if not torch.equal(v, before[k])
        }
        assert changed == changes, (trainable, train_optics)
        assert all(p.requires_grad for p in model.parameters())  # restored after fit


def physics_run(train, val, checkpoint_dir=None, callback=None):
    cfg = OpticsConfig(n=N)
    model = make_model()
    policy = build_policy("physics", config=cfg)  # every family at 0.5
    result = fit(
        model, train, val, quick(epochs=3, seed=5), policy=policy,
        checkpoint_dir=checkpoint_dir, callback=callback,
    )  # fmt: skip
    return model, result


def test_cpu_determinism_and_resume(digits, tmp_path):
    train, val = digits
    train, val = train.subset(range(96)), val.subset(range(64))
    model_a, result_a = physics_run(train, val)
    model_b, result_b = physics_run(train, val)
    assert result_a.history == result_b.history
    for (k, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), k

    class Killed(Exception):
        pass

    def kill_after_first(epoch, metrics):
        if epoch == 0:
            raise Killed

    with pytest.raises(Killed):
        physics_run(train, val, tmp_path, kill_after_first)
    seen = []
    model_c, result_c = physics_run(train, val, tmp_path, lambda e, m: seen.append(e))
    assert result_c.resumed_from == 0 and seen == [1, 2]
    assert result_c.history == result_a.history
    for (k, a), c in zip(model_a.state_dict().items(), model_c.state_dict().values()):
        assert torch.equal(a, c), k

    # a finished run's checkpoint gives the result back without training
    _, result_d = physics_run(train, val, tmp_path, lambda e, m: seen.append(e))
    assert seen == [1, 2] and result_d.history == result_a.history

    # another run's checkpoint is refused
    with pytest.raises(SimgapError, match="different run"):
        fit(make_model(), train, val, quick(epochs=4, seed=5), checkpoint_dir=tmp_path)


def test_save_and_load_model(tmp_path):
    model = make_model("both").eval()
    path = tmp_path / "model.pt"
    save_model(model, path)
    again = load_model(path).eval()
    images = torch.rand(3, 1, N, N)
    with torch.no_grad():
        out, out2 = model(images), again(images)
    torch.testing.assert_close(out["logits"], out2["logits"])
    torch.testing.assert_close(out["recon"], out2["recon"])
    assert out["recon"].shape == (3, 1, N, N)
    with pytest.raises(SimgapError, match="not a readable"):
        load_model(tmp_path / "missing.pt")


def test_bad_names():
    encoder = FourF(OpticsConfig(n=N), channels=1, init="zeros")
    with pytest.raises(SimgapError, match="digital"):
        HybridModel(encoder, "vgg99")
    with pytest.raises(SimgapError, match="task"):
        HybridModel(encoder, task="segment")
    with pytest.raises(SimgapError, match="loss_weights"):
        HybridModel(encoder, loss_weights={"colour": 1.0})
    with pytest.raises(SimgapError, match="no samples"):
        fit(HybridModel(encoder), ImageData(torch.zeros(0, 1, N, N), torch.zeros(0).long()))


def test_evaluation_under_a_policy_builds_no_graph(digits):
    """predict runs under no_grad: frames under a policy must not require grad (no optics
    autograd graph), and are the same frames as with gradients on."""
    train, _ = digits
    model, policy, index = make_model(), build_policy("physics", config=OpticsConfig(n=N)), [0, 1]
    draw = [torch.Generator().manual_seed(3) for _ in range(2)]
    with torch.no_grad():
        frames = train.batch_frames(model, index, policy, draw[0], train=True)
    assert not frames.requires_grad
    graph = train.batch_frames(model, index, policy, draw[1], train=True)
    assert graph.requires_grad and torch.equal(frames, graph.detach())
