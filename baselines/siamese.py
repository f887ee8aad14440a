"""Pseudo-Siamese domain alignment (separate sim / real stems, shared trunk and heads).

Training data per step: a batch of labelled sim images (simulated under the sim model's policy,
through the sim stem) and a batch of labelled real frames from the pool fraction (through the real
stem) together with their *paired* sim frames (the ideal simulation of the same input ids, sim
stem).  With z the L2-normalised trunk features, d = ‖z_sim − z_real‖ over all sim × real pairs:

    L = CE(sim) + CE(real)
        + w_align · [ ½ mean_{same class} d² + ½ mean_{different class} max(0, m − d)² ]   (CCSA)
        + w_adv · BCE(domain head(GRL(z)), domain)            (optional, gradient reversal)

The real budget is exactly the fine-tune baseline's (the same pool fraction); the mask is fixed.
Model selection uses real val through the real stem (the unadapted model is a candidate).  The
returned model is the real branch: a :class:`~harness.models.HybridModel` whose stem is the
trained real stem.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F

from baselines.finetune import AdaptResult, finish, prepare
from harness.datasets import Data, FrameData, ImageData, shuffled_batches
from harness.errors import SimgapError
from harness.models import model_device
from harness.train import TrainConfig, fit


class SiameseOptions(BaseModel):
    """Weights of the Siamese objective; ``adversarial_weight`` 0 turns the GRL term off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    margin: float = Field(1.0, gt=0, description="CCSA margin on normalised-feature distances")
    align_weight: float = Field(1.0, ge=0)
    adversarial_weight: float = Field(0.0, ge=0)
    real_batch_size: int = Field(32, ge=1)


