"""The bench interface (emulated, driver) and the exchange folder: requests, answers, rejections."""

from __future__ import annotations

import json
import shutil
from importlib.metadata import EntryPoint

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from PIL import Image

from harness import plugins
from harness.data import load_source
from harness.errors import SimgapError
from harness.lab import benches, exchange
from harness.lab.benches import CaptureRequest, Emulated, load_driver, make_driver, record
from harness.lab.plans import capture_dataset, capture_plan
from harness.lab.validate import read_capture_set, validate_capture_set
from harness.optics import OpticsConfig

CFG = OpticsConfig(n=8)
RID = "physics-s0-b0-0123abcd"


@pytest.fixture(scope="module")
def digits():
    return load_source("digits", size=8)


@pytest.fixture(scope="module")
def splits():
    return {"pool": torch.arange(0, 20), "val": torch.arange(20, 26), "test": torch.arange(26, 36)}


@pytest.fixture(scope="module")
def masks():
    return torch.rand(2, CFG.N, CFG.N, generator=torch.Generator().manual_seed(3)) * 6.28


@pytest.fixture(scope="module")
def request_(digits, splits, masks):
    plan = capture_plan(digits, splits)
    ids = torch.as_tensor(plan["input_id"].to_numpy(copy=True))
    return CaptureRequest(masks, CFG, digits.images[ids], plan, list(digits.classes),
                          {"dark": 3, "flat": 2})  # fmt: skip


@pytest.fixture
def folder(tmp_path, request_):
    exchange.write_request(tmp_path / "x", RID, request_)
    return tmp_path / "x"


def test_emulated_interface_gives_the_frames_of_capture_dataset(tmp_path, digits, splits, masks,
                                                                request_):  # fmt: skip
    """The emulated kind behind the interface keeps the frames (and results) of before."""
    old = read_capture_set(capture_dataset(
        benches.EmulatedBench(CFG, 4, "typical"), masks, digits, splits, tmp_path / "old",
        progress=False))  # fmt: skip
    new = read_capture_set(record(Emulated(CFG, 4, "typical", {"dark": 3, "flat": 2}), request_,
                                  tmp_path / "new"))  # fmt: skip
    assert torch.equal(old.input_ids, new.input_ids) and list(old.splits) == list(new.splits)
    assert torch.equal(old.frames, new.frames)
    # calibration frames: stored with the set, unlabelled, never in a split
    assert new.calibration["dark"].shape == (3, 8, 8) and new.calibration["flat"].shape[0] == 2
    assert new.calibration["flat"].mean() > 5 * new.calibration["dark"].mean()
    assert new.test.calibration.keys() == {"dark", "flat"}
    assert validate_capture_set(tmp_path / "new")["calibration"] == {"dark": 3, "flat": 2}
    info = json.loads((tmp_path / "new" / "bench.json").read_text())
    assert info["capture"]["calibration"]["dark"][0] == "calibration/dark_000.png"


def test_request_folder_holds_what_a_lab_needs(folder, request_, masks):
    req = exchange.request_dir(folder, RID)
    names = {p.name for p in req.iterdir()}
    assert {"mask_c0.png", "mask_c1.png", "mask.npz", "optics.json", "inputs.csv", "inputs",
            "README.txt", "request.json"} <= names  # fmt: skip
    inputs = pd.read_csv(req / "inputs.csv")
    assert inputs["input_id"].tolist() == request_.plan["input_id"].tolist()
    png = np.asarray(Image.open(req / inputs["image"][0]))
    assert png.dtype == np.uint8 and png.shape == (8, 8)
    meta, again = exchange.read_request(req)
    assert torch.equal(again.masks, masks.float()) and meta["frame_size"] == [8, 8]
    assert torch.allclose(again.images, request_.images, atol=0.5 / 255)
    assert "answers" in (req / "README.txt").read_text() and not exchange.answer_ready(folder, RID)


