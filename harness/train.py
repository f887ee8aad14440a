"""The one training loop and evaluation.

:func:`fit` trains any model of :mod:`harness.models` on any data of :mod:`harness.datasets`
(simulated images or captured frames), selects the best epoch on validation data and can resume
an interrupted run from its checkpoint.  :func:`evaluate` / :func:`predict` / :func:`embed` score
and embed data; real test data is refused for training and selection
(:func:`harness.datasets.check_not_test`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from harness import metrics as M
from harness.datasets import FrameData, ImageData, check_not_test
from harness.errors import SimgapError
from harness.files import save_torch
from harness.models import model_device

CHECKPOINT = "last.pt"


# --------------------------------------------------------------------------------------------
# Config and results
# --------------------------------------------------------------------------------------------


class TrainConfig(BaseModel):
    """Hyper-parameters of :func:`fit`.  ``optics_lr`` is the mask's learning rate (radians)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    optics_lr: float = Field(1e-2, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    grad_clip: float | None = Field(None, gt=0)
    steps_per_epoch: int | None = Field(
        None, ge=1, description="fixed batches per epoch (cycling the data); None = one pass"
    )
    patience: int | None = Field(None, ge=1, description="early stopping; None = run all epochs")
    select: str = Field("auto", pattern="^(auto|accuracy|loss|psnr)$")
    eval_batch_size: int = Field(256, ge=1)
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def fingerprint(self) -> dict:
        """Fields that must match to resume a checkpoint (not device / progress bar)."""
        return self.model_dump(exclude={"device", "progress"})


@dataclass
class FitResult:
    best_epoch: int  # -1: the initial weights were kept (``keep_initial``)
    best_score: float | None
    history: list[dict]
    stopped_early: bool
    resumed_from: int | None = None  # epoch of the checkpoint a run resumed from


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _checked_data(train_data, val_data):
    """Refuse real test data and an empty training set; returns ``val_data`` (None if empty)."""
    check_not_test(train_data, "train_data")
    check_not_test(val_data, "val_data")
    if len(train_data) == 0:
        raise SimgapError("train_data: no samples to train on")
    if val_data is not None and len(val_data) == 0:
        return None
    return val_data


def _select_metric(model, config: TrainConfig) -> tuple[str, float]:
    """(val metric key, sign): sign +1 = higher is better."""
    name = config.select
    if name == "auto":
        name = "accuracy" if model.classifies else "loss"
    return name, (-1.0 if name == "loss" else 1.0)


def _scorer(model, key: str, sign: float) -> Callable[[dict], float]:
    """The selection score of validation metrics (higher is better)."""

    def score_of(val: dict) -> float:
        if key not in val:
            raise SimgapError(f"select: '{key}' is not a metric of this task ({model.task})")
        return sign * val[key]

    return score_of


