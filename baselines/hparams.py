"""Hyper-parameters of every adaptation method and every policy, declared once.

In the spirit of DomainBed's ``hparams_registry``: each method has its defaults and its search
space here, and nowhere else.  A study config overrides any default (``hparams: {siamese:
{margin: 0.5}}``), cells log the resolved values, and ``simgap tune`` draws its suggestions from
the same search spaces (so every method and policy is tuned with the same trial budget).

Every method shares ``lr`` and ``weight_decay`` (their defaults come from the study's ``adapt``
budget); the fine-tune methods add ``layers`` (``head``: classifier / decoder only, ``digital``:
the whole digital network; the mask is physical and stays fixed); the Siamese method adds the
CCSA ``margin``, the alignment weight ``align_weight`` and the adversarial term
(``adversarial`` on/off and ``adversarial_weight``).  A policy's hyper-parameters are its family
strengths (each in [0, 1]) and the sim-training ``lr``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from augment.policy import build_policy
from baselines import get_method
from baselines.siamese import SiameseOptions
from harness.errors import SimgapError
from harness.train import TrainConfig


@dataclass(frozen=True)
class HParam:
    """A default and a search space: a float range ``[low, high]`` (``log``: log-uniform) or a
    list of ``choices``.  The range is where ``simgap tune`` searches; a value set in a config
    may lie outside it but must be a number >= 0, and > 0 where ``positive`` (an lr of 0 trains
    nothing, a CCSA margin of 0 aligns nothing)."""

    default: Any
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None
    positive: bool = False

    def suggest(self, trial, name: str):
        """The value an Optuna ``trial`` draws for ``name`` from this space."""
        if self.choices is not None:
            return trial.suggest_categorical(name, list(self.choices))
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def check(self, name: str, value: Any) -> Any:
        """``value`` if it fits this parameter's type (and choices), else a SimgapError."""
        if self.choices is not None:
            if value not in self.choices:
                raise SimgapError(f"{name}: {value!r} is not one of {list(self.choices)}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise SimgapError(f"{name}: {value!r} is not a number")
        if self.positive and value <= 0:
            raise SimgapError(f"{name}: {value!r} is not a number > 0")
        if value < 0:
            raise SimgapError(f"{name}: {value!r} is not a non-negative number")
        return float(value)


_COMMON = {
    "lr": HParam(1e-3, 1e-4, 1e-2, log=True, positive=True),
    "weight_decay": HParam(1e-4, 1e-6, 1e-2, log=True),
}
METHOD_HPARAMS: dict[str, dict[str, HParam]] = {
    "finetune-head": {**_COMMON, "layers": HParam("head", choices=("head", "digital"))},
    "finetune-full": {**_COMMON, "layers": HParam("digital", choices=("head", "digital"))},
    "real-only": dict(_COMMON),
    "siamese": {
        **_COMMON,
        "margin": HParam(1.0, 0.25, 2.0, positive=True),
        "align_weight": HParam(1.0, 0.1, 10.0, log=True),
        "adversarial": HParam(False, choices=(False, True)),
        "adversarial_weight": HParam(0.1, 0.01, 1.0, log=True),
    },
}


def method_space(method: str) -> dict[str, HParam]:
    """The hyper-parameters of ``method``; a plug-in method has the common ones (lr, weight
    decay: the training config it is called with)."""
    if method in METHOD_HPARAMS:
        return METHOD_HPARAMS[method]
    get_method(method)  # a plug-in, else the error that names the methods
    return dict(_COMMON)


def resolve(method: str, overrides: dict | None = None, base: dict | None = None) -> dict:
    """The resolved hyper-parameters of ``method``: registry defaults, then ``base`` (the study's
    ``adapt`` lr / weight_decay), then ``overrides``; unknown names are errors."""
    space = method_space(method)
    values = {k: p.default for k, p in space.items()}
    values.update({k: v for k, v in (base or {}).items() if k in space})
    for name, value in (overrides or {}).items():
        if name not in space:
            raise SimgapError(f"hparams.{method}.{name}: unknown (one of {', '.join(space)})")
        values[name] = space[name].check(f"hparams.{method}.{name}", value)
    return values


def suggest(method: str, trial, base: dict | None = None) -> dict:
    """One trial's hyper-parameters of ``method`` drawn from the registry's space (the lr range
    is centred on ``base['lr']`` when given)."""
    values = {}
    for name, param in method_space(method).items():
        if name == "lr" and base and "lr" in base:
            param = HParam(base["lr"], base["lr"] / 10, base["lr"] * 10, log=True, positive=True)
        values[name] = param.suggest(trial, f"{method}.{name}")
    return values


def policy_space(name: str, optics, lr: float) -> dict[str, HParam]:
    """A policy's space: ``strength.<family>`` in [0, 1] and the sim ``lr`` (lr/4 .. 4 lr)."""
    families = build_policy(name, {}, optics).families
    space = {f"strength.{f}": HParam(0.5, 0.0, 1.0) for f in families}
    space["lr"] = HParam(lr, lr / 4, lr * 4, log=True, positive=True)
    return space


def method_options(method: str, hparams: dict, config: TrainConfig) -> tuple[TrainConfig, dict]:
    """(training config, keyword arguments of the method) that realise ``hparams``."""
    config = config.model_copy(update={"lr": hparams["lr"],
                                       "weight_decay": hparams["weight_decay"]})
    kwargs: dict = {}
    if method.startswith("finetune-"):
        kwargs["mode"] = "head" if hparams["layers"] == "head" else "full"
    if method == "siamese":
        weight = hparams["adversarial_weight"] if hparams["adversarial"] else 0.0
        kwargs["options"] = SiameseOptions(
            margin=hparams["margin"], align_weight=hparams["align_weight"],
            adversarial_weight=weight, real_batch_size=config.batch_size)
    return config, kwargs
