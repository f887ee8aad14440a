"""Stratified splits, nested fractions, and the one split rule of simgap.

The rule (:func:`split_source`): a source is split ONCE, from one seed, into six disjoint,
class-stratified parts: the simulation splits ``sim_train`` / ``sim_val`` / ``sim_test`` and the
real inputs shown on the bench, ``pool`` / ``val`` / ``test``.  Studies, ``simgap capture``,
``simgap export-mask`` and ``simgap demo`` all draw their inputs with it, so the inputs a lab
exports by hand and the inputs a study asks for are the same ids for the same source, sizes and
seed.  The nested real fractions (1 % inside 5 % inside 100 % of the pool) are drawn per seed with
:func:`nested_fractions`.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from harness.errors import SimgapError

#: The six parts of :func:`split_source`, in the order they are drawn.
SPLIT_PARTS = ("sim_train", "sim_val", "sim_test", "pool", "val", "test")
#: Default sizes (counts of inputs) of the simulation and the real parts.
SIM_SIZES = {"train": 2000, "val": 300, "test": 300}
REAL_SIZES = {"pool": 1000, "val": 200, "test": 500}


def _seeded(seed: int, purpose: str) -> torch.Generator:
    """A CPU generator for ``seed``, salted per purpose so different helpers draw independently."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise SimgapError(f"seed: must be an integer, got {seed!r}")
    digest = hashlib.sha256(f"simgap:{purpose}:{int(seed)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _class_groups(labels: Tensor, generator: torch.Generator) -> list[Tensor]:
    """Positions of each class (ascending label), each in a random order drawn from generator."""
    labels = torch.as_tensor(labels).reshape(-1).long()
    order = torch.argsort(labels, stable=True)
    _, counts = torch.unique_consecutive(labels[order], return_counts=True)
    groups = torch.split(order, counts.tolist())
    return [g[torch.randperm(len(g), generator=generator)] for g in groups]


def _allocate(total: int, weights: Tensor, capacity: Tensor) -> Tensor:
    """Split ``total`` over classes proportionally to ``weights`` (largest remainder), each at
    most its ``capacity``."""
    ideal = total * weights.double() / weights.double().sum()
    take = torch.minimum(ideal.floor().long(), capacity)
    left = total - int(take.sum())
    while left > 0:
        spare = (capacity - take) > 0
        if not bool(spare.any()):
            raise ValueError(f"cannot place {total} rows in classes of sizes {capacity.tolist()}")
        remainder = torch.where(
            spare, ideal - take.double(), torch.tensor(-math.inf, dtype=torch.double)
        )
        order = torch.argsort(-remainder, stable=True)[: min(left, int(spare.sum()))]
        take[order] += 1
        left -= len(order)
    return take


def _size_totals(sizes: Mapping[str, float | int], n: int) -> list[int]:
    totals, fractional, frac_sum = [], [], 0.0
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise SimgapError(f"sizes.{name}: must be a fraction or a count, got {value!r}")
        if isinstance(value, numbers.Integral):
            if value < 0 or value > n:
                raise SimgapError(f"sizes.{name}: count {value} is outside [0, {n}]")
            totals.append(int(value))
        else:
            if not 0.0 <= value <= 1.0:
                raise SimgapError(f"sizes.{name}: fraction {value} is outside [0, 1]")
            totals.append(math.floor(value * n + 0.5))
            fractional.append(len(totals) - 1)
            frac_sum += value
    if sum(totals) > n and fractional and frac_sum <= 1.0 + 1e-9:
        for i in reversed(fractional):  # rounding overshoot: trim the last fractional splits
            cut = min(totals[i], sum(totals) - n)
            totals[i] -= cut
    elif fractional and len(fractional) == len(totals) and abs(frac_sum - 1.0) <= 1e-9:
        totals[0] += n - sum(totals)  # fractions cover everything: rounding leftovers go first
    if sum(totals) > n:
        raise SimgapError(f"sizes: {dict(sizes)} ask for {sum(totals)} rows but only {n} exist")
    return totals


def split_indices(
    labels: Tensor | Sequence[int], sizes: Mapping[str, float | int], seed: int
) -> dict[str, Tensor]:
    """Disjoint, class-stratified, deterministic splits of ``range(len(labels))``.

    ``sizes`` maps split names to fractions (float in [0, 1]) or counts (int); fractions that
    sum to 1 partition all rows.  Returns sorted LongTensors of row indices, in ``sizes`` order.
    """
    labels = torch.as_tensor(labels).reshape(-1).long()
    totals = _size_totals(sizes, len(labels))
    groups = _class_groups(labels, _seeded(seed, "split"))
    if not groups:
        return {name: torch.empty(0, dtype=torch.long) for name in sizes}
    class_n = torch.tensor([len(g) for g in groups])
    used = torch.zeros_like(class_n)
    out = {}
    for name, total in zip(sizes, totals):
        take = _allocate(total, class_n, class_n - used)
        parts = [g[u:u + t] for g, u, t in zip(groups, used.tolist(), take.tolist())]  # fmt: skip
        out[name] = torch.sort(torch.cat(parts)).values
        used += take
    return out


def nested_fractions(
    pool: Tensor | Sequence[int],
    labels: Tensor | Sequence[int],
    fractions: Sequence[float],
    seed: int,
) -> dict[float, Tensor]:
    """Nested, class-stratified subsets of ``pool`` for each fraction (0.01 = 1 %).

    ``labels[i]`` is the class of ``pool[i]``.  Each class contributes round(f * n_class) ids, at
    least one when f > 0; f = 0 gives an empty set and f = 1 the whole pool.  For one seed the
    subsets are prefixes of one random order per class, so a smaller fraction's subset is always
    inside a larger one's, whatever fraction list is asked for.  Values are sorted pool ids.
    """
    pool = torch.as_tensor(pool).reshape(-1).long()
    labels = torch.as_tensor(labels).reshape(-1).long()
    if pool.shape != labels.shape:
        raise SimgapError(f"labels: {len(labels)} labels for a pool of {len(pool)} ids")
    groups = _class_groups(labels, _seeded(seed, "nested"))
    out: dict[float, Tensor] = {}
    for f in fractions:
        if isinstance(f, bool) or not isinstance(f, numbers.Real) or not 0.0 <= f <= 1.0:
            raise SimgapError(f"fractions: {f!r} is not in [0, 1] (give proportions: 0.05 = 5 %)")
        parts = []
        for g in groups:
            k = len(g) if f >= 1.0 else (max(1, math.floor(f * len(g) + 0.5)) if f > 0 else 0)
            parts.append(g[: min(k, len(g))])
        picked = torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)
        out[f] = torch.sort(pool[picked]).values
    return out


