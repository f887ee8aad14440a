"""Hybrid optical/digital models: a :class:`~harness.optics.FourF` encoder + a digital network.

The digital part works on camera *frames* (B, k, H, W), so one network runs on simulated frames
(``encoder(images, imp)``) and on real captured frames alike.  It is split into

    stem   per-frame normalisation + first conv block     (k frames -> feature maps)
    trunk  the rest of the backbone + global pooling        (feature maps -> feature vector z)
    head   linear classifier z -> logits                    (task "classify" / "both")
    decoder transposed convs z -> (1, n, n) image in [0, 1]  (task "reconstruct" / "both")

so that adaptation methods can swap the stem (pseudo-Siamese) or train only the heads.

Losses: cross-entropy for classification, mean squared error for reconstruction; for
``task="both"`` the total is  w_c · CE + w_r · MSE  with ``loss_weights``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from harness.errors import SimgapError
from harness.files import save_torch
from harness.optics import FourF, OpticsConfig
from harness.plugins import call_plugin, find_plugin, known_names

Task = Literal["classify", "reconstruct", "both"]
TASKS = ("classify", "reconstruct", "both")
DEFAULT_LOSS_WEIGHTS = {"classify": 1.0, "reconstruct": 10.0}


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups: batch-independent, so tiny real fine-tuning batches and
    evaluation behave the same as training."""
    return nn.GroupNorm(math.gcd(8, channels), channels)


def frame_norm(channels: int) -> nn.Module:
    """Per-frame standardisation (x − mean) / sqrt(var + eps) over H, W of each sample and channel.

    Frame brightness depends on the mask (and on the bench's gain, exposure, vignetting), so the
    digital network sees each frame with zero mean and unit variance.
    """
    return nn.InstanceNorm2d(channels, affine=False, eps=1e-4)


class DigitalNet(nn.Module):
    """stem + trunk: frames (B, k, H, W) -> features (B, feature_dim)."""

    def __init__(self, stem: nn.Module, trunk: nn.Module, feature_dim: int):
        super().__init__()
        self.stem = stem
        self.trunk = trunk
        self.feature_dim = feature_dim

    def forward(self, frames: torch.Tensor, stem: nn.Module | None = None) -> torch.Tensor:
        return self.trunk((stem or self.stem)(frames))


def _conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), group_norm(c_out), nn.ReLU()]


def small_cnn(in_channels: int, width: int = 32) -> DigitalNet:
    """Four 3x3 conv blocks (GroupNorm, ReLU), three 2x2 max-pools, average pool to 2x2 (keeps
    coarse layout for the decoder): feature_dim = 4 · width · 4."""
    stem = nn.Sequential(frame_norm(in_channels), *_conv_block(in_channels, width))
    trunk = nn.Sequential(
        *_conv_block(width, width),
        nn.MaxPool2d(2),
        *_conv_block(width, 2 * width),
        nn.MaxPool2d(2),
        *_conv_block(2 * width, 4 * width),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
    )
    return DigitalNet(stem, trunk, 4 * width * 4)


def resnet18(in_channels: int) -> DigitalNet:
    """torchvision ResNet-18 (no pretrained weights) for small frames: a 3x3 stride-1 first conv
    taking the k frames, no initial max-pool (the CIFAR adaptation), GroupNorm, no fc."""
    import torchvision  # slow import: only for this backbone

    net = torchvision.models.resnet18(weights=None, norm_layer=group_norm)
    conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    stem = nn.Sequential(frame_norm(in_channels), conv1, net.bn1, net.relu)
    trunk = nn.Sequential(net.layer1, net.layer2, net.layer3, net.layer4, net.avgpool, nn.Flatten())
    return DigitalNet(stem, trunk, net.fc.in_features)


DIGITAL_NETS: dict[str, Callable[[int], DigitalNet]] = {
    "small_cnn": small_cnn,
    "resnet18": resnet18,
}


def build_digital(name: str, in_channels: int) -> DigitalNet:
    """Digital network ``name``: built in, or a plug-in (:mod:`harness.plugins`, group
    ``simgap.networks``), a callable ``(in_channels) -> DigitalNet``."""
    factory = DIGITAL_NETS.get(name) or find_plugin("networks", name)
    if factory is None:
        known = known_names("networks", DIGITAL_NETS)
        raise SimgapError(f"digital: '{name}' is not one of {known}")
    net = call_plugin("networks", name, factory, in_channels)
    if not isinstance(net, DigitalNet):
        raise SimgapError(f"digital: '{name}' returned {type(net).__name__}, not a DigitalNet")
    return net


