"""Metrics: accuracy, PSNR / SSIM, honest LPIPS availability, MMD and Fréchet distances."""

import math
import sys

import pytest
import torch

from harness import metrics as M
from harness.data import load_source
from harness.datasets import ImageData
from harness.models import HybridModel
from harness.optics import FourF, OpticsConfig
from harness.train import evaluate


def test_accuracy_and_per_class():
    logits = torch.eye(4)[torch.tensor([0, 1, 1, 3, 3, 0])] * 5.0
    labels = torch.tensor([0, 1, 2, 3, 0, 0])
    assert M.accuracy(logits, labels) == pytest.approx(4 / 6)
    pc = M.per_class_accuracy(logits, labels, num_classes=5)
    torch.testing.assert_close(pc[:4], torch.tensor([2 / 3, 1.0, 0.0, 1.0]))
    assert math.isnan(pc[4])  # no sample of class 4: unknown, not 0 %


def test_psnr_ssim():
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(3, 1, 32, 32, generator=gen)
    pred = (target + 0.1).clamp(0, 1)
    mse = ((pred - target) ** 2).mean((1, 2, 3))
    assert M.psnr(pred, target) == pytest.approx(
        float((10 * torch.log10(1 / mse)).mean()), rel=1e-5
    )
    assert M.ssim(target, target) == pytest.approx(1.0, abs=1e-5)
    noisy = (target + 0.2 * torch.randn(target.shape, generator=gen)).clamp(0, 1)
    assert M.ssim(noisy, target) < 0.9
    out = M.reconstruction_metrics(pred, target)
    assert set(out) == {"mse", "psnr", "ssim"}
    assert out["mse"] == pytest.approx(float(mse.mean()), rel=1e-5)


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_download(*args, **kwargs):
        raise AssertionError("LPIPS tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path


def test_lpips_unavailable_without_weights(empty_torch_home):
    path = M.lpips_weights_path("alex")
    assert path.parent == empty_torch_home / "hub" / "checkpoints"
    reason = M.lpips_status("alex")
    assert reason is not None and path.name in reason
    x = torch.rand(2, 1, 32, 32)
    with pytest.raises(M.MetricUnavailable, match="not found"):
        M.lpips_distance(x, x)
    out = M.reconstruction_metrics(x, x, lpips=True)
    assert "lpips" not in out
    assert out["unavailable"]["lpips"] == reason


def test_lpips_detects_weights_file(empty_torch_home):
    path = M.lpips_weights_path("vgg")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    assert M.lpips_status("vgg") is None
    assert M.lpips_status("alex") is not None


def test_lpips_without_the_optional_package_is_unavailable(empty_torch_home, monkeypatch):
    path = M.lpips_weights_path("alex")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")  # weights present, package missing
    monkeypatch.setitem(sys.modules, "lpips", None)  # `import lpips` fails as if not installed
    reason = M.lpips_status("alex")
    assert reason is not None and "simgap[lpips]" in reason
    x = torch.rand(2, 1, 32, 32)
    with pytest.raises(M.MetricUnavailable, match="not installed"):
        M.lpips_distance(x, x, pnet_rand=True)
    assert M.reconstruction_metrics(x, x, lpips=True)["unavailable"]["lpips"] == reason


def test_lpips_plumbing_with_random_backbone(empty_torch_home):
    pytest.importorskip("lpips")  # the optional extra simgap[lpips]
    # pnet_rand: a random backbone, no weights needed; checks the call path, it is NOT LPIPS
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(2, 1, 16, 16, generator=gen)
    b = torch.rand(2, 1, 16, 16, generator=gen)
    same = M.lpips_distance(a, a, pnet_rand=True)
    diff = M.lpips_distance(a, b, pnet_rand=True)
    assert same.shape == (2,)
    assert torch.all(same.abs() < 1e-6) and torch.all(diff > 1e-4)


def test_mmd_separates_distributions():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=gen)
    x2 = torch.randn(300, 8, generator=gen)
    y = torch.randn(300, 8, generator=gen) + 0.5
    same, shifted = M.mmd_rbf(x, x2), M.mmd_rbf(x, y)
    assert abs(same) < 0.01
    assert shifted > 10 * abs(same) and shifted > 0.02
    # the unbiased estimate does not depend on the order of the samples
    assert M.mmd_rbf(x, y) == pytest.approx(M.mmd_rbf(y, x))


def test_frechet_matches_closed_form():
    # N(0, diag s1²) vs N(m, diag s2²): ‖m‖² + Σ (s1 − s2)²
    gen = torch.Generator().manual_seed(0)
    s1, s2 = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([1.5, 1.0, 0.5])
    m = torch.tensor([1.0, -2.0, 0.0])
    x = torch.randn(40000, 3, generator=gen) * s1
    y = torch.randn(40000, 3, generator=gen) * s2 + m
    expected = float((m**2).sum() + ((s1 - s2) ** 2).sum())
    assert M.frechet_distance(x, y) == pytest.approx(expected, rel=0.03)
    assert M.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_evaluate_per_class():
    data = load_source("digits", size=16)
    model = HybridModel(FourF(OpticsConfig(n=16), channels=1, init="zeros"), task="both")
    out = evaluate(model, ImageData(data.images[:40], data.labels[:40]), per_class=True)
    assert {f"accuracy_class{i}" for i in range(10)} <= set(out)
    assert {"loss", "accuracy", "psnr", "ssim", "mse"} <= set(out)
    assert "lpips" not in out and "unavailable" not in out  # LPIPS only when asked for