def split_sizes(sim: Mapping[str, int], real: Mapping[str, int]) -> dict[str, int]:
    """The six part sizes of :func:`split_source` from ``sim`` (train / val / test) and ``real``
    (pool / val / test) counts."""
    return {
        "sim_train": sim["train"], "sim_val": sim["val"], "sim_test": sim["test"],
        "pool": real["pool"], "val": real["val"], "test": real["test"],
    }  # fmt: skip


def split_source(
    images,
    sim: Mapping[str, int] = SIM_SIZES,
    real: Mapping[str, int] = REAL_SIZES,
    seed: int = 0,
) -> dict[str, Tensor]:
    """THE split rule: the six disjoint, class-stratified parts :data:`SPLIT_PARTS` of
    ``images`` (an :class:`~harness.data.sources.ImageSet`) drawn from one ``seed``.

    ``sim`` gives the counts of sim train / val / test, ``real`` of the real pool / val / test
    inputs.  Returns sorted row ids (= input ids) per part, in :data:`SPLIT_PARTS` order.
    """
    sizes = split_sizes(sim, real)
    if sum(sizes.values()) > len(images):
        raise SimgapError(
            f"data: sim + real sizes ask for {sum(sizes.values())} images but the source "
            f"{images.source} has {len(images)} (after limit)"
        )
    return split_indices(images.labels, sizes, seed=seed)
