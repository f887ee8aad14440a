"""Fine-tuning a sim-trained hybrid model on a fraction of the labelled real pool.

The phase mask is physical (the captures were taken with it), so it stays fixed; ``mode="head"``
trains only the task heads (classifier / decoder), ``mode="full"`` the whole digital network.
Model selection and early stopping use the real validation captures, with the unadapted model as
one candidate (so fine-tuning never ends worse on real val than not fine-tuning).  An empty pool
(the 0 % fraction) means no adaptation: the model is returned unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.datasets import check_not_test
from harness.errors import SimgapError
from harness.train import FitResult, TrainConfig, clone_model, evaluate, feature_gap, fit

MODES = {"head": "head", "full": "digital"}


@dataclass
class AdaptResult:
    """An adapted model (a new object; the input model is untouched) and its numbers.

    ``metrics``: ``n_real`` (labelled real frames used), ``adapted`` (False when nothing was
    trained), ``best_epoch`` (-1: the starting weights won the selection), ``val_*`` metrics of
    the returned model on real val and ``val_gap_*`` its sim-vs-real feature distances there.
    """

    model: object
    metrics: dict
    fit: FitResult | None = None
    extras: dict = field(default_factory=dict)  # method-specific objects (e.g. both branches)


def prepare(pool, val, config: TrainConfig | None, seed: int) -> TrainConfig:
    """Shared entry checks: real test is refused, the seed goes into the training config."""
    check_not_test(pool, "pool")
    check_not_test(val, "val")
    return (config or TrainConfig()).model_copy(update={"seed": seed})


def finish(
    model, val, result: FitResult | None, n_real: int, config: TrainConfig, gap_model=None
) -> AdaptResult:
    """Metrics of the adapted model on real val, and the sim-vs-real feature gap on val pairs
    (``gap_model``: the model holding both branches, when it is not ``model`` itself)."""
    metrics: dict = {"n_real": n_real, "adapted": result is not None}
    if result is not None:
        metrics["best_epoch"] = result.best_epoch
    if val is not None and len(val) > 1:
        val_metrics = evaluate(model, val, None, config.eval_batch_size, config.seed)
        metrics.update({f"val_{k}": v for k, v in val_metrics.items() if k != "unavailable"})
        if val.images is not None:
            gap = feature_gap(gap_model or model, val, config.eval_batch_size, config.seed)
            metrics.update({f"val_gap_{k}": v for k, v in gap.items()})
    return AdaptResult(model, metrics, result)


def finetune(
    model,
    pool,
    val,
    config: TrainConfig | None = None,
    seed: int = 0,
    *,
    mode: str = "head",
    callback=None,
    checkpoint_dir=None,
    **_unused,
) -> AdaptResult:
    """Fine-tune a copy of ``model`` on ``pool`` (FrameData) with the mask fixed."""
    if mode not in MODES:
        raise SimgapError(f"mode: '{mode}' is not one of {', '.join(MODES)}")
    return adapt(clone_model(model), pool, val, config, seed, callback, checkpoint_dir,
                 keep_initial=True, trainable=MODES[mode])


def adapt(model, pool, val, config, seed, callback, checkpoint_dir, **fit_options) -> AdaptResult:
    """Train ``model`` (the physical mask fixed) on the real ``pool``, selecting on ``val``;
    an empty pool (0 %) means no adaptation."""
    config = prepare(pool, val, config, seed)
    if len(pool) == 0:
        return finish(model, val, None, 0, config)
    result = fit(model, pool, val, config, callback=callback, checkpoint_dir=checkpoint_dir,
                 train_optics=False, **fit_options)
    return finish(model, val, result, len(pool), config)
