"""The comparison protocol of a study: the adaptation budget, model selection, method
hyper-parameters (parts of :class:`studies.config.StudyConfig`).

Budgets: every adaptation method makes the same number of optimizer steps at every fraction
(``adapt.steps``), whatever the fraction's size.  Selection: the protocols of
:class:`SelectionConfig`; the default spends no real label beyond the cell's fraction.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

import baselines
from baselines.hparams import resolve as _resolve_hparams
from harness.errors import SimgapError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TuningRecord(BaseModel):
    """Where a tuned policy came from (the ``tuning`` block ``simgap tune`` writes): its
    objective's label source, the real labels it read (charged to every cell of the policy:
    ``n_real_labels_tuning``), trials, seeds and study config; other keys are not kept."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    protocol: str | None = None
    real_labels: int = Field(0, ge=0)
    trials: int | None = Field(None, ge=0)
    seed: int | None = None
    bench_seed: int | None = None
    config_hash: str | None = None


class AdaptBudget(_Strict):
    """The adaptation budget, the same for every method at every fraction: ``steps`` optimizer
    steps of ``batch_size`` real frames (cycling through the fraction), selected at ``evals``
    evenly spaced points (``steps`` must be a multiple of ``evals``)."""

    steps: int = Field(100, ge=1, description="optimizer steps of every method and fraction")
    evals: int = Field(5, ge=1, description="selection points (steps / evals apart)")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    optics_lr: float = Field(1e-2, gt=0, description="unused: the mask stays fixed")
    weight_decay: float = Field(1e-4, ge=0)

    @model_validator(mode="after")
    def _even(self) -> AdaptBudget:
        if self.steps % self.evals:
            raise ValueError(f"steps ({self.steps}) must be a multiple of evals ({self.evals})")
        return self


SELECTIONS = ("sim-val", "last", "real-val-from-budget", "real-val", "oracle")
ORACLE_STAMP = "oracle — not a valid result"


class SelectionConfig(_Strict):
    """Model selection.  ``sim``: epoch of the sim model (sim val or the last).  ``adapt``:
    epoch of an adapted model, by protocol: ``sim-val`` (sim val images, no real labels),
    ``last``, ``real-val-from-budget`` (a class-stratified ``budget_val_share`` of the cell's own
    pool fraction, so 1 % means 1 % in total), ``real-val`` (the separate labelled real val set,
    an extra label cost the cell records) or ``oracle`` (real test: runs only with ``oracle:
    true`` as well, and every such cell is stamped "oracle — not a valid result")."""

    sim: Literal["sim-val", "last"] = "sim-val"
    adapt: Literal["sim-val", "last", "real-val-from-budget", "real-val", "oracle"] = (
        "real-val-from-budget")
    budget_val_share: float = Field(0.5, gt=0, lt=1, description="of each class in the fraction")
    oracle: bool = Field(False, description="allow selection on real test (not a valid result)")

    @model_validator(mode="after")
    def _oracle_named(self) -> SelectionConfig:
        if (self.adapt == "oracle") != self.oracle:
            raise ValueError("'oracle' selects on real test: it needs both adapt: oracle and "
                             f"oracle: true (its cells are stamped '{ORACLE_STAMP}')")
        return self


def method_hparams(method: str, overrides: dict | None, adapt: AdaptBudget) -> dict:
    """The resolved hyper-parameters of ``method`` (:func:`baselines.hparams.resolve`, with the
    study's adapt lr and weight decay as defaults)."""
    base = {"lr": adapt.lr, "weight_decay": adapt.weight_decay}
    return _resolve_hparams(method, overrides, base)


def check_methods(config, where: str) -> None:
    """The study's methods exist and its ``hparams`` overrides name known methods and values."""
    for method in config.methods:
        try:
            baselines.get_method(method)  # built in or a plug-in
        except SimgapError as exc:
            raise SimgapError(f"{where}: methods: {exc}") from None
    for method, overrides in config.hparams.items():
        try:
            method_hparams(method, overrides, config.adapt)
        except SimgapError as exc:
            raise SimgapError(f"{where}: {exc}") from None
