"""Real-only reference: the digital network trained from scratch on the real fraction alone.

The optical encoder (the mask the captures were taken with) is copied from the sim model and kept
fixed; the digital network and heads are freshly initialised from the seed.  With an empty pool
(0 %) nothing can be trained and the untrained network is returned (chance-level numbers).
"""

from __future__ import annotations

import copy

from baselines.finetune import AdaptResult, adapt
from harness.models import HybridModel
from harness.train import TrainConfig


def fresh_digital(model: HybridModel, seed: int) -> HybridModel:
    """Same encoder (a copy) and architecture as ``model``, new digital weights from ``seed``."""
    return HybridModel(
        copy.deepcopy(model.encoder),
        digital=model.digital_name,
        num_classes=model.num_classes,
        task=model.task,
        loss_weights=model.loss_weights,
        seed=seed,
    ).to(next(model.parameters()).device)


def real_only(
    model,
    pool,
    val,
    config: TrainConfig | None = None,
    seed: int = 0,
    *,
    callback=None,
    checkpoint_dir=None,
    **_unused,
) -> AdaptResult:
    return adapt(fresh_digital(model, seed), pool, val, config, seed, callback, checkpoint_dir,
                 trainable="digital")
