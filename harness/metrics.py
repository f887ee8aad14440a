"""Metrics: classification accuracy, reconstruction quality, and the sim-vs-real feature gap.

* accuracy / per-class accuracy (torchmetrics; a class absent from the labels gets NaN, not 0);
* PSNR = 10 log10(1 / MSE) per image, averaged, and SSIM (torchmetrics, data range 1);
* LPIPS (the optional ``lpips`` package: ``pip install 'simgap[lpips]'``; no command needs it)
  only when it is installed and the ImageNet backbone weights are already in
  ``$TORCH_HOME/hub/checkpoints``; otherwise :class:`MetricUnavailable` is raised *before* anything
  tries to download, and :func:`reconstruction_metrics` records the metric as unavailable;
* feature distances between sim and real features: the unbiased RBF-kernel MMD² with the median
  heuristic bandwidth, and the Fréchet distance of Gaussians fitted to the features.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from harness.errors import SimgapError


class MetricUnavailable(SimgapError):
    """A metric that cannot be computed honestly here (e.g. missing pretrained weights)."""


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of samples whose arg-max class is the label."""
    if len(labels) == 0:
        return float("nan")
    from torchmetrics.functional.classification import multiclass_accuracy  # slow import

    preds = logits.argmax(dim=1)
    return float(multiclass_accuracy(preds, labels, num_classes=logits.shape[1], average="micro"))


def per_class_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """(num_classes,) recall per class; NaN for a class with no sample."""
    from torchmetrics.functional.classification import multiclass_accuracy

    preds = logits.argmax(dim=1)
    acc = multiclass_accuracy(preds, labels, num_classes=num_classes, average=None).float()
    present = torch.bincount(labels, minlength=num_classes) > 0
    return torch.where(present, acc, torch.full_like(acc, float("nan")))


# --------------------------------------------------------------------------------------------
# Reconstruction
# --------------------------------------------------------------------------------------------


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over images of 10 log10(1 / MSE) (images in [0, 1])."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(pred, target, data_range=1.0, dim=(1, 2, 3)))