def _edit_request(req, edit):
    meta = json.loads((req / "request.json").read_text())
    edit(meta)
    (req / "request.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage, needle", [
    (lambda req: _edit_request(req, lambda m: m.pop("optics")), "request.json: no field 'optics'"),
    (lambda req: _edit_request(req, lambda m: m["optics"].update(n=-4)),
     "request.json: field 'optics.n'"),
    (lambda req: _edit_request(req, lambda m: m.update(calibration={"dark": "x"})),
     "request.json: field 'calibration'"),
    (lambda req: (req / "inputs.csv").unlink(), "inputs.csv: not found"),
    (lambda req: (req / "inputs.csv").write_text("input_id\n1\n"), "inputs.csv: no column"),
    (lambda req: (req / "inputs.csv").write_text((req / "inputs.csv").read_text().replace(
        ",pool,", ",train,")), "inputs.csv: split 'train'"),
    (lambda req: next((req / "inputs").iterdir()).unlink(), "png: not a readable image"),
])  # fmt: skip
def test_a_broken_request_folder_is_one_line_naming_the_file(folder, damage, needle):
    req = exchange.request_dir(folder, RID)
    damage(req)
    with pytest.raises(SimgapError) as info:
        exchange.read_request(req)
    assert needle in str(info.value) and str(req) in str(info.value)
    assert "\n" not in str(info.value)


def test_an_answer_is_checked_and_copied(folder, tmp_path):
    exchange.answer_request(exchange.request_dir(folder, RID), Emulated(CFG, 99, "mild"))
    assert exchange.answer_ready(folder, RID)
    summary = exchange.accept(folder, RID, tmp_path / "copy")
    assert summary["n_inputs"] == 36 and summary["calibration"] == {"dark": 3, "flat": 2}
    assert read_capture_set(tmp_path / "copy").frames.shape == (36, 2, 8, 8)


def _wrong_size(answer):
    for f in answer.rglob("*.png"):  # frames and calibration frames
        Image.fromarray(np.zeros((6, 6), np.uint16)).save(f)
    info = json.loads((answer / "bench.json").read_text())
    info["capture"]["frame_size"] = [6, 6]
    (answer / "bench.json").write_text(json.dumps(info))
    return "/frames/"


def _missing_frames(answer):
    df = pd.read_csv(answer / "manifest.csv")
    df[df["split"] != "val"].to_csv(answer / "manifest.csv", index=False)
    return "manifest.csv"


