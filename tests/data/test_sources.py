"""Tests of harness.data.sources / fashion / cli: image sources, the cache, `simgap data`."""

from __future__ import annotations

import argparse
import gzip
import json

import numpy as np
import pytest
import torch
from PIL import Image

from harness.data import ImageSet, load_source, source_info
from harness.data import cli as data_cli
from harness.data import fashion as hf
from harness.data import sources as hs
from harness.errors import SimgapError


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
    monkeypatch.setattr(hs, "_digits_file", lambda: None)
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
    monkeypatch.setattr(hf, "DEBIAN_FASHION_DIR", tmp_path / "no-debian")
    with pytest.raises(SimgapError) as err:
        load_source("fashion-mnist", data_root=tmp_path / "empty", download=False)
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-root" in msg
    assert "\n" not in msg
    row = source_info(data_root=tmp_path / "empty")[0]
    assert row["source"] == "fashion-mnist" and not row["available"]


REAL_FASHION = hf.find_fashion(hf.DEBIAN_FASHION_DIR)


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
    assert str(hf.DEBIAN_FASHION_DIR) in d.origin
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


# ---------------------------------------------------------------------------------------- CLI


def _run_cli(argv, capsys) -> str:
    parser = argparse.ArgumentParser(prog="simgap")
    data_cli.add_cli(parser.add_subparsers(dest="command"))
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
