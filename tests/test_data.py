"""Tests of harness.data: image sources, stratified splits, nested fractions, `simgap data`."""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from harness import data as hd
from harness.data import ImageSet, load_source, nested_fractions, source_info, split_indices
from harness.errors import SimgapError


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Each test writes its caches in its own folder and never downloads."""
    monkeypatch.setenv("SIMGAP_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("SIMGAP_OFFLINE", "1")
    monkeypatch.delenv("SIMGAP_DATA", raising=False)


def _imbalanced_labels(seed: int = 0) -> torch.Tensor:
    counts = [50, 120, 7, 300, 1, 33]
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


def _write_idx(path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def _fake_fashion(folder, n_train=20, n_test=10, gz=False) -> None:
    """A tiny Fashion-MNIST look-alike: pixel value = row index, label = row % 10."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        rows = np.arange(n) + (0 if split == "train" else n_train)
        images = np.broadcast_to((rows % 256)[:, None, None], (n, 28, 28))
        _write_idx(folder / f"{split}-images-idx3-ubyte", images, gz)
        _write_idx(folder / f"{split}-labels-idx1-ubyte", rows % 10, gz)


def _folder_tree(root) -> None:
    """Three classes, mixed sizes and modes (RGB, L, 16-bit)."""
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    (root / "owl").mkdir()
    Image.new("RGB", (40, 30), (255, 255, 255)).save(root / "cat" / "a.png")
    Image.new("L", (32, 32), 0).save(root / "cat" / "b.png")
    Image.new("L", (20, 20), 128).save(root / "dog" / "c.jpg")
    half = np.full((24, 24), 32768, dtype=np.uint16)
    Image.fromarray(half).save(root / "owl" / "d.png")


# ------------------------------------------------------------------------------------ sources