def _eight_bit(answer):
    for f in answer.rglob("*.png"):
        Image.fromarray((np.asarray(Image.open(f)) // 16).astype(np.uint8)).save(f)
    info = json.loads((answer / "bench.json").read_text())
    info["capture"]["bit_depth"] = 8
    (answer / "bench.json").write_text(json.dumps(info))
    return pd.read_csv(answer / "manifest.csv")["path"].iloc[0]


def _too_few_darks(answer):
    info = json.loads((answer / "bench.json").read_text())
    info["capture"]["calibration"]["dark"] = info["capture"]["calibration"]["dark"][:1]
    (answer / "bench.json").write_text(json.dumps(info))
    return "capture.calibration.dark has 1 frame(s)"


def _eight_bit_calibration(answer):
    for f in (answer / "calibration").iterdir():
        Image.fromarray((np.asarray(Image.open(f)) // 256).astype(np.uint8)).save(f)
    info = json.loads((answer / "bench.json").read_text())
    del info["capture"]["bit_depth"]  # so the capture-set rules take 8-bit frames
    (answer / "bench.json").write_text(json.dumps(info))
    return "calibration/dark_000.png: 8-bit frame"


def _nan_tiff(answer):
    df = pd.read_csv(answer / "manifest.csv")
    for rel in df["path"]:
        x = np.full((8, 8), 0.5, np.float32)
        if rel == df["path"].iloc[5]:
            x[2, 3] = np.nan
        tifffile.imwrite(answer / rel.replace(".png", ".tif"), x)
    df["path"] = df["path"].str.replace(".png", ".tif")
    df.to_csv(answer / "manifest.csv", index=False)
    info = json.loads((answer / "bench.json").read_text())
    for rel in [p for paths in info["capture"]["calibration"].values() for p in paths]:
        tifffile.imwrite(answer / rel.replace(".png", ".tif"), np.full((8, 8), 0.1, np.float32))
    info["capture"]["calibration"] = {name: [p.replace(".png", ".tif") for p in paths]
                                      for name, paths in info["capture"]["calibration"].items()}
    info["capture"].update(bit_depth=32, frame_format="tiff")
    (answer / "bench.json").write_text(json.dumps(info))
    return df["path"].iloc[5].split("/")[-1]


def _escaping_path(answer):
    df = pd.read_csv(answer / "manifest.csv")
    df.loc[4, "path"] = "../" + df.loc[4, "path"]
    df.to_csv(answer / "manifest.csv", index=False)
    return "manifest.csv"


@pytest.mark.parametrize("corrupt", [_wrong_size, _missing_frames, _eight_bit, _nan_tiff,
                                     _escaping_path, _too_few_darks,
                                     _eight_bit_calibration])  # fmt: skip
def test_a_corrupt_answer_is_rejected_with_its_file_and_stays_waiting(folder, tmp_path, corrupt):
    answer = exchange.answer_request(exchange.request_dir(folder, RID), Emulated(CFG, 1))
    named = corrupt(answer)
    with pytest.raises(exchange.CapturesPending) as info:
        exchange.accept(folder, RID, tmp_path / "copy")
    reason = info.value.reason
    assert "\n" not in reason and named in reason and str(answer) in reason
    assert not (tmp_path / "copy").exists()  # nothing half-used
    assert exchange.rejection(folder, RID)["reason"] == reason
    assert not exchange.answer_ready(folder, RID)  # the same answer is not read again
    shutil.rmtree(answer)
    exchange.answer_request(exchange.request_dir(folder, RID), Emulated(CFG, 1))
    assert exchange.answer_ready(folder, RID)  # a new answer is
    exchange.accept(folder, RID, tmp_path / "copy")


def _other_mask(request_, digits):
    return request_.masks + 1.0, request_.images, request_.plan, "mask.npz: not the mask"


def _extra_input(request_, digits):
    plan = pd.concat([request_.plan, pd.DataFrame({
        "capture_index": [36], "input_id": [50], "split": ["test"],
        "label": [int(digits.labels[50])]})], ignore_index=True)  # fmt: skip
    images = torch.cat([request_.images, digits.images[50:51]])
    return request_.masks, images, plan, "manifest.csv: input_id 50 is not in the request"


def _other_split(request_, digits):
    plan = request_.plan.copy()
    i = int(plan.loc[plan["split"] == "pool", "input_id"].iloc[0])
    plan.loc[plan["input_id"] == i, "split"] = "val"
    message = f"input_id {i} has split val; the request says pool"
    return request_.masks, request_.images, plan, message


def _other_label(request_, digits):
    plan = request_.plan.copy()
    i, label = int(plan["input_id"].iloc[4]), int(plan["label"].iloc[4])
    plan.loc[4, "label"] = (label + 1) % 10
    return (request_.masks, request_.images, plan,
            f"input_id {i} has label {(label + 1) % 10}; the request says {label}")  # fmt: skip


@pytest.mark.parametrize("change", [_other_mask, _extra_input, _other_split, _other_label])
def test_an_answer_with_another_mask_or_inputs_is_rejected(folder, tmp_path, request_, digits,
                                                           change):  # fmt: skip
    masks, images, plan, message = change(request_, digits)
    other = CaptureRequest(masks, CFG, images, plan, request_.classes, request_.calibration)
    answer = exchange.answer_dir(folder, RID)
    record(Emulated(CFG, 1), other, answer)
    with pytest.raises(exchange.CapturesPending) as info:
        exchange.accept(folder, RID, tmp_path / "copy")
    assert message in info.value.reason and not (tmp_path / "copy").exists()


def test_emulated_bench_follows_the_capture_indices_of_an_edited_plan(tmp_path, digits, masks,
                                                                     request_):  # fmt: skip
    """The drift of an emulated bench is that of the plan's capture indices (not 0, 1, ...), and
    it gives the calibration frames the request asks for."""
    plan = request_.plan.assign(capture_index=request_.plan["capture_index"] * 3 + 100)
    edited = CaptureRequest(masks, CFG, request_.images, plan, request_.classes,
                            {"dark": 2, "flat": 0})  # fmt: skip
    got = read_capture_set(record(Emulated(CFG, 4, "typical"), edited, tmp_path / "new"))
    want = read_capture_set(capture_dataset(benches.EmulatedBench(CFG, 4, "typical"), masks,
                                            digits, {}, tmp_path / "old", progress=False,
                                            plan=plan))  # fmt: skip
    assert torch.equal(got.frames, want.frames) and torch.equal(got.input_ids, want.input_ids)
    rows = pd.read_csv(tmp_path / "new" / "manifest.csv")
    assert rows["capture_id"].min() == 200 and rows["capture_id"].max() == (35 * 3 + 100) * 2 + 1
    assert got.calibration.keys() == {"dark"} and got.calibration["dark"].shape == (2, 8, 8)


class Recorder:
    """A driver: ideal frames (the mean input behind every mask), no calibration methods."""

    def __init__(self, optics, bench, gain=1.0):
        self.optics, self.bench, self.gain, self.calls = optics, bench, gain, []

    def capture(self, masks, images, ids):
        self.calls.append((masks, images, ids))
        return (images * self.gain).expand(-1, masks.shape[0], -1, -1).clamp(0, 1)


def test_driver_by_module_attr_and_by_entry_point(monkeypatch, request_, tmp_path):
    spec = f"{__name__}:Recorder"
    assert load_driver(spec) is Recorder
    ep = EntryPoint(name="fake-lab", value=spec, group=benches.ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [ep] if group == ep.group else [])
    driver = make_driver("fake-lab", CFG, 3, {"gain": 0.5})
    assert isinstance(driver, Recorder) and driver.bench == 3 and driver.gain == 0.5
    out = read_capture_set(record(driver, request_, tmp_path / "set"))
    masks, images, ids = driver.calls[0]
    assert torch.equal(masks, request_.masks) and torch.equal(ids, request_.ids)
    assert torch.equal(images, request_.images) and out.calibration == {}
    info = json.loads((tmp_path / "set" / "bench.json").read_text())
    assert info["driver"].endswith(":Recorder") and info["capture"]["bit_depth"] == 16


@pytest.mark.parametrize("spec, message", [
    ("no_such_module_xyz:Cam", "bench.driver: 'no_such_module_xyz:Cam' is neither an importable"),
    (f"{__name__}:Missing", f"benches: '{__name__}:Missing': {__name__} has no attribute"),
    ("not-installed", "entry point of group simgap.benches (installed: none)"),
])  # fmt: skip
def test_a_bad_driver_is_one_line_naming_the_field(spec, message):
    """The errors of :func:`harness.plugins.find_plugin`, as for every other plug-in kind."""
    with pytest.raises(SimgapError) as info:
        load_driver(spec)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_driver_returning_bad_frames_is_named(request_, tmp_path):
    class Bad(Recorder):
        def capture(self, masks, images, ids):
            return torch.zeros(len(ids), 1, 8, 8)

    with pytest.raises(SimgapError, match=r"bench .*Bad: capture returned frames of shape"):
        record(Bad(CFG, 0), request_, tmp_path / "set")
    assert not (tmp_path / "set").exists()


def test_a_driver_with_fewer_calibration_frames_than_asked_is_named(request_, tmp_path):
    class OneDark(Recorder):
        def dark(self):
            return torch.zeros(1, 8, 8)

    with pytest.raises(SimgapError, match=r"bench .*OneDark: dark\(\) returned 1 frame\(s\); "
                                          r"the request asks for 3"):  # fmt: skip
        record(OneDark(CFG, 0), request_, tmp_path / "set")
    assert not (tmp_path / "set").exists()


def test_the_unmodelled_preset_is_not_the_policy_families_drawn_again():
    """Off the policy's families (but the camera noise), on: SLM off the Fourier plane, LUT
    tilt, display crosstalk, integrating pixels, and today's unmodelled effects."""
    cfg = OpticsConfig(n=16)
    bench = benches.EmulatedBench(cfg, 5, "unmodelled")
    modelled, unmodelled = bench.split(torch.arange(3))
    assert set(dict(modelled.items())) == {"photons", "read_noise", "bit_depth"}
    assert {"slm_axial_offset", "lut_scale_tilt", "display_crosstalk", "camera_fill", "zernike",
            "zero_order", "fringing", "prnu", "vignetting"} <= set(dict(unmodelled.items()))
    assert 0.9 <= bench.fixed["camera_fill"] <= 1.0
    images = load_source("digits", size=16).images[:6]
    masks = torch.rand(2, cfg.N, cfg.N, generator=torch.Generator().manual_seed(0)) * 6.28
    frames = bench.capture(masks, images, torch.arange(6))
    ideal = bench.optics(masks)(images)
    assert (frames - ideal).abs().mean() > 0.01  # a gap
    bench._off.add("camera_fill")  # the same bench with point-sampling pixels
    assert not torch.allclose(bench.capture(masks, images, torch.arange(6)), frames, atol=1e-3)
