"""Issue 16, item 6: a bad config or command line is refused before anything is written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from harness.cli import main
from studies import checks
from tests.studies.tiny import TINY

SMALL = {**{k: v for k, v in TINY.items() if k != "adapt"}, "seeds": [0],
         "methods": ["finetune-head"], "fractions": [0]}


def _run(tmp_path, capsys, text: str | None = None, args=(), **changes):
    """``study check`` then ``study run`` on a config: (codes, the one error line, out)."""
    path = tmp_path / "study.yaml"
    path.write_text(text if text is not None else yaml.safe_dump({**SMALL, **changes}))
    out = tmp_path / "out"
    codes = (main(["study", "check", str(path)]),
             main(["study", "run", str(path), "--out", str(out), *args]))
    err = capsys.readouterr().err.strip().splitlines()
    return codes, err, out


@pytest.mark.parametrize("changes, message", [
    ({"device": "quantum:7"}, "device: 'quantum:7' is not auto, cpu, cuda or cuda:N"),
    ({"data": {**SMALL["data"], "sim": {"train": 5000, "val": 60, "test": 60}}},
     "sizes ask for"),
    ({"data": {**SMALL["data"], "source": "folder:/nonexistent/images"}},
     "image folder not found"),
    ({"seeds": [True]}, "seeds: a seed is an integer"),
    ({"bench": {"seeds": [False], "preset": "typical"}}, "bench.seeds: a seed is an integer"),
    ({"storage": "postgresql://u:hunter2@db/x"}, "storage: holds a password"),
])
def test_bad_config_is_refused_before_anything_is_written(tmp_path, capsys, changes, message):
    codes, err, out = _run(tmp_path, capsys, **changes)
    assert codes == (2, 2) and len(err) == 2 and all(message in line for line in err), err
    assert "hunter2" not in "".join(err)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only case")
def test_cuda_without_a_gpu_is_refused(tmp_path, capsys):
    codes, err, out = _run(tmp_path, capsys, device="cuda")
    assert codes == (2, 2) and "no CUDA GPU" in err[0] and not out.exists()


def test_duplicate_yaml_key_is_refused(tmp_path, capsys):
    text = yaml.safe_dump(SMALL) + "seeds: [3]\n"  # a second `seeds:` PyYAML would keep
    codes, err, out = _run(tmp_path, capsys, text=text)
    assert codes == (2, 2) and "duplicate key 'seeds'" in err[0] and not out.exists()


@pytest.mark.parametrize("phase, message", [
    (np.zeros((2, 40, 40), np.float32), "does not match grid"),
    (np.zeros((3, 16, 16), np.float32), "holds 3 masks"),
    (np.zeros((2, 16, 16), np.complex64), "complex"),
])
def test_wrong_mask_file_is_refused(tmp_path, capsys, phase, message):
    np.savez(tmp_path / "mask.npz", phase=phase)  # N = 2 x data.size 8 = 16
    model = {**SMALL["model"], "mask_init": str(tmp_path / "mask.npz")}
    codes, err, out = _run(tmp_path, capsys, model=model)
    assert codes == (2, 2) and message in err[0], err
    assert not out.exists()


def test_workers_beyond_the_cores_are_refused(tmp_path, capsys):
    n = checks.usable_cores() + 1
    codes, err, out = _run(tmp_path, capsys, args=("--workers", str(n)))
    assert codes[1] == 2 and f"--workers: {n} workers but only" in err[-1]
    assert not out.exists()


def test_status_of_a_missing_folder_says_so(tmp_path, capsys):
    assert main(["study", "status", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such study folder" in err[0]
    assert not (tmp_path / "nothing").exists()


def test_unreachable_tracking_server_fails_fast(tmp_path):
    import socket
    import time

    from harness.errors import SimgapError
    from studies.tracking import Tracking

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(SimgapError, match="does not answer"):
        Tracking(f"http://u:pw@127.0.0.1:{port}", "x")
    assert time.monotonic() - t0 < 10


def test_good_config_passes_check(tmp_path, capsys):
    np.savez(tmp_path / "mask.npz", phase=np.zeros((2, 16, 16), np.float32))
    path = tmp_path / "study.yaml"
    model = {**SMALL["model"], "mask_init": str(tmp_path / "mask.npz")}
    path.write_text(yaml.safe_dump({**SMALL, "model": model, "device": "cpu"}))
    assert main(["study", "check", str(path)]) == 0
    assert ": ok (tiny): 2 cells" in capsys.readouterr().out


@pytest.mark.parametrize("override, field", [
    ("seeds=[true,false]", "seeds[0]"),
    ("data.split_seed=true", "data.split_seed"),
    ("bench.also=[{preset: typical, seeds: [true]}]", "bench.also[0].seeds[0]"),
])
def test_boolean_seeds_given_by_set_are_refused(tmp_path, capsys, override, field):
    """The seed check runs on the config after --set (and covers bench.also), not the file."""
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**SMALL, "bench": {"seeds": [0], "preset": "typical"}}))
    out = tmp_path / "out"
    codes = (main(["study", "check", str(path), "--set", override]),
             main(["study", "run", str(path), "--out", str(out), "--set", override]))
    err = capsys.readouterr().err.strip().splitlines()
    assert codes == (2, 2) and len(err) == 2, err
    assert all(f"{field}: a seed is an integer" in line for line in err), err
    assert not out.exists()
