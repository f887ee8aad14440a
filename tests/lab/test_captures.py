"""Capture-set format: writer / reader round trips, validation errors, `simgap captures check`."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from PIL import Image

import harness.lab.captures as cap
from harness.errors import SimgapError
from harness.lab import cli as lab_cli
from harness.lab.captures import SPLITS, write_capture_set
from harness.lab.validate import pair_with_inputs, read_capture_set, validate_capture_set

CLASSES = ["shirt", "shoe", "bag"]
K, H, W = 2, 8, 6
SPLIT_OF = ["pool"] * 6 + ["val"] * 3 + ["test"] * 3
# 16-bit rounding plus the float32 representation of the stored value
TOL16 = 0.5 / 65535 + 2.0**-24


def synthetic(seed: int = 0, m: int = len(SPLIT_OF)):
    """Frames (m, K, H, W) in [0, 1], shuffled unique input ids, labels, splits, mask."""
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(m, K, H, W, generator=g)
    frames[0, 0, 0, 0], frames[0, 0, 0, 1] = 0.0, 1.0  # both ends of the range
    ids = torch.randperm(1000, generator=g)[:m]
    labels = torch.randint(0, len(CLASSES), (m,), generator=g)
    mask = torch.rand(K, 16, 16, generator=g) * 6.28
    return frames, ids, labels, list(SPLIT_OF[:m]), mask


def write(out: Path, fmt="png", bit_depth=16, frames=None, **kw) -> Path:
    f, ids, labels, splits, mask = synthetic()
    return write_capture_set(
        out,
        f if frames is None else frames,
        ids,
        splits,
        labels,
        CLASSES,
        {"source": "synthetic", "bench_seed": 7, "preset": "typical"},
        mask,
        fmt=fmt,
        bit_depth=bit_depth,
        progress=False,
        **kw,
    )


@pytest.fixture
def root(tmp_path) -> Path:
    return write(tmp_path / "caps")


@pytest.fixture
def tiff_root(tmp_path) -> Path:
    return write(tmp_path / "caps", fmt="tiff", bit_depth=32)


def manifest(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False)


def save_manifest(root: Path, df: pd.DataFrame) -> None:
    df.to_csv(root / "manifest.csv", index=False)


def expect_error(root: Path, *needles: str) -> str:
    with pytest.raises(SimgapError) as info:
        validate_capture_set(root)
    msg = str(info.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


def by_input(ids: torch.Tensor, order: torch.Tensor) -> list[int]:
    """Positions in ``ids`` of each id in ``order``."""
    where = {int(i): n for n, i in enumerate(ids)}
    return [where[int(i)] for i in order]


# ------------------------------------------------------------------------------ round trips


def test_png_round_trip(root):
    frames, ids, labels, splits, mask = synthetic()
    summary = validate_capture_set(root)
    assert summary["n_inputs"] == 12 and summary["n_frames"] == 24
    assert summary["channels"] == K and summary["frame_size"] == [H, W]
    assert summary["bit_depth"] == 16
    assert summary["inputs_per_split"] == {"pool": 6, "val": 3, "test": 3}
    per_class = summary["inputs_per_split_and_class"]
    for s in SPLITS:
        want = [int(lab) for lab, sp in zip(labels, splits) if sp == s]
        assert per_class[s] == {CLASSES[c]: want.count(c) for c in set(want)}

    cs = read_capture_set(root)
    idx = by_input(ids, cs.input_ids)
    assert cs.frames.dtype == torch.float32 and cs.frames.shape == (12, K, H, W)
    err = (cs.frames - frames[idx]).abs().max().item()
    assert err <= TOL16
    assert err > 0  # really quantised, not a float copy
    assert torch.equal(cs.labels, labels[idx])
    assert list(cs.splits) == [splits[i] for i in idx]
    assert list(cs.splits) == sorted(cs.splits, key=SPLITS.index)  # grouped pool, val, test
    assert cs.classes == CLASSES
    assert cs.bench_info["bench_seed"] == 7 and cs.bench_info["capture"]["channels"] == K
    assert torch.equal(cs.mask_phase, mask)
    # frames are real 16-bit grayscale PNGs named by split / input id / channel
    first = root / "frames" / "pool" / f"{int(ids[0]):06d}_c1.png"
    with Image.open(first) as im:
        assert im.mode == "I;16" and im.size == (W, H)


def test_tiff_uint16_round_trip(tmp_path):
    frames, ids, *_ = synthetic()
    root = write(tmp_path / "caps", fmt="tiff")
    cs = read_capture_set(root)
    assert (cs.frames - frames[by_input(ids, cs.input_ids)]).abs().max() <= TOL16
    assert tifffile.imread(next((root / "frames" / "val").iterdir())).dtype == np.uint16


def test_float_tiff_round_trip_is_exact(tiff_root):
    frames, ids, labels, *_ = synthetic()
    cs = read_capture_set(tiff_root)
    idx = by_input(ids, cs.input_ids)
    assert torch.equal(cs.frames, frames[idx])
    assert torch.equal(cs.labels, labels[idx])
    assert validate_capture_set(tiff_root)["bit_depth"] == "float32"


def test_12_bit_frames_are_stored_exactly(tmp_path):
    frames, ids, *_ = synthetic()
    frames = torch.round(frames * 4095) / 4095
    root = write(tmp_path / "caps", bit_depth=12, frames=frames)
    cs = read_capture_set(root)
    assert torch.allclose(cs.frames, frames[by_input(ids, cs.input_ids)], atol=1e-7, rtol=0)
    assert validate_capture_set(root)["bit_depth"] == 12


def test_splits_and_subsets(root):
    full = read_capture_set(root)
    test_only = read_capture_set(root, splits="test")
    assert torch.equal(test_only.frames, full.test.frames)
    assert torch.equal(test_only.input_ids, full.subset("test").input_ids)
    assert set(test_only.splits) == {"test"} and len(test_only) == 3
    assert len(full.pool) == 6 and len(full.val) == 3
    assert set(full.val.manifest["split"]) == {"val"} and len(full.val.manifest) == 3 * K
    two = read_capture_set(root, splits=["pool", "val"])
    assert len(two) == 9
    with pytest.raises(SimgapError, match="train"):
        read_capture_set(root, splits="train")


def test_reader_validates_manifest_even_for_one_split(root):
    df = manifest(root)
    df.loc[df["split"] == "pool", "label"] = "9"
    save_manifest(root, df)
    with pytest.raises(SimgapError, match="label 9"):
        read_capture_set(root, splits="test")


# ------------------------------------------------------------------------------ writer


def test_writer_refuses_non_empty_folder_and_overwrites_atomically(tmp_path):
    out = write(tmp_path / "caps")
    with pytest.raises(SimgapError, match="not empty"):
        write(out)
    frames = torch.zeros(12, K, H, W)
    write(out, frames=frames, overwrite=True)
    assert read_capture_set(out).frames.abs().max() == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["caps"]  # no temp folders left
    (tmp_path / "empty").mkdir()
    write(tmp_path / "empty")  # an empty folder is fine
    validate_capture_set(tmp_path / "empty")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("precious")
    with pytest.raises(SimgapError, match="not a capture set"):
        write(tmp_path / "notes", overwrite=True)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "precious"


def test_failed_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    out = write(tmp_path / "caps")
    before = read_capture_set(out).frames
    calls = {"n": 0}
    real = cap._save_frame

    def flaky(path, x):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full")
        real(path, x)

    monkeypatch.setattr(cap, "_save_frame", flaky)
    with pytest.raises(OSError, match="disk full"):
        write(out, frames=torch.zeros(12, K, H, W), overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        calls["n"] = 0
        write(tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["caps"]
    assert torch.equal(read_capture_set(out).frames, before)  # old set untouched


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"frames": torch.full((12, K, H, W), 1.5)}, "frames"),
        ({"splits": ["train"] * 12}, "splits"),
        ({"labels": torch.full((12,), 3)}, "labels"),
        ({"input_ids": torch.zeros(12, dtype=torch.long)}, "input_ids"),
        ({"mask_phase": torch.zeros(K + 1, 16, 16)}, "mask_phase"),
        ({"fmt": "png", "bit_depth": 32}, "float32"),
        ({"bench_info": {"capture": 1}}, "capture"),
        # what the reader would refuse is refused before anything is written
        ({"classes": []}, "classes"),
        ({"mask_phase": torch.zeros(K, 16, 8)}, "mask_phase"),
        ({"mask_phase": torch.full((K, 16, 16), float("nan"))}, "mask_phase"),
        ({"capture_ids": np.array([["a", " a"]] + [[f"{i}", f"{i}b"] for i in range(11)])},
         "capture_ids"),
        ({"capture_ids": np.array([[" ", "x"]] + [[f"{i}", f"{i}b"] for i in range(11)])},
         "capture_ids"),
        ({"frames": torch.zeros(12, K, 0, W)}, "nothing to write"),
    ],
)
def test_writer_rejects_bad_arguments(tmp_path, change, needle):
    frames, ids, labels, splits, mask = synthetic()
    kw = {
        "frames": frames,
        "input_ids": ids,
        "splits": splits,
        "labels": labels,
        "classes": CLASSES,
        "bench_info": {},
        "mask_phase": mask,
        "progress": False,
    }
    kw.update(change)
    with pytest.raises(ValueError, match=needle):
        write_capture_set(tmp_path / "caps", **kw)
    assert not any(tmp_path.iterdir())


def test_hand_made_lab_set_with_8_bit_frames(tmp_path):
    """What a physical-bench user writes by hand: string ids, 8-bit PNGs, minimal bench.json."""
    root = tmp_path / "lab"
    (root / "cam").mkdir(parents=True)
    rng = np.random.default_rng(3)
    rows, truth = [], {}
    for n, (iid, split, label) in enumerate([(4, "pool", 0), (9, "val", 2), (1, "test", 1)]):
        img = rng.integers(0, 256, (H, W), dtype=np.uint8)
        Image.fromarray(img).save(root / "cam" / f"shot{n}.png")
        rows.append((f"shot-{n}", iid, split, label, 0, f"cam\\shot{n}.png"))  # Windows-style
        truth[iid] = img
    pd.DataFrame(rows, columns=list(cap.COLUMNS)).to_csv(root / "manifest.csv", index=False)
    (root / "bench.json").write_text(json.dumps({"capture": cap.capture_info(CLASSES)}))
    np.savez(root / "mask.npz", phase=np.zeros((1, 16, 16)))
    summary = validate_capture_set(root)
    assert summary["bit_depth"] == 8 and summary["frame_size"] == [H, W]
    cs = read_capture_set(root)
    assert cs.input_ids.tolist() == [4, 9, 1]  # pool, val, test
    assert cs.labels.tolist() == [0, 2, 1]
    for m, iid in enumerate(cs.input_ids.tolist()):
        want = torch.from_numpy(truth[iid] / 255.0).float()
        assert torch.allclose(cs.frames[m, 0], want, atol=1e-7, rtol=0)


# ------------------------------------------------------------------------------ bad capture sets


def test_missing_manifest(root):
    (root / "manifest.csv").unlink()
    expect_error(root, "manifest.csv", "not found")


def test_missing_column(root):
    save_manifest(root, manifest(root).drop(columns="label"))
    expect_error(root, "manifest.csv", "missing column", "label")


def test_missing_frame_file(root):
    victim = manifest(root)["path"].iloc[5]
    (root / victim).unlink()
    expect_error(root, victim, "not found")


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_frame_that_is_not_an_image(root, suffix):
    df = manifest(root)
    victim = str(Path(df["path"].iloc[3]).with_suffix(suffix))
    df.loc[3, "path"] = victim
    save_manifest(root, df)
    (root / victim).write_bytes(b"this is not an image\n" * 20)
    expect_error(root, victim, "not a readable image")


def test_colour_frame_is_rejected(root):
    victim = manifest(root)["path"].iloc[2]
    Image.new("RGB", (W, H)).save(root / victim)
    expect_error(root, victim, "RGB", "gray")


@pytest.mark.parametrize("shape", [(H, W, 3), (2, H, W)])
def test_colour_or_multi_page_tiff_is_rejected(tiff_root, shape):
    victim = manifest(tiff_root)["path"].iloc[2]
    colour = {"photometric": "rgb"} if shape[-1] == 3 else {}
    tifffile.imwrite(tiff_root / victim, np.zeros(shape, np.float32), **colour)
    expect_error(tiff_root, victim, f"shape {shape}")


def test_frame_size_differs_from_the_others(tmp_path):
    root = write(tmp_path / "caps")
    bench = json.loads((root / "bench.json").read_text())
    del bench["capture"]["frame_size"]  # a lab set without the size: compared among frames
    (root / "bench.json").write_text(json.dumps(bench))
    victim = manifest(root)["path"].iloc[7]
    Image.fromarray(np.zeros((H + 1, W), np.uint16)).save(root / victim)
    expect_error(root, victim, f"{H + 1}x{W}", f"{H}x{W}", "other frames")


def test_frame_size_differs_from_bench_json(root):
    bench = json.loads((root / "bench.json").read_text())
    bench["capture"]["frame_size"] = [H, H]
    (root / "bench.json").write_text(json.dumps(bench))
    expect_error(root, "frames/", f"{H}x{W}", f"{H}x{H}", "bench.json")


def test_wrong_channel_count_per_input(root):
    df = manifest(root)
    iid = df["input_id"].iloc[4]
    save_manifest(root, df.drop(index=4))
    expect_error(root, "manifest.csv", f"input_id {iid}", "1 frame(s)", "expected 2")


def test_channel_beyond_count(root):
    df = manifest(root)
    df.loc[1, "channel"] = "2"
    save_manifest(root, df)
    expect_error(root, "manifest.csv line 3", "channel 2")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_tiff(tiff_root, bad):
    victim = manifest(tiff_root)["path"].iloc[9]
    x = tifffile.imread(tiff_root / victim)
    x[1, 2] = bad
    tifffile.imwrite(tiff_root / victim, x)
    expect_error(tiff_root, victim, "NaN or inf")


def test_float_tiff_out_of_range(tiff_root):
    victim = manifest(tiff_root)["path"].iloc[0]
    tifffile.imwrite(tiff_root / victim, np.full((H, W), 1.25, np.float32))
    expect_error(tiff_root, victim, "outside [0, 1]")


def test_value_above_bit_depth(root):
    bench = json.loads((root / "bench.json").read_text())
    bench["capture"]["bit_depth"] = 12  # the frames hold full 16-bit values
    (root / "bench.json").write_text(json.dumps(bench))
    expect_error(root, "frames/", "exceeds full scale 4095")


def test_label_outside_class_list(root):
    df = manifest(root)
    iid = df["input_id"].iloc[6]
    df.loc[df["input_id"] == iid, "label"] = str(len(CLASSES))
    save_manifest(root, df)
    expect_error(root, "manifest.csv line 8", "label 3", "3 classes")


def test_label_not_an_integer(root):
    df = manifest(root)
    df.loc[0, "label"] = "shirt"
    save_manifest(root, df)
    expect_error(root, "manifest.csv line 2", "label 'shirt'")


def test_duplicate_capture_id(root):
    df = manifest(root)
    df.loc[10, "capture_id"] = df.loc[3, "capture_id"]
    save_manifest(root, df)
    expect_error(root, "manifest.csv", "duplicate capture_id", "lines 5 and 12")


def test_two_rows_share_one_file(root):
    df = manifest(root)
    df.loc[5, "path"] = df.loc[2, "path"]
    save_manifest(root, df)
    expect_error(root, "manifest.csv line 7", "same file as line 4")


def test_path_with_dotdot_leaves_folder(root):
    df = manifest(root)
    (root.parent / "outside.png").write_bytes((root / df["path"].iloc[0]).read_bytes())
    df.loc[0, "path"] = "../outside.png"
    save_manifest(root, df)
    expect_error(root, "manifest.csv line 2", "'../outside.png'", "leaves the capture-set folder")


def test_absolute_path(root):
    df = manifest(root)
    df.loc[1, "path"] = str((root / df["path"].iloc[1]).resolve())  # exists, inside, but absolute
    save_manifest(root, df)
    expect_error(root, "manifest.csv line 3", "absolute")


def test_symlink_escaping_folder(root):
    df = manifest(root)
    victim = root / df["path"].iloc[2]
    outside = root.parent / "elsewhere.png"
    outside.write_bytes(victim.read_bytes())
    victim.unlink()
    os.symlink(outside, victim)
    expect_error(root, "manifest.csv line 4", "leaves the capture-set folder", "symlink")


def test_symlink_inside_folder_is_fine(root):
    df = manifest(root)
    victim = root / df["path"].iloc[2]
    (root / "copy.png").write_bytes(victim.read_bytes())
    victim.unlink()
    os.symlink(root / "copy.png", victim)
    validate_capture_set(root)


def test_unknown_split_name(root):
    df = manifest(root)
    df.loc[df["split"] == "val", "split"] = "train"
    save_manifest(root, df)
    expect_error(root, "manifest.csv", "split 'train'", "pool, val, test")


def test_input_id_in_two_splits(root):
    df = manifest(root)
    row = df.index[df["split"] == "pool"][0]
    iid = df.loc[row, "input_id"]
    df.loc[row, "split"] = "test"
    save_manifest(root, df)
    expect_error(root, "manifest.csv", f"input_id {iid}", "pool and test")


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"capture": {"classes": []}}'])
def test_corrupt_bench_json(root, content):
    (root / "bench.json").write_text(content)
    expect_error(root, "bench.json")


def test_missing_bench_json(root):
    (root / "bench.json").unlink()
    expect_error(root, "bench.json", "not found")


def test_missing_mask(root):
    (root / "mask.npz").unlink()
    expect_error(root, "mask.npz", "not found")


def test_mask_with_wrong_channel_count_or_garbage(root):
    np.savez(root / "mask.npz", phase=np.zeros((K + 1, 16, 16), np.float32))
    expect_error(root, "mask.npz", "3 masks", "2 channels")
    (root / "mask.npz").write_bytes(b"garbage")
    expect_error(root, "mask.npz", "not a .npz archive")
    np.savez(root / "mask.npz", weights=np.zeros((K, 16, 16)))
    expect_error(root, "mask.npz", "no 'phase' array")


# ------------------------------------------------------------------------------ inputs pairing


def write_inputs(path: Path, ids, splits) -> Path:
    pd.DataFrame({"input_id": [int(i) for i in ids], "split": splits}).to_csv(path, index=False)
    return path


def test_pairing_with_inputs_csv(root, tmp_path):
    _, ids, _, splits, _ = synthetic()
    listed = [*ids[:10].tolist(), 5000, 5001]
    inputs = write_inputs(tmp_path / "inputs.csv", listed, [*splits[:10], "test", "pool"])
    pairing = pair_with_inputs(root, inputs)
    assert pairing["listed"] == 12 and pairing["with_frames"] == 10
    assert pairing["missing_ids"] == [5000, 5001]
    assert pairing["not_listed_ids"] == sorted(ids[10:].tolist())
    assert pairing["per_split"]["test"] == {"listed": 2, "with_frames": 1}


def test_pairing_split_mismatch_is_an_error(root, tmp_path):
    _, ids, _, splits, _ = synthetic()
    wrong = ["test" if s == "pool" else s for s in splits]
    inputs = write_inputs(tmp_path / "inputs.csv", ids, wrong)
    with pytest.raises(SimgapError, match="inputs.csv: input_id .* listed in split test"):
        pair_with_inputs(root, inputs)


# ------------------------------------------------------------------------------ CLI


def run_check(argv: list[str]) -> int:
    """Our own parser with only `captures`: exercises add_cli without the other modules."""
    parser = argparse.ArgumentParser(prog="simgap")
    lab_cli.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_check_prints_summary(root, tmp_path, capsys):
    _, ids, *_ = synthetic()
    inputs = write_inputs(tmp_path / "inputs.csv", [*ids[:3].tolist(), 4242], ["pool"] * 4)
    assert run_check(["captures", "check", str(root), "--inputs", str(inputs)]) == 0
    out = capsys.readouterr().out
    assert "frames: 24  inputs: 12" in out and "frames per input (channels): 2" in out
    assert f"frame size: {H}x{W}" in out and "bit depth: 16" in out
    assert "pool 6, val 3, test 3" in out
    assert "shirt" in out and "bag" in out
    assert "4 listed, 3 with frames, 1 without" in out and "missing input ids: 4242" in out
    assert run_check(["captures", "check", str(root), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["n_frames"] == 24 and data["inputs"] is None


def test_cli_error_exits_2_with_one_line(root, capsys, monkeypatch):
    import harness.cli

    (root / "mask.npz").unlink()
    monkeypatch.setattr(harness.cli, "COMMAND_MODULES", ("harness.lab.cli",))
    assert harness.cli.main(["captures", "check", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("simgap: error: ") and "mask.npz" in err and "\n" not in err


def test_full_cli_error_exits_2(root, capsys):
    import harness.cli

    df = manifest(root)
    df.loc[0, "split"] = "train"
    save_manifest(root, df)
    try:
        code = harness.cli.main(["captures", "check", str(root)])
    except ImportError as exc:
        if (exc.name or "").startswith("harness.lab"):
            raise
        pytest.skip(f"another command module is not importable yet: {exc}")
    except AttributeError as exc:  # a module being written that has no add_cli yet
        if "add_cli" not in str(exc) or "harness.lab" in str(exc):
            raise
        pytest.skip(f"another command module is not ready yet: {exc}")
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "manifest.csv" in err and "train" in err and "\n" not in err


# ------------------------------------------------------------------------- calibration frames


def test_calibration_frames_follow_the_frame_rules(tmp_path):
    """A flat / dark frame is read like a data frame: its real bit depth must match bench.json."""
    flat = np.full((2, H, W), 0.8, np.float32)
    root = write(tmp_path / "caps", calibration={"flat": flat, "dark": flat[:1] * 0.05})
    got = read_capture_set(root).calibration
    assert np.allclose(got["flat"].numpy(), 0.8, atol=TOL16) and got["dark"].shape == (1, H, W)
    victim = root / json.loads((root / "bench.json").read_text())["capture"]["calibration"][
        "flat"][1]  # fmt: skip
    Image.fromarray(np.full((H, W), 204, np.uint8)).save(victim)  # 0.8 as an 8-bit PNG
    msg = expect_error(root, victim.name, "8-bit image but bench.json says bit_depth 16")
    assert "\n" not in msg
    tifffile.imwrite(victim.with_suffix(".tif"), np.full((H, W), 0.8, np.float32))
    bench = json.loads((root / "bench.json").read_text())
    bench["capture"]["calibration"]["flat"][1] = f"calibration/{victim.stem}.tif"
    (root / "bench.json").write_text(json.dumps(bench))
    expect_error(root, victim.with_suffix(".tif").name, "float32 frame mixed with uint16")