def _clone_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class _Loop:
    """What one training run updates: the model, its optimizer and schedule, and the two random
    streams (batch order, simulation noise).  All of it goes into the checkpoint."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    shuffle: torch.Generator
    noise: torch.Generator
    config: TrainConfig
    policy: object = None

    def save(self, path: Path, run: dict) -> None:
        save_torch(
            {
                **run,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "shuffle_rng": self.shuffle.get_state(),
                "noise_rng": self.noise.get_state(),
            },
            path,
        )

    def resume(self, path: Path, run: dict, device: torch.device) -> dict:
        """Load a checkpoint of the same run; returns its run record."""
        try:
            blob = torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a user-facing problem
            raise SimgapError(f"{path}: unreadable checkpoint ({exc})") from None
        if blob.get("fingerprint") != run["fingerprint"]:
            old, new = blob.get("fingerprint") or {}, run["fingerprint"]
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise SimgapError(f"{path}: checkpoint of a different run ({', '.join(diff)} differ)")
        self.model.load_state_dict(blob["model"])
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        self.shuffle.set_state(blob["shuffle_rng"].cpu())
        self.noise.set_state(blob["noise_rng"].cpu())
        return {k: blob[k] for k in run}


def _make_loop(model, train_data, config: TrainConfig, policy, trainable: str,
               train_optics: bool) -> tuple[_Loop, list]:  # fmt: skip
    """The optimizer (AdamW: optics and digital groups), cosine schedule per step and random
    streams of a run; also the parameters ``trainable`` leaves frozen."""
    device = torch.device(config.device)
    model.to(device)
    groups = model.param_groups(trainable, train_optics)
    chosen = {id(p) for ps in groups.values() for p in ps}
    frozen = [p for p in model.parameters() if id(p) not in chosen and p.requires_grad]
    param_groups = [
        {"params": groups["optics"], "lr": config.optics_lr, "weight_decay": 0.0},
        {"params": groups["digital"], "lr": config.lr, "weight_decay": config.weight_decay},
    ]
    optimizer = torch.optim.AdamW([g for g in param_groups if g["params"]])
    steps = config.epochs * train_data.num_batches(config.batch_size, config.steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    shuffle = torch.Generator().manual_seed(config.seed)
    noise = torch.Generator(device=device).manual_seed(config.seed + 7919)
    return _Loop(model, optimizer, scheduler, shuffle, noise, config, policy), frozen


def _new_run(config: TrainConfig, trainable: str, train_optics: bool, train_data, val_data,
             keep_initial: bool) -> dict:  # fmt: skip
    """The record of a run (saved in its checkpoint); ``fingerprint`` must match to resume."""
    return {
        "fingerprint": {
            "config": config.fingerprint(),
            "trainable": trainable,
            "train_optics": bool(train_optics),
            "n_train": len(train_data),
            "n_val": 0 if val_data is None else len(val_data),
            "keep_initial": bool(keep_initial),
        },
        "epoch": -1,
        "history": [],
        "best_score": None,
        "best_epoch": -1,
        "best_state": None,
        "bad_epochs": 0,
        "stopped": False,
    }


def fit(
    model,
    train_data,
    val_data=None,
    config: TrainConfig | None = None,
    policy=None,
    callback: Callable[[int, dict], None] | None = None,
    checkpoint_dir=None,
    train_optics: bool = True,
    trainable: str = "all",
    keep_initial: bool = False,
) -> FitResult:
    """Train ``model`` on ``train_data`` (AdamW, cosine per step), select on ``val_data``.

    Each epoch: one shuffled pass (under ``policy``), evaluation on ``val_data`` (ideal frames;
    the only validation the method is allowed), model selection (best ``config.select`` score;
    early stop after ``patience`` epochs without improvement), a checkpoint
    ``checkpoint_dir/last.pt`` (model, optimizer, scheduler, RNG states, history, best weights)
    and ``callback(epoch, metrics)``.  A run started with the
    checkpoint of an interrupted one continues to the same result.  The model ends with the
    selected (best) weights.  Deterministic on CPU given ``config.seed``.

    ``keep_initial`` (adaptation): the starting weights are a selection candidate too
    (``best_epoch = -1``), so adapting never ends worse on the validation data than not adapting.
    """
    config = config or TrainConfig()
    val_data = _checked_data(train_data, val_data)
    loop, frozen = _make_loop(model, train_data, config, policy, trainable, train_optics)
    key, sign = _select_metric(model, config)
    score_of = _scorer(model, key, sign)
    run = _new_run(config, trainable, train_optics, train_data, val_data, keep_initial)
    ckpt = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT
    resumed_from = None
    if ckpt is not None and ckpt.exists():
        run = loop.resume(ckpt, run, torch.device(config.device))
        resumed_from = run["epoch"]
    if keep_initial and val_data is not None and run["best_state"] is None:
        val = evaluate(model, val_data, None, config.eval_batch_size, config.seed)  # ideal sim
        run.update(best_score=score_of(val), best_epoch=-1, best_state=_clone_state(model))

    for p in frozen:
        p.requires_grad_(False)
    try:
        _epochs(loop, train_data, val_data, run, score_of, ckpt, callback)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    if run["best_state"] is not None:
        model.load_state_dict(run["best_state"])
    model.eval()
    best = run["best_score"]
    return FitResult(
        best_epoch=run["best_epoch"],
        best_score=None if best is None or val_data is None else sign * best,
        history=run["history"],
        stopped_early=run["stopped"],
        resumed_from=resumed_from,
    )


def _epochs(loop: _Loop, train_data, val_data, run: dict, score_of, ckpt, callback) -> None:
    """The remaining epochs of ``run``: train, validate, select, checkpoint, report."""
    model, config = loop.model, loop.config
    for epoch in range(run["epoch"] + 1, config.epochs):
        if run["stopped"]:
            break
        train_loss = _train_epoch(
            model, train_data, loop.optimizer, loop.scheduler, config, loop.policy, loop.shuffle,
            loop.noise, epoch,
        )  # fmt: skip
        metrics = {"epoch": epoch, "lr": loop.scheduler.get_last_lr()[-1], **train_loss}
        if val_data is not None:
            val = evaluate(model, val_data, None, config.eval_batch_size, config.seed)
            metrics.update({f"val_{k}": v for k, v in val.items() if _is_number(v)})
            score = score_of(val)
        else:
            score = float(epoch)  # no validation: the last epoch is selected
        if run["best_score"] is None or score > run["best_score"]:
            run.update(best_score=score, best_epoch=epoch, best_state=_clone_state(model))
            run["bad_epochs"] = 0
        else:
            run["bad_epochs"] += 1
        run["stopped"] = bool(config.patience and run["bad_epochs"] >= config.patience)
        run["epoch"] = epoch
        run["history"].append(metrics)
        if ckpt is not None:
            loop.save(ckpt, run)
        if callback is not None:
            callback(epoch, metrics)


def _train_epoch(model, data, optimizer, scheduler, config, policy, shuffle, noise, epoch):
    model.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    total, parts_sum, count = 0.0, {}, 0
    bar = tqdm(
        data.batches(config.batch_size, shuffle, config.steps_per_epoch),
        total=data.num_batches(config.batch_size, config.steps_per_epoch),
        desc=f"epoch {epoch + 1}/{config.epochs}",
        leave=False,
        disable=not config.progress,
    )
    for index in bar:
        loss, parts = data.batch_loss(model, index, policy, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        scheduler.step()
        total += float(loss.detach())
        for k, v in parts.items():
            parts_sum[k] = parts_sum.get(k, 0.0) + v
        count += 1
        bar.set_postfix(loss=f"{total / count:.4f}")
    return {"train_loss": total / count, **{f"train_{k}": v / count for k, v in parts_sum.items()}}


def _is_number(v) -> bool:
    return isinstance(v, (int, float))


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def predict(model, data, policy=None, batch_size: int = 256, seed: int = 0) -> dict:
    """Outputs on all of ``data`` in order: dict(features, logits?, recon?) on the CPU.

    Sim data are simulated ideally, or under one draw of ``policy`` per sample (a generator
    seeded from ``seed``: the same call gives the same frames); real frames take no policy.
    """
    if len(data) == 0:
        raise SimgapError(f"{data.split}: no samples to predict on")
    if policy is not None and data.domain != "sim":
        raise SimgapError(f"policy: applies to simulated data, not to the {data.split} frames")
    was_training = model.training
    model.eval()
    device = model_device(model)
    generator = torch.Generator(device=device).manual_seed(seed + 104729)
    chunks: dict[str, list] = {}
    for index in data.batches(batch_size, None):
        frames = data.batch_frames(model, index, policy, generator, train=policy is not None)
        out = model.forward_frames(frames, domain=data.domain)
        for k, v in out.items():
            chunks.setdefault(k, []).append(v.cpu())
    model.train(was_training)
    return {k: torch.cat(v) for k, v in chunks.items()}


def evaluate(
    model,
    data,
    policy=None,
    batch_size: int = 256,
    seed: int = 0,
    per_class: bool = False,
    lpips: bool = False,
) -> dict:
    """Metrics of ``model`` on ``data``: loss, accuracy (+ ``accuracy_class{i}`` when
    ``per_class``) for classification; mse, psnr, ssim (+ LPIPS if asked and available) for
    reconstruction.  Unavailable metrics are listed in ``out["unavailable"]`` with the reason."""
    if len(data) == 0:
        return {"n": 0}
    out = predict(model, data, policy, batch_size, seed)
    targets = data.targets(torch.arange(len(data)))
    loss, _ = model.loss(out, data.labels, targets)
    result: dict = {"loss": float(loss), "n": len(data)}
    if "logits" in out:
        result["accuracy"] = M.accuracy(out["logits"], data.labels)
        if per_class:
            pc = M.per_class_accuracy(out["logits"], data.labels, model.num_classes)
            result.update({f"accuracy_class{i}": float(a) for i, a in enumerate(pc)})
    if "recon" in out and targets is not None:
        result.update(M.reconstruction_metrics(out["recon"], targets, lpips=lpips))
    return result


def embed(model, data, policy=None, batch_size: int = 256, seed: int = 0) -> torch.Tensor:
    """Feature vectors (N, D) of ``data`` (the digital trunk's output), for gap distances."""
    return predict(model, data, policy, batch_size, seed)["features"]


def feature_gap(model, data: FrameData, batch_size: int = 256, seed: int = 0) -> dict:
    """Sim-vs-real distance (:func:`harness.metrics.feature_distance`) between the features of
    the real frames of ``data`` (real domain) and of the ideal simulation of the same inputs (sim
    domain); a pseudo-Siamese model uses its two stems, a plain model the same network.  Features
    are L2-normalised per sample first, so models with different feature scales compare."""
    if data.images is None:
        raise SimgapError("feature gap: the real frames have no paired input images")
    real = embed(model, data, None, batch_size, seed)
    twins = ImageData(data.images, data.labels, split=f"{data.split}-sim-twins")
    sim = embed(model, twins, None, batch_size, seed)
    normalize = torch.nn.functional.normalize
    return M.feature_distance(normalize(sim, dim=1), normalize(real, dim=1))


def clone_model(model):
    """A deep copy (adaptation methods never change the model they are given)."""
    return copy.deepcopy(model)