def ssim(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean SSIM (Gaussian window 11, σ 1.5, data range 1)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return float(structural_similarity_index_measure(pred, target, data_range=1.0))


def _lpips_backbones() -> dict:
    from torchvision.models import AlexNet_Weights, SqueezeNet1_1_Weights, VGG16_Weights

    return {
        "alex": AlexNet_Weights.IMAGENET1K_V1,
        "vgg": VGG16_Weights.IMAGENET1K_V1,
        "squeeze": SqueezeNet1_1_Weights.IMAGENET1K_V1,
    }


def lpips_weights_path(net: str = "alex") -> Path:
    """Where torchvision looks for the LPIPS backbone's ImageNet weights."""
    backbones = _lpips_backbones()
    if net not in backbones:
        raise SimgapError(f"lpips net: '{net}' is not one of {', '.join(backbones)}")
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(backbones[net].url)


def _lpips_installed() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("lpips") is not None
    except ValueError:  # sys.modules["lpips"] is None: imports of it are blocked
        return False


def lpips_status(net: str = "alex") -> str | None:
    """None when LPIPS can be computed; otherwise the reason, in one line."""
    if not _lpips_installed():
        return ("LPIPS unavailable: the optional package lpips is not installed "
                "(pip install 'simgap[lpips]')")
    path = lpips_weights_path(net)
    if path.is_file():
        return None
    return (
        f"LPIPS unavailable: backbone weights {path} not found (put {path.name} there, "
        "e.g. copy it from a machine with internet; simgap never downloads it)"
    )


_LPIPS_MODELS: dict = {}


def lpips_distance(
    pred: torch.Tensor, target: torch.Tensor, net: str = "alex", pnet_rand: bool = False
) -> torch.Tensor:
    """Per-image LPIPS (B,) of gray images in [0, 1] (replicated to RGB, scaled to [−1, 1],
    upsampled to at least 32 px for the backbone).

    Raises :class:`MetricUnavailable` when lpips or the backbone weights are absent.
    ``pnet_rand=True`` uses a randomly initialised backbone: for testing the plumbing only,
    *not* LPIPS.
    """
    reason = lpips_status(net)
    if reason and (not pnet_rand or not _lpips_installed()):
        raise MetricUnavailable(reason)
    key = (net, pnet_rand, str(pred.device))
    if key not in _LPIPS_MODELS:
        import lpips

        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
            torch.manual_seed(0)
            model = lpips.LPIPS(net=net, pnet_rand=pnet_rand, verbose=False)
        _LPIPS_MODELS[key] = model.eval().to(pred.device)
    model = _LPIPS_MODELS[key]

    def prep(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < 32:
            x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear")
        return (x * 2 - 1).expand(-1, 3, -1, -1)

    with torch.no_grad():
        return model(prep(pred), prep(target)).reshape(-1)


def reconstruction_metrics(pred: torch.Tensor, target: torch.Tensor, lpips: bool = False) -> dict:
    """mse, psnr, ssim; with ``lpips`` also LPIPS, or ``unavailable={"lpips": reason}``."""
    pred, target = pred.float(), target.float().to(pred.device)
    out: dict = {
        "mse": float(torch.mean((pred - target) ** 2)),
        "psnr": psnr(pred, target),
        "ssim": ssim(pred, target),
    }
    if lpips:
        try:
            out["lpips"] = float(lpips_distance(pred, target).mean())
        except MetricUnavailable as exc:
            out["unavailable"] = {"lpips": str(exc)}
    return out


# --------------------------------------------------------------------------------------------
# Sim-vs-real feature distance
# --------------------------------------------------------------------------------------------


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, sigma: float | None = None) -> float:
    """Unbiased MMD² between samples x (n, D) and y (m, D), kernel k = exp(−‖a − b‖² / (2σ²)):

        MMD² = mean_{i≠j} k(x_i, x_j) + mean_{i≠j} k(y_i, y_j) − 2 mean_{i,j} k(x_i, y_j)

    σ defaults to the median pairwise distance of the pooled sample (median heuristic).
    """
    x, y = x.double().flatten(1), y.double().flatten(1)
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise SimgapError("mmd: need at least two samples on each side")
    z = torch.cat([x, y])
    d2 = torch.cdist(z, z).square()
    if sigma is None:
        sigma2 = float(d2[~torch.eye(n + m, dtype=torch.bool)].median())  # σ = median distance
        sigma2 = sigma2 if sigma2 > 0 else 1.0
    else:
        sigma2 = float(sigma) ** 2
    k = torch.exp(-d2 / (2 * sigma2))
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(term_x + term_y - 2 * kxy.mean())


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """‖μx − μy‖² + Tr(Σx + Σy − 2 (Σx^½ Σy Σx^½)^½) of Gaussians fitted to x and y (as in FID)."""
    x, y = x.double().flatten(1), y.double().flatten(1)
    if len(x) < 2 or len(y) < 2:
        raise SimgapError("frechet: need at least two samples on each side")
    mu_x, mu_y = x.mean(0), y.mean(0)
    cov_x, cov_y = torch.cov(x.T, correction=1), torch.cov(y.T, correction=1)
    evals, evecs = torch.linalg.eigh(cov_x)
    root_x = (evecs * evals.clamp_min(0).sqrt()) @ evecs.T
    cross = torch.linalg.eigvalsh(root_x @ cov_y @ root_x).clamp_min(0).sqrt().sum()
    dist = (mu_x - mu_y).square().sum() + cov_x.trace() + cov_y.trace() - 2 * cross
    return float(dist.clamp_min(0))


def feature_distance(sim: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
    """Sim-vs-real gap in feature space: ``mmd2`` (RBF, median heuristic) and ``frechet``."""
    return {"mmd2": mmd_rbf(sim, real), "frechet": frechet_distance(sim, real)}
