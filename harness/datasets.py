"""The data containers that :func:`harness.train.fit` trains on, and the sealed real test split.

Data come in two kinds, both with a ``split`` tag:

* :class:`ImageData` - input images (+ labels); each batch is simulated through the model's
  encoder under the training policy (the sim domain);
* :class:`FrameData` - camera frames captured on a bench (+ labels, optional input images as
  reconstruction targets and Siamese pairs); the real domain.

A data object turns a batch of indices into a loss (``batch_loss``), so methods with their own
objective (e.g. the pseudo-Siamese baseline) plug a data class into the same ``fit``.

Real test frames live in :class:`RealSplits` and are reachable only through
:meth:`RealSplits.for_final_evaluation`; :func:`check_not_test` (called by ``fit`` and the
adaptation methods) refuses data tagged ``split="test"`` for training and model selection.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import torch

from harness.data.splits import nested_fractions
from harness.errors import SimgapError
from harness.models import model_device

TEST_SPLIT = "test"


class RealTestSealed(SimgapError):
    """Raised when training, tuning or model selection reaches for the real test split."""


def check_not_test(data, what: str) -> None:
    """Refuse real test data for training, tuning or model selection."""
    if data is not None and getattr(data, "split", None) == TEST_SPLIT:
        raise RealTestSealed(
            f"{what}: real test frames cannot be used for training, tuning or model selection"
        )


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


class Data:
    """The base of training data: batching, subsets, the default supervised loss."""

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
        device = model_device(model)
        frames = self.batch_frames(model, index, policy, generator, train=True)
        out = model.forward_frames(frames, domain=self.domain)
        targets = self.targets(index)
        targets = None if targets is None else targets.to(device)
        return model.loss(out, self.labels[index].to(device), targets)


@dataclass
class ImageData(Data):
    """Input images simulated through the encoder (and the policy) batch by batch."""

    images: torch.Tensor  # (N, 1, n, n) in [0, 1]
    labels: torch.Tensor  # (N,) int64
    split: str = "sim-train"
    domain = "sim"

    def subset(self, index) -> ImageData:
        index = torch.as_tensor(index, dtype=torch.long)
        return replace(self, images=self.images[index], labels=self.labels[index])

    def batch_frames(self, model, index, policy, generator, train: bool) -> torch.Tensor:
        images = self.images[index].to(model_device(model))
        # gradients only where the caller wants them (predict runs under no_grad with train=True
        # to draw a policy's imperfections) and the encoder has parameters to train
        optics_grad = (train and torch.is_grad_enabled()
                       and any(p.requires_grad for p in model.encoder.parameters()))  # fmt: skip
        with torch.set_grad_enabled(optics_grad):
            return model.simulate(images, policy, generator, train=train)

    def targets(self, index) -> torch.Tensor:
        return self.images[index]


@dataclass
class FrameData(Data):
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

    def holdout(self, share: float, seed: int) -> tuple[FrameData, FrameData]:
        """(train, val) drawn from these frames only: per class with n_c >= 2 frames,
        max(1, round(share · n_c)) go to val (at most n_c − 1); val is tagged ``budget-val``.
        The selection split of ``real-val-from-budget``: it spends no label outside ``self``."""
        generator = torch.Generator().manual_seed(seed + 31337)
        val_rows: list[torch.Tensor] = []
        for c in torch.unique(self.labels):
            rows = (self.labels == c).nonzero().flatten()
            if len(rows) < 2:
                continue
            k = min(len(rows) - 1, max(1, round(share * len(rows))))
            val_rows.append(rows[torch.randperm(len(rows), generator=generator)[:k]])
        val_index = torch.cat(val_rows) if val_rows else torch.empty(0, dtype=torch.long)
        keep = torch.ones(len(self), dtype=torch.bool)
        keep[val_index] = False
        val = self.subset(val_index.sort().values)
        return self.subset(keep.nonzero().flatten()), replace(val, split="budget-val")

    def batch_frames(self, model, index, policy, generator, train: bool) -> torch.Tensor:
        return self.frames[index].to(model_device(model))

    def targets(self, index) -> torch.Tensor | None:
        return None if self.images is None else self.images[index]


@dataclass
class RealSplits:
    """Real captures split by input id into pool / val / test.

    ``pool`` and ``val`` are open to adaptation and model selection; ``test`` is sealed: reading
    ``.test`` raises :class:`RealTestSealed`, and ``fit`` rejects the frames returned by
    :meth:`for_final_evaluation` (tagged ``split="test"``).
    """

    pool: FrameData
    val: FrameData
    _test: FrameData = field(repr=False)
    #: unlabelled real frames of the bench (dark frames, flat field: (D, H, W) each); open to
    #: policies and methods, never scored
    calibration: dict = field(default_factory=dict, repr=False)

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
        """The real test frames, tagged ``split="test"``: ``evaluate`` accepts them, ``fit``
        refuses them.  Call it once, after every model choice is made."""
        return self._test

    def pool_fractions(self, fractions, seed: int) -> dict[float, FrameData]:
        """Nested, class-stratified subsets of the pool (1 % inside 5 % inside 100 %) per seed."""
        positions = torch.arange(len(self.pool))
        picked = nested_fractions(positions, self.pool.labels, fractions, seed)
        return {f: self.pool.subset(idx) for f, idx in picked.items()}

    @classmethod
    def from_capture_set(cls, captures, images=None) -> RealSplits:
        """Split a :class:`~harness.lab.captures.CaptureSet`.  ``images``: the source
        ``ImageSet`` (rows matched by ``source_index`` = input id) or a tensor indexed by input
        id, giving the displayed input of every capture; ``None`` leaves ``FrameData.images``
        empty."""
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
        return cls(parts["pool"], parts["val"], parts[TEST_SPLIT],
                   dict(getattr(captures, "calibration", {})))


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
