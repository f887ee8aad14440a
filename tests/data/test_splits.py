"""Tests of harness.data.splits: stratified splits, nested fractions, the one split rule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from harness.data import (
    REAL_SIZES,
    SIM_SIZES,
    SPLIT_PARTS,
    nested_fractions,
    split_indices,
    split_sizes,
    split_source,
)
from harness.errors import SimgapError


def _imbalanced_labels(seed: int = 0) -> torch.Tensor:
    counts = [50, 120, 7, 300, 1, 33]
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]



# ------------------------------------------------------------------------------------- splits


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_splits_disjoint_stratified_and_sized(seed):
    labels = _imbalanced_labels()
    sizes = {"train": 0.6, "val": 0.2, "test": 0.2}
    parts = split_indices(labels, sizes, seed=seed)
    assert list(parts) == ["train", "val", "test"]
    together = torch.cat(list(parts.values()))
    assert len(together) == len(labels) == len(torch.unique(together))  # partition
    class_n = torch.bincount(labels).double()
    for name, frac in sizes.items():
        idx = parts[name]
        assert idx.dtype == torch.int64
        assert len(idx) == round(frac * len(labels))
        got = torch.bincount(labels[idx], minlength=len(class_n)).double()
        assert torch.all((got - frac * class_n).abs() <= 1.0), (name, got, frac * class_n)


def test_split_counts_and_mixed_sizes():
    labels = _imbalanced_labels()
    parts = split_indices(labels, {"pool": 200, "val": 0.1, "test": 50}, seed=3)
    assert [len(v) for v in parts.values()] == [200, round(0.1 * len(labels)), 50]
    together = torch.cat(list(parts.values()))
    assert len(torch.unique(together)) == len(together)
    assert int(together.min()) >= 0 and int(together.max()) < len(labels)


def test_split_reproducible_and_seed_dependent():
    labels = _imbalanced_labels()
    sizes = {"train": 0.5, "test": 0.25}
    a = split_indices(labels, sizes, seed=11)
    b = split_indices(labels.clone(), dict(sizes), seed=11)
    c = split_indices(labels, sizes, seed=12)
    assert all(torch.equal(a[k], b[k]) for k in sizes)
    assert not torch.equal(a["train"], c["train"])


def test_split_balanced_classes_exact():
    labels = torch.arange(1000) % 10
    parts = split_indices(labels, {"a": 0.7, "b": 0.3}, seed=0)
    assert torch.bincount(labels[parts["a"]]).tolist() == [70] * 10
    assert torch.bincount(labels[parts["b"]]).tolist() == [30] * 10


def test_split_errors():
    labels = _imbalanced_labels()
    with pytest.raises(SimgapError, match="sizes"):
        split_indices(labels, {"a": 0.7, "b": 0.7}, seed=0)
    with pytest.raises(SimgapError, match="sizes.a"):
        split_indices(labels, {"a": 1.5}, seed=0)
    with pytest.raises(SimgapError, match="sizes.a"):
        split_indices(labels, {"a": len(labels) + 1}, seed=0)
    with pytest.raises(SimgapError, match="sizes.a"):
        split_indices(labels, {"a": True}, seed=0)


# ---------------------------------------------------------------------------- nested fractions


FRACTION_LISTS = [[0.01, 0.05, 1.0], [0.0, 0.1, 0.5, 0.9, 1.0], [0.05, 0.01, 0.25], [0.02, 0.2]]


@pytest.mark.parametrize("fractions", FRACTION_LISTS)
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 42])
def test_nested_fractions_property(fractions, seed):
    labels = _imbalanced_labels()
    pool = split_indices(labels, {"pool": 0.7}, seed=5)["pool"]
    pool_labels = labels[pool]
    subsets = nested_fractions(pool, pool_labels, fractions, seed=seed)
    assert set(subsets) == set(fractions)
    pool_set = set(pool.tolist())
    class_n = torch.bincount(pool_labels)
    ordered = sorted(fractions)
    for f in ordered:
        ids = subsets[f]
        assert ids.dtype == torch.int64 and len(torch.unique(ids)) == len(ids)
        assert set(ids.tolist()) <= pool_set
        per_class = torch.bincount(labels[ids], minlength=len(class_n))
        if f == 0:
            assert len(ids) == 0
            continue
        expected = [
            n if f >= 1 else max(1, math.floor(f * n + 0.5)) if n else 0 for n in class_n.tolist()
        ]
        assert per_class.tolist() == expected
    for small, large in itertools.pairwise(ordered):
        assert set(subsets[small].tolist()) <= set(subsets[large].tolist()), (small, large)
    if 1.0 in subsets:
        assert torch.equal(subsets[1.0], torch.sort(pool).values)


def test_nested_fractions_consistent_across_lists_and_reproducible():
    labels = _imbalanced_labels()
    pool = torch.arange(len(labels))
    a = nested_fractions(pool, labels, [0.01, 0.05, 1.0], seed=9)
    b = nested_fractions(pool, labels, [0.05, 0.2], seed=9)
    c = nested_fractions(pool, labels, [0.05], seed=10)
    assert torch.equal(a[0.05], b[0.05])  # a fraction's subset does not depend on the list
    assert set(a[0.05].tolist()) <= set(b[0.2].tolist())
    assert torch.equal(nested_fractions(pool, labels, [0.05], seed=9)[0.05], a[0.05])
    assert not torch.equal(a[0.05], c[0.05])


def test_nested_fractions_errors():
    labels = _imbalanced_labels()
    pool = torch.arange(len(labels))
    with pytest.raises(SimgapError, match="0.05 = 5 %"):
        nested_fractions(pool, labels, [5], seed=0)
    with pytest.raises(SimgapError, match="labels"):
        nested_fractions(pool[:10], labels, [0.5], seed=0)


# ----------------------------------------------------------------------------- the split rule


class _Labelled:
    """The part of an ImageSet that split_source reads."""

    def __init__(self, labels: torch.Tensor, source: str = "synthetic"):
        self.labels, self.source = labels, source

    def __len__(self) -> int:
        return len(self.labels)


SIM = {"train": 200, "val": 40, "test": 40}
REAL = {"pool": 60, "val": 20, "test": 30}


@pytest.mark.parametrize("seed", [0, 3])
def test_split_source_six_disjoint_stratified_parts(seed):
    labels = _imbalanced_labels()
    parts = split_source(_Labelled(labels), SIM, REAL, seed)
    assert tuple(parts) == SPLIT_PARTS
    assert [len(v) for v in parts.values()] == [200, 40, 40, 60, 20, 30]
    together = torch.cat(list(parts.values()))
    assert len(torch.unique(together)) == len(together)
    for ids in parts.values():
        assert torch.equal(ids, torch.sort(ids).values)
    share = torch.bincount(labels).double() / len(labels)
    got = torch.bincount(labels[parts["pool"]], minlength=len(share)).double()
    assert torch.all((got - 60 * share).abs() <= 1.0)
    # the rule is split_indices over the six sizes in this order, from the one seed
    sizes = split_sizes(SIM, REAL)
    assert list(sizes) == list(SPLIT_PARTS)
    expected = split_indices(labels, sizes, seed=seed)
    assert all(torch.equal(parts[k], expected[k]) for k in SPLIT_PARTS)
    again = split_source(_Labelled(labels.clone()), dict(SIM), dict(REAL), seed)
    assert all(torch.equal(parts[k], again[k]) for k in SPLIT_PARTS)


def test_split_source_defaults_and_too_large_sizes():
    assert split_sizes(SIM_SIZES, REAL_SIZES) == {
        "sim_train": 2000, "sim_val": 300, "sim_test": 300, "pool": 1000, "val": 200, "test": 500,
    }  # fmt: skip
    labels = _imbalanced_labels()
    with pytest.raises(SimgapError, match="ask for 4300 images but the source tiny has 511"):
        split_source(_Labelled(labels, "tiny"), seed=0)
    with pytest.raises(SimgapError, match="sim \\+ real sizes"):
        split_source(_Labelled(labels), SIM, {"pool": 500, "val": 0, "test": 0}, 0)
