"""The one training loop, evaluation, and the split API that keeps real test out of training.

Data come in two kinds, both with a ``split`` tag:

* :class:`ImageData` - input images (+ labels); each batch is simulated through the model's
  encoder under the training policy (the sim domain);
* :class:`FrameData` - camera frames captured on a bench (+ labels, optional input images as
  reconstruction targets and Siamese pairs); the real domain.

A data object turns a batch of indices into a loss (``batch_loss``), so methods with their own
objective (e.g. the pseudo-Siamese baseline) plug a data class into the same :func:`fit`.

Real test frames live in :class:`RealSplits` and are reachable only through
:meth:`RealSplits.for_final_evaluation`; :func:`fit` refuses data tagged ``split="test"`` for
training and for model selection.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from harness import metrics as M
from harness.errors import SimgapError

TEST_SPLIT = "test"
CHECKPOINT = "last.pt"


class RealTestSealed(SimgapError):
    """Raised when training, tuning or model selection reaches for the real test split."""


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


class _Data:
    """Shared behaviour: batching, subsets, the default supervised loss."""

    domain = "sim"
    split: str
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batches(
        self, batch_size: int, generator: torch.Generator | None, steps: int | None = None
    ) -> Iterator:
        """Index batches: one pass in order (``generator`` None), one shuffled pass, or exactly
        ``steps`` batches cycling through shuffled passes (:func:`shuffled_batches`)."""
        if generator is None:
            return iter(torch.arange(len(self)).split(batch_size))
        return iter(shuffled_batches(len(self), batch_size, generator, steps))

    def num_batches(self, batch_size: int, steps: int | None = None) -> int:
        return steps if steps is not None else math.ceil(len(self) / batch_size)

    def batch_frames(self, model, index, policy, generator, train: bool) -> torch.Tensor:
        raise NotImplementedError

    def targets(self, index) -> torch.Tensor | None:
        raise NotImplementedError

    def batch_loss(self, model, index, policy, generator) -> tuple[torch.Tensor, dict]:
        """Supervised loss of one training batch (the model's task loss)."""
        device = _device(model)
        frames = self.batch_frames(model, index, policy, generator, train=True)
        out = model.forward_frames(frames, domain=self.domain)
        targets = self.targets(index)
        targets = None if targets is None else targets.to(device)
        return model.loss(out, self.labels[index].to(device), targets)


def shuffled_batches(
    n: int, batch_size: int, generator: torch.Generator, steps: int | None = None
) -> list[torch.Tensor]:
    """One shuffled pass over range(n) in batches; with ``steps``, exactly ``steps`` full batches
    taken from consecutive shuffled passes (so a tiny real fraction gets the same number of
    optimizer steps as a large one)."""
    if steps is None:
        return list(torch.randperm(n, generator=generator).split(batch_size))
    passes = math.ceil(steps * batch_size / n)
    order = torch.cat([torch.randperm(n, generator=generator) for _ in range(passes)])
    return list(order[: steps * batch_size].split(batch_size))


@dataclass
class ImageData(_Data):
    """Input images simulated through the encoder (and the policy) batch by batch."""

    images: torch.Tensor  # (N, 1, n, n) in [0, 1]
    labels: torch.Tensor  # (N,) int64
    split: str = "sim-train"
    domain = "sim"

    def subset(self, index) -> ImageData:
        index = torch.as_tensor(index, dtype=torch.long)
        return replace(self, images=self.images[index], labels=self.labels[index])

    def batch_frames(self, model, index, policy, generator, train: bool) -> torch.Tensor:
        images = self.images[index].to(_device(model))
        optics_grad = train and any(p.requires_grad for p in model.encoder.parameters())
        with torch.set_grad_enabled(optics_grad):
            return model.simulate(images, policy, generator, train=train)

    def targets(self, index) -> torch.Tensor:
        return self.images[index]


@dataclass
class FrameData(_Data):
    """Captured camera frames.  ``images`` (the displayed inputs, paired by input id) are the
    reconstruction targets and the Siamese partners; ``None`` when the source is unknown."""

    frames: torch.Tensor  # (N, k, H, W) in [0, 1]
    labels: torch.Tensor
    split: str = "pool"
    images: torch.Tensor | None = None
    input_ids: torch.Tensor | None = None
    domain = "real"

    def subset(self, index) -> FrameData:
        index = torch.as_tensor(index, dtype=torch.long)
        return replace(
            self,
            frames=self.frames[index],
            labels=self.labels[index],
            images=None if self.images is None else self.images[index],
            input_ids=None if self.input_ids is None else self.input_ids[index],
        )

    def batch_frames(self, model, index, policy, generator, train: bool) -> torch.Tensor:
        return self.frames[index].to(_device(model))

    def targets(self, index) -> torch.Tensor | None:
        return None if self.images is None else self.images[index]


@dataclass
class RealSplits:
    """Real captures split by input id into pool / val / test.

    ``pool`` and ``val`` are open to adaptation and model selection; ``test`` is sealed: reading
    ``.test`` raises :class:`RealTestSealed`, and :func:`fit` rejects the frames returned by
    :meth:`for_final_evaluation` (tagged ``split="test"``).
    """

    pool: FrameData
    val: FrameData
    _test: FrameData = field(repr=False)

    def __post_init__(self):
        for name, data in (("pool", self.pool), ("val", self.val), (TEST_SPLIT, self._test)):
            if data.split != name:
                raise SimgapError(f"RealSplits.{name}: data is tagged split='{data.split}'")

    @property
    def test(self):
        raise RealTestSealed(
            "real test: sealed; training, tuning and model selection may not use it "
            "(final evaluation calls RealSplits.for_final_evaluation())"
        )

    def for_final_evaluation(self) -> FrameData:
        """The real test frames, tagged ``split="test"``: :func:`evaluate` accepts them, :func:`fit`
        refuses them.  Call it once, after every model choice is made."""
        return self._test

    def pool_fractions(self, fractions, seed: int) -> dict[float, FrameData]:
        """Nested, class-stratified subsets of the pool (1 % inside 5 % inside 100 %) per seed."""
        from harness.data import nested_fractions

        positions = torch.arange(len(self.pool))
        picked = nested_fractions(positions, self.pool.labels, fractions, seed)
        return {f: self.pool.subset(idx) for f, idx in picked.items()}

    @classmethod
    def from_capture_set(cls, captures, images=None) -> RealSplits:
        """Split a :class:`~harness.captures.CaptureSet`.  ``images``: the source ``ImageSet``
        (rows matched by ``source_index`` = input id) or a tensor indexed by input id, giving the
        displayed input of every capture; ``None`` leaves ``FrameData.images`` empty."""
        lookup = None
        if images is not None:
            lookup = _input_lookup(images, captures.input_ids)
        parts = {}
        for split in ("pool", "val", TEST_SPLIT):
            keep = torch.from_numpy((captures.splits == split).nonzero()[0])
            ids = captures.input_ids[keep]
            parts[split] = FrameData(
                frames=captures.frames[keep],
                labels=captures.labels[keep],
                split=split,
                images=None if lookup is None else lookup[keep],
                input_ids=ids,
            )
        return cls(parts["pool"], parts["val"], parts[TEST_SPLIT])


def _input_lookup(images, input_ids: torch.Tensor) -> torch.Tensor:
    """Input images of ``input_ids`` from an ImageSet (by source_index) or an id-indexed tensor."""
    if isinstance(images, torch.Tensor):
        if len(input_ids) and int(input_ids.max()) >= len(images):
            top = int(input_ids.max())
            raise SimgapError(f"images: input id {top} beyond the {len(images)} images given")
        return images[input_ids]
    index = images.source_index
    size = int(max(index.max(), input_ids.max())) + 1 if len(input_ids) else 1
    row = torch.full((size,), -1, dtype=torch.long)
    row[index] = torch.arange(len(index))
    rows = row[input_ids]
    if (rows < 0).any():
        missing = int(input_ids[rows < 0][0])
        raise SimgapError(f"images: input id {missing} of the capture set is not in the source")
    return images.images[rows]


def check_not_test(data, what: str) -> None:
    """Refuse real test data for training, tuning or model selection."""
    if data is not None and getattr(data, "split", None) == TEST_SPLIT:
        raise RealTestSealed(
            f"{what}: real test frames cannot be used for training, tuning or model selection"
        )


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


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _select_metric(model, config: TrainConfig) -> tuple[str, float]:
    """(val metric key, sign): sign +1 = higher is better."""
    name = config.select
    if name == "auto":
        name = "accuracy" if model.classifies else "loss"
    return name, (-1.0 if name == "loss" else 1.0)


def atomic_torch_save(obj, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _clone_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


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

    Each epoch: one shuffled pass, evaluation on ``val_data`` (the only validation the method is
    allowed), model selection (best ``config.select`` score; early stop after ``patience`` epochs
    without improvement), a checkpoint ``checkpoint_dir/last.pt`` (model, optimizer, scheduler,
    RNG states, history, best weights) and ``callback(epoch, metrics)``.  A run started with the
    checkpoint of an interrupted one continues to the same result.  The model ends with the
    selected (best) weights.  Deterministic on CPU given ``config.seed``.

    ``keep_initial`` (adaptation): the starting weights are a selection candidate too
    (``best_epoch = -1``), so adapting never ends worse on the validation data than not adapting.
    """
    config = config or TrainConfig()
    check_not_test(train_data, "train_data")
    check_not_test(val_data, "val_data")
    if len(train_data) == 0:
        raise SimgapError("train_data: no samples to train on")
    if val_data is not None and len(val_data) == 0:
        val_data = None
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
    key, sign = _select_metric(model, config)

    run = {
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
    ckpt = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT
    resumed_from = None
    if ckpt is not None and ckpt.exists():
        run = _resume(ckpt, run, model, optimizer, scheduler, shuffle, noise, device)
        resumed_from = run["epoch"]

    def score_of(val: dict) -> float:
        if key not in val:
            raise SimgapError(f"select: '{key}' is not a metric of this task ({model.task})")
        return sign * val[key]

    if keep_initial and val_data is not None and run["best_state"] is None:
        val = evaluate(model, val_data, policy, config.eval_batch_size, config.seed)
        run.update(best_score=score_of(val), best_epoch=-1, best_state=_clone_state(model))

    for p in frozen:
        p.requires_grad_(False)
    try:
        for epoch in range(run["epoch"] + 1, config.epochs):
            if run["stopped"]:
                break
            train_loss = _train_epoch(
                model, train_data, optimizer, scheduler, config, policy, shuffle, noise, epoch
            )
            metrics = {"epoch": epoch, "lr": scheduler.get_last_lr()[-1], **train_loss}
            if val_data is not None:
                val = evaluate(model, val_data, policy, config.eval_batch_size, config.seed)
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
                _save(ckpt, run, model, optimizer, scheduler, shuffle, noise)
            if callback is not None:
                callback(epoch, metrics)
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


def _save(path, run, model, optimizer, scheduler, shuffle, noise) -> None:
    atomic_torch_save(
        {
            **run,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "shuffle_rng": shuffle.get_state(),
            "noise_rng": noise.get_state(),
        },
        path,
    )


def _resume(path, run, model, optimizer, scheduler, shuffle, noise, device) -> dict:
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user-facing problem
        raise SimgapError(f"{path}: unreadable checkpoint ({exc})") from None
    if blob.get("fingerprint") != run["fingerprint"]:
        old, new = blob.get("fingerprint") or {}, run["fingerprint"]
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise SimgapError(f"{path}: checkpoint of a different run ({', '.join(diff)} differ)")
    model.load_state_dict(blob["model"])
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    shuffle.set_state(blob["shuffle_rng"].cpu())
    noise.set_state(blob["noise_rng"].cpu())
    return {k: blob[k] for k in run}


def _is_number(v) -> bool:
    return isinstance(v, (int, float))


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def predict(model, data, policy=None, batch_size: int = 256, seed: int = 0) -> dict:
    """Outputs on all of ``data`` in order: dict(features, logits?, recon?) on the CPU.

    Sim data are simulated with the policy in evaluation mode and a generator seeded from
    ``seed``, so the same call gives the same frames every time.
    """
    if len(data) == 0:
        raise SimgapError(f"{data.split}: no samples to predict on")
    was_training = model.training
    model.eval()
    device = _device(model)
    generator = torch.Generator(device=device).manual_seed(seed + 104729)
    chunks: dict[str, list] = {}
    for index in data.batches(batch_size, None):
        frames = data.batch_frames(model, index, policy, generator, train=False)
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