class Decoder(nn.Module):
    """Features (B, D) -> image (B, 1, n, n) in [0, 1]: linear to (64, s, s), s = ceil(n / 8),
    three stride-2 transposed convs (x8, no normalisation: a per-sample norm on the tiny first
    maps would erase the brightness the image needs), resized to n if n % 8 != 0, sigmoid."""

    def __init__(self, feature_dim: int, n: int, width: int = 64):
        super().__init__()
        self.n, self.width, self.start = n, width, math.ceil(n / 8)
        self.fc = nn.Sequential(nn.Linear(feature_dim, width * self.start**2), nn.ReLU())
        self.up = nn.Sequential(
            nn.ConvTranspose2d(width, width // 2, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(width // 2, width // 4, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(width // 4, 1, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(-1, self.width, self.start, self.start)
        x = self.up(x)
        if x.shape[-1] != self.n:
            x = F.interpolate(x, size=(self.n, self.n), mode="bilinear", align_corners=False)
        return torch.sigmoid(x)


class HybridModel(nn.Module):
    """``encoder`` (FourF) + digital network + task heads.

    ``forward(images, imp, generator)`` simulates frames and runs the digital part;
    ``forward_frames(frames)`` runs the digital part on given (e.g. captured) frames.
    Parameters are initialised from ``seed`` (the global RNG is left untouched).
    """

    def __init__(
        self,
        encoder: FourF,
        digital: str = "small_cnn",
        num_classes: int = 10,
        task: Task = "classify",
        loss_weights: dict[str, float] | None = None,
        seed: int = 0,
    ):
        super().__init__()
        if task not in TASKS:
            raise SimgapError(f"task: '{task}' is not one of {', '.join(TASKS)}")
        weights = {**DEFAULT_LOSS_WEIGHTS, **(loss_weights or {})}
        unknown = set(weights) - set(DEFAULT_LOSS_WEIGHTS)
        if unknown:
            raise SimgapError(f"loss_weights: unknown key(s) {sorted(unknown)}")
        self.encoder = encoder
        self.digital_name, self.num_classes, self.task, self.seed = digital, num_classes, task, seed
        self.loss_weights = weights
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.digital = build_digital(digital, encoder.channels)
            dim = self.digital.feature_dim
            self.head = nn.Linear(dim, num_classes) if self.classifies else None
            self.decoder = Decoder(dim, encoder.config.n) if self.reconstructs else None

    @property
    def classifies(self) -> bool:
        return self.task in ("classify", "both")

    @property
    def reconstructs(self) -> bool:
        return self.task in ("reconstruct", "both")

    # ----------------------------------------------------------------- forward
    def simulate(self, images: torch.Tensor, policy=None, generator=None, train: bool = True):
        """Simulated camera frames of ``images``: ideal (no policy) or under the policy's draw."""
        if policy is None:
            return self.encoder(images, None, generator)
        return policy.frames(self.encoder, images, generator, train=train)

    def features(self, frames: torch.Tensor, stem: nn.Module | None = None) -> torch.Tensor:
        return self.digital(frames, stem)

    def outputs(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"features": features}
        if self.head is not None:
            out["logits"] = self.head(features)
        if self.decoder is not None:
            out["recon"] = self.decoder(features)
        return out

    def forward_frames(self, frames: torch.Tensor, domain: str | None = None) -> dict:
        """Digital part on frames (B, k, H, W): dict(features, logits?, recon?).  ``domain`` is
        ignored here (one stem for both domains); pseudo-Siamese models route on it."""
        return self.outputs(self.features(frames))

    def forward(self, images: torch.Tensor, imp=None, generator=None) -> dict:
        return self.forward_frames(self.encoder(images, imp, generator))

    # ----------------------------------------------------------------- training support
    def loss(
        self, out: dict, labels: torch.Tensor | None, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss w_c · CE(logits, labels) + w_r · MSE(recon, targets) and its parts."""
        parts: dict[str, torch.Tensor] = {}
        if self.classifies:
            parts["ce"] = F.cross_entropy(out["logits"], labels)
        if self.reconstructs:
            if targets is None:
                raise SimgapError("reconstruction: the data has no target images")
            parts["mse"] = F.mse_loss(out["recon"], targets)
        weight = {"ce": self.loss_weights["classify"], "mse": self.loss_weights["reconstruct"]}
        total = sum(weight[k] * v for k, v in parts.items())
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def param_groups(self, trainable: str = "all", train_optics: bool = True) -> dict[str, list]:
        """Parameters to optimise: ``{"optics": [...], "digital": [...]}``.

        trainable: "all" (digital net + heads, and the mask if ``train_optics``), "digital"
        (digital net + heads; the mask is fixed) or "head" (classifier / decoder only).
        """
        heads = [m for m in (self.head, self.decoder) if m is not None]
        if trainable == "head":
            digital = [p for m in heads for p in m.parameters()]
        elif trainable in ("all", "digital"):
            digital = [p for m in (self.digital, *heads) for p in m.parameters()]
        else:
            raise SimgapError(f"trainable: '{trainable}' is not all, digital or head")
        optics = list(self.encoder.parameters()) if trainable == "all" and train_optics else []
        return {"optics": optics, "digital": digital}

    # ----------------------------------------------------------------- persistence
    def spec(self) -> dict:
        """Everything needed to rebuild the architecture (JSON / weights_only friendly)."""
        return {
            "optics": self.encoder.config.model_dump(),
            "channels": self.encoder.channels,
            "digital": self.digital_name,
            "num_classes": self.num_classes,
            "task": self.task,
            "loss_weights": dict(self.loss_weights),
            "seed": self.seed,
        }

    @classmethod
    def from_spec(cls, spec: dict) -> HybridModel:
        cfg = OpticsConfig(**spec["optics"])
        encoder = FourF(cfg, channels=spec["channels"], init="zeros")
        return cls(
            encoder,
            digital=spec["digital"],
            num_classes=spec["num_classes"],
            task=spec["task"],
            loss_weights=spec["loss_weights"],
            seed=spec["seed"],
        )


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters."""
    return next(model.parameters()).device


def save_model(model: HybridModel, path) -> None:
    """Write spec + weights atomically (temp file + rename)."""
    save_torch({"spec": model.spec(), "state": model.state_dict()}, path)


def load_model(path, map_location="cpu") -> HybridModel:
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
        model = HybridModel.from_spec(blob["spec"])
        model.load_state_dict(blob["state"])
    except (OSError, RuntimeError, KeyError, TypeError) as exc:
        raise SimgapError(f"{path}: not a readable simgap model ({exc})") from None
    return model