def test_digits_shape_range_and_labels():
    d = load_source("digits")
    assert isinstance(d, ImageSet)
    assert d.images.shape == (1797, 1, 32, 32) and d.images.dtype == torch.float32
    assert d.labels.shape == (1797,) and d.labels.dtype == torch.int64
    assert float(d.images.min()) == 0.0 and float(d.images.max()) == 1.0
    assert d.classes == [str(i) for i in range(10)]
    assert torch.bincount(d.labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert "digits.csv.gz" in d.origin
    small = load_source("digits", size=8)
    assert small.images.shape == (1797, 1, 8, 8)
    # at native size the values are sklearn's 0..16 scaled to [0, 1]: first row of the first "0"
    assert (small.images[0, 0, 0] * 16).tolist() == [0, 0, 5, 13, 9, 1, 0, 0]
    assert d.labels[:10].tolist() == list(range(10))
    assert torch.equal(load_source("digits").images, d.images)


def test_digits_without_the_csv_falls_back_to_sklearn(monkeypatch):
    direct = load_source("digits", size=12)
    monkeypatch.setattr(hd, "_digits_file", lambda: None)
    via_sklearn = load_source("digits", size=12)
    assert torch.equal(via_sklearn.images, direct.images)
    assert torch.equal(via_sklearn.labels, direct.labels)


def test_fashion_from_data_root_flat_and_torchvision_layout(tmp_path):
    _fake_fashion(tmp_path / "flat")
    d = load_source("fashion-mnist", size=16, data_root=tmp_path / "flat")
    assert d.images.shape == (30, 1, 16, 16)
    assert d.meta == {"train": 20, "test": 10}
    assert d.origin == str(tmp_path / "flat")
    # train rows come first, then test rows; constant images keep their value through resize
    torch.testing.assert_close(d.images[:, 0, 5, 5], torch.arange(30) / 255.0)
    assert d.labels.tolist() == [i % 10 for i in range(30)]
    assert d.classes[0] == "T-shirt/top" and len(d.classes) == 10

    _fake_fashion(tmp_path / "tv" / "FashionMNIST" / "raw", gz=True)
    again = load_source("fashion-mnist", size=16, data_root=tmp_path / "tv")
    torch.testing.assert_close(again.images, d.images)
    cached = load_source("fashion-mnist", size=16, data_root=tmp_path / "tv")  # from the cache
    assert torch.equal(cached.images, again.images) and torch.equal(cached.labels, again.labels)


def test_fashion_env_var_and_corrupt_idx(tmp_path, monkeypatch):
    _fake_fashion(tmp_path / "env")
    monkeypatch.setenv("SIMGAP_DATA", str(tmp_path / "env"))
    assert len(load_source("fashion-mnist", size=28)) == 30
    (tmp_path / "env" / "train-images-idx3-ubyte").write_bytes(b"garbage!")
    with pytest.raises(SimgapError, match="train-images-idx3-ubyte: not a uint8 IDX file"):
        load_source("fashion-mnist", size=28)


def test_fashion_missing_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(hd, "DEBIAN_FASHION_DIR", tmp_path / "no-debian")
    with pytest.raises(SimgapError) as err:
        load_source("fashion-mnist", data_root=tmp_path / "empty", download=False)
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-root" in msg
    assert "\n" not in msg
    row = source_info(data_root=tmp_path / "empty")[0]
    assert row["source"] == "fashion-mnist" and not row["available"]


REAL_FASHION = hd._find_fashion(hd.DEBIAN_FASHION_DIR)


@pytest.mark.skipif(
    REAL_FASHION is None,
    reason="Debian's Fashion-MNIST is absent: `make setup` installs it "
    "(apt-get install dataset-fashion-mnist, as root)",
)
def test_real_fashion_mnist_counts():
    info = {row["source"]: row for row in source_info()}
    assert (info["fashion-mnist"]["train"], info["fashion-mnist"]["test"]) == (60000, 10000)
    assert info["digits"]["images"] == 1797
    d = load_source("fashion-mnist", size=28)  # native size: no resize, quick
    assert d.images.shape == (70000, 1, 28, 28) and d.meta == {"train": 60000, "test": 10000}
    assert torch.bincount(d.labels).tolist() == [7000] * 10
    assert 0.0 <= float(d.images.min()) and float(d.images.max()) <= 1.0
    assert str(hd.DEBIAN_FASHION_DIR) in d.origin
    small = load_source("fashion-mnist", size=28, limit=500)
    assert small.images.shape == (500, 1, 28, 28)
    assert torch.bincount(small.labels).tolist() == [50] * 10
    assert small.meta["train"] + small.meta["test"] == 500
    assert torch.equal(small.images, d.images[small.source_index])  # ids refer to the full source


def test_folder_source_modes_sizes_and_cache(tmp_path):
    _folder_tree(tmp_path / "imgs")
    d = load_source(f"folder:{tmp_path / 'imgs'}", size=16)
    assert d.images.shape == (4, 1, 16, 16) and d.images.dtype == torch.float32
    assert d.classes == ["cat", "dog", "owl"] and d.labels.tolist() == [0, 0, 1, 2]
    means = d.images.mean(dim=(1, 2, 3))
    torch.testing.assert_close(means, torch.tensor([1.0, 0.0, 128 / 255, 32768 / 65535]))
    again = load_source(f"folder:{tmp_path / 'imgs'}", size=16)  # cache hit
    assert torch.equal(again.images, d.images)
    Image.new("L", (8, 8), 255).save(tmp_path / "imgs" / "dog" / "e.png")  # cache must notice
    assert len(load_source(f"folder:{tmp_path / 'imgs'}", size=16)) == 5


def test_folder_errors(tmp_path):
    with pytest.raises(SimgapError, match="image folder not found"):
        load_source(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SimgapError, match="no images"):
        load_source(f"folder:{tmp_path / 'empty'}")
    (tmp_path / "noimg" / "cls").mkdir(parents=True)
    (tmp_path / "noimg" / "cls" / "notes.txt").write_text("hi")
    with pytest.raises(SimgapError, match="no images"):
        load_source(f"folder:{tmp_path / 'noimg'}")
    _folder_tree(tmp_path / "bad")
    broken = tmp_path / "bad" / "dog" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    with pytest.raises(SimgapError, match="broken.png: unreadable image"):
        load_source(f"folder:{tmp_path / 'bad'}")


def test_unknown_source_and_bad_arguments():
    with pytest.raises(SimgapError, match="unknown image source 'mnist'"):
        load_source("mnist")
    with pytest.raises(SimgapError, match="size"):
        load_source("digits", size=0)
    with pytest.raises(SimgapError, match="limit"):
        load_source("digits", limit=0)


def test_limit_is_stratified_deterministic_and_traceable():
    full = load_source("digits")
    a = load_source("digits", limit=100)
    b = load_source("digits", limit=100)
    assert len(a) == 100 and torch.equal(a.source_index, b.source_index)
    assert torch.all(torch.bincount(a.labels, minlength=10) == 10)
    assert torch.all(a.source_index[1:] > a.source_index[:-1])  # source order kept
    assert torch.equal(a.images, full.images[a.source_index])
    assert torch.equal(a.labels, full.labels[a.source_index])


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


# ---------------------------------------------------------------------------------------- CLI


def _run_cli(argv, capsys) -> str:
    parser = argparse.ArgumentParser(prog="simgap")
    hd.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    return capsys.readouterr().out


def test_cli_data_info(tmp_path, capsys):
    _fake_fashion(tmp_path / "root")
    rows = json.loads(_run_cli(["data", "info", "--data-root", str(tmp_path / "root"), "--json"],
                               capsys))  # fmt: skip
    by = {r["source"]: r for r in rows}
    assert (by["fashion-mnist"]["train"], by["fashion-mnist"]["test"]) == (20, 10)
    assert by["fashion-mnist"]["origin"] == str(tmp_path / "root")
    assert by["digits"]["images"] == 1797
    _folder_tree(tmp_path / "imgs")
    out = _run_cli(["data", "info", "--source", f"folder:{tmp_path / 'imgs'}"], capsys)
    assert "digits" in out and "1797" in out and "fashion-mnist" in out and "imgs" in out