class GradReverse(torch.autograd.Function):
    """Identity forward, −λ · gradient backward (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x, lam: float):
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.lam * grad, None


def ccsa_loss(za, la, zb, lb, margin: float) -> torch.Tensor:
    """CCSA contrastive alignment over all (a, b) pairs of L2-normalised features:
    ½ mean_{same} d² + ½ mean_{diff} max(0, m − d)²."""
    za, zb = F.normalize(za, dim=1), F.normalize(zb, dim=1)
    d2 = (za[:, None, :] - zb[None, :, :]).square().sum(-1)
    d = torch.sqrt(d2 + 1e-12)
    same = la[:, None] == lb[None, :]
    loss = za.new_zeros(())
    if same.any():
        loss = loss + 0.5 * d2[same].mean()
    if (~same).any():
        loss = loss + 0.5 * F.relu(margin - d[~same]).square().mean()
    return loss


class SiameseModel(nn.Module):
    """A copy of a hybrid model plus a real stem (initialised from the sim stem) and, optionally,
    a domain classifier.  ``forward_frames(frames, domain)`` routes on the domain."""

    def __init__(self, base, options: SiameseOptions, seed: int = 0):
        super().__init__()
        self.base = copy.deepcopy(base)
        self.real_stem = copy.deepcopy(self.base.digital.stem)
        self.options = options
        self.domain_head = None
        if options.adversarial_weight > 0:
            dim = self.base.digital.feature_dim
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.domain_head = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, 1))

    # the parts of the HybridModel interface that fit / evaluate use
    @property
    def encoder(self):
        return self.base.encoder

    @property
    def classifies(self) -> bool:
        return self.base.classifies

    @property
    def task(self) -> str:
        return self.base.task

    @property
    def num_classes(self) -> int:
        return self.base.num_classes

    def simulate(self, *args, **kwargs):
        return self.base.simulate(*args, **kwargs)

    def loss(self, *args, **kwargs):
        return self.base.loss(*args, **kwargs)

    def forward_frames(self, frames: torch.Tensor, domain: str | None = "real") -> dict:
        stem = self.real_stem if domain == "real" else self.base.digital.stem
        return self.base.outputs(self.base.features(frames, stem))

    def param_groups(self, trainable: str = "digital", train_optics: bool = False) -> dict:
        groups = self.base.param_groups(trainable, train_optics=False)
        extra = [*self.real_stem.parameters()]
        if self.domain_head is not None:
            extra += list(self.domain_head.parameters())
        return {"optics": [], "digital": groups["digital"] + extra}

    def real_model(self):
        """The real branch as a plain HybridModel (for evaluation and deployment)."""
        model = copy.deepcopy(self.base)
        model.digital.stem = copy.deepcopy(self.real_stem)
        return model.eval()


@dataclass
class SiameseData(Data):
    """Each step: a batch of sim images (one pass per epoch, or ``steps_per_epoch`` batches) and
    ``real_batch_size`` real frames cycling through shuffled passes over the pool fraction."""

    sim: ImageData
    pairs: FrameData
    options: SiameseOptions

    @property
    def labels(self) -> torch.Tensor:
        return self.sim.labels

    @property
    def split(self) -> str:
        return self.pairs.split

    def batches(self, batch_size: int, generator, steps: int | None = None):
        sim = shuffled_batches(len(self.sim), batch_size, generator, steps)
        real = shuffled_batches(len(self.pairs), self.options.real_batch_size, generator, len(sim))
        return zip(sim, real, strict=True)

    def batch_loss(self, model: SiameseModel, index, policy, generator):
        sim_idx, real_idx = index
        device = model_device(model)
        opts = self.options
        sim_frames = self.sim.batch_frames(model, sim_idx, policy, generator, train=True)
        with torch.no_grad():  # the ideal sim twins of the real captures (mask fixed)
            twin_frames = model.simulate(self.pairs.images[real_idx].to(device))
        real_frames = self.pairs.batch_frames(model, real_idx, None, generator, train=True)
        y_sim = torch.cat([self.sim.labels[sim_idx], self.pairs.labels[real_idx]]).to(device)
        y_real = self.pairs.labels[real_idx].to(device)

        out_sim = model.forward_frames(torch.cat([sim_frames, twin_frames]), domain="sim")
        out_real = model.forward_frames(real_frames, domain="real")
        targets_sim = torch.cat([self.sim.images[sim_idx], self.pairs.images[real_idx]])
        loss_sim, parts_sim = model.loss(out_sim, y_sim, targets_sim.to(device))
        loss_real, parts_real = model.loss(out_real, y_real, self.pairs.images[real_idx].to(device))
        z_sim, z_real = out_sim["features"], out_real["features"]
        align = ccsa_loss(z_sim, y_sim, z_real, y_real, opts.margin)
        total = loss_sim + loss_real + opts.align_weight * align
        parts = {
            **{f"sim_{k}": v for k, v in parts_sim.items()},
            **{f"real_{k}": v for k, v in parts_real.items()},
            "ccsa": float(align.detach()),
        }
        if model.domain_head is not None:
            z = GradReverse.apply(torch.cat([z_sim, z_real]), 1.0)
            domain = torch.cat([torch.zeros(len(z_sim)), torch.ones(len(z_real))]).to(device)
            adv = F.binary_cross_entropy_with_logits(model.domain_head(z).squeeze(1), domain)
            total = total + opts.adversarial_weight * adv
            parts["domain_bce"] = float(adv.detach())
        return total, parts


def siamese(
    model,
    pool,
    val,
    config: TrainConfig | None = None,
    seed: int = 0,
    *,
    sim_train: ImageData | None = None,
    policy=None,
    options: SiameseOptions | None = None,
    callback=None,
    checkpoint_dir=None,
    **_unused,
) -> AdaptResult:
    """Align a copy of ``model`` with the real pool fraction; returns the real branch."""
    config = prepare(pool, val, config, seed)
    options = options or SiameseOptions()
    if len(pool) == 0:
        return finish(copy.deepcopy(model), val, None, 0, config)
    if sim_train is None or len(sim_train) == 0:
        raise SimgapError("siamese: needs sim_train (labelled sim images)")
    if pool.images is None:
        raise SimgapError("siamese: the real pool has no paired input images (give the source)")
    net = SiameseModel(model, options, seed)
    data = SiameseData(sim_train, pool, options)
    result = fit(
        net,
        data,
        val,
        config,
        policy=policy,
        callback=callback,
        checkpoint_dir=checkpoint_dir,
        train_optics=False,
        keep_initial=True,
        trainable="digital",
    )
    adapted = finish(net.real_model(), val, result, len(pool), config, gap_model=net)
    adapted.extras["siamese_model"] = net
    return adapted
