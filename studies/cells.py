"""One study cell, end to end (docs/DESIGN.md section 2, stages 1-6).

    1. sim model of (policy, seed)           cached: trained once, shared by all its cells
    2.+3. capture set of (sim model, bench)  cached: the learned mask captured on the bench
    4. adaptation: the method on the seed's nested fraction of the real pool (real val for
       model selection when ``selection.adapt`` is ``real-val``)
    5. final evaluation, once: real test (through ``RealSplits.for_final_evaluation``), the ideal
       simulation of the same test inputs, and the sim test split
    6. everything logged into the cell's MLflow run

Cache keys hold everything that determines an entry, so a changed config never reuses a stale
model.  The source is split once per study (``data.split_seed``) by the one split rule,
:func:`harness.data.splits.split_source`, into sim train / val / test and the real pool / val /
test inputs (the same ids ``simgap capture`` and ``export-mask`` draw); the splits and the cell's
real training ids are logged.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from augment.policy import build_policy
from baselines import get_method
from baselines.hparams import method_options
from harness.data import load_source, split_source
from harness.datasets import FrameData, ImageData, RealSplits
from harness.lab.validate import read_capture_set
from harness.metrics import accuracy, feature_distance, reconstruction_metrics
from harness.models import HybridModel, load_model, save_model
from harness.optics import FourF
from harness.optics.masks import export_mask
from harness.train import TrainConfig, fit, predict
from studies import captures
from studies.cache import ArtifactCache
from studies.config import ZERO_SHOT, StudyConfig, config_hash
from studies.grid import Cell
from studies.lineage import log_cell_lineage
from studies.protocol import method_hparams

CACHE_VERSION = 1


# ---------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class StudyData:
    images: object  # harness.data.ImageSet
    splits: dict  # name -> LongTensor of row ids (row id = input id of the captures)

    @property
    def splits_hash(self) -> str:
        return config_hash({k: v.tolist() for k, v in self.splits.items()})


@lru_cache(maxsize=4)
def _load_data(data_json: str) -> StudyData:
    data = json.loads(data_json)
    images = load_source(data["source"], data["size"], data["data_root"], data["limit"])
    return StudyData(images, split_source(images, data["sim"], data["real"], data["split_seed"]))


def study_data(config: StudyConfig) -> StudyData:
    return _load_data(config.data.model_dump_json())


def device_of(config: StudyConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


# ---------------------------------------------------------------------------------- keys
def sim_key(config: StudyConfig, policy: str, seed: int) -> dict:
    spec = config.policy(policy)
    budget = config.training.model_dump()
    if spec.lr is not None:
        budget["lr"] = spec.lr
    return {
        "kind": "sim", "v": CACHE_VERSION, "seed": seed,
        "data": config.data.model_dump(mode="json"),
        "optics": config.optics.model_dump(mode="json"),
        "model": config.model.model_dump(mode="json"),
        "training": budget, "selection": config.selection.sim,
        "policy": {"name": spec.name, "strengths": dict(sorted(spec.strengths.items()))},
    }  # fmt: skip


def capture_key(config: StudyConfig, policy: str, seed: int, bench: int) -> dict:
    return captures.capture_key(config, config_hash(sim_key(config, policy, seed)), bench)


def train_config(config: StudyConfig, budget, seed: int, lr: float | None = None):
    return TrainConfig(
        epochs=budget.epochs, batch_size=budget.batch_size, lr=lr or budget.lr,
        optics_lr=budget.optics_lr, weight_decay=budget.weight_decay, seed=seed,
        device=str(device_of(config)), progress=False,
    )  # fmt: skip


# ---------------------------------------------------------------------------------- stage 1
def train_sim_model(config: StudyConfig, spec, seed: int, out: Path, callback=None,
                    checkpoint_dir: Path | None = None) -> dict:
    """Train the hybrid model in simulation under ``spec``'s policy; writes ``model.pt``,
    ``history.json`` and the exported ``mask/`` into ``out``.  ``callback(model, epoch,
    metrics)`` runs after each epoch.  Returns the history record."""
    data = study_data(config)
    images, labels, split = data.images.images, data.images.labels, data.splits
    encoder = FourF(config.optics, channels=config.model.channels, init=config.model.mask_init,
                    seed=seed)
    model = HybridModel(encoder, config.model.digital, data.images.num_classes, config.model.task,
                        seed=seed)
    policy = build_policy(spec.name, spec.strengths, config.optics)
    train = ImageData(images[split["sim_train"]], labels[split["sim_train"]], split="sim-train")
    val = None
    if config.selection.sim == "sim-val":
        val = ImageData(images[split["sim_val"]], labels[split["sim_val"]], split="sim-val")
    hook = None if callback is None else (lambda epoch, metrics: callback(model, epoch, metrics))
    result = fit(model, train, val, train_config(config, config.training, seed, spec.lr),
                 policy=policy, callback=hook, checkpoint_dir=checkpoint_dir,
                 train_optics=config.model.train_optics)
    model = model.cpu()
    save_model(model, out / "model.pt")
    export_mask(model.encoder.phase.detach(), config.optics, out / "mask")
    record = {"history": result.history, "best_epoch": result.best_epoch,
              "policy": policy.params(), "splits_hash": data.splits_hash}
    (out / "history.json").write_text(json.dumps(record, indent=1, default=str))
    return record


def sim_model(config: StudyConfig, cache: ArtifactCache, policy: str, seed: int):
    """(model, record) of the cached sim model, training it first if needed."""
    key = sim_key(config, policy, seed)
    ckpt = cache.path("sim", key).with_name(f".{config_hash(key)}.ckpt")

    def build(tmp: Path) -> None:
        train_sim_model(config, config.policy(policy), seed, tmp, checkpoint_dir=ckpt)

    path, _ = cache.get_or_build("sim", key, build)
    if ckpt.exists():
        shutil.rmtree(ckpt, ignore_errors=True)
    record = json.loads((path / "history.json").read_text())
    return load_model(path / "model.pt").to(device_of(config)), record, path


# ---------------------------------------------------------------------------------- stage 2-3
def capture_set(config: StudyConfig, cache: ArtifactCache, policy: str, seed: int,
                bench_seed: int, model=None, study_dir: Path | None = None) -> Path:
    """The cached capture set (pool / val / test inputs) of the sim model's mask on a bench
    (an ``exchange`` bench raises CapturesPending until the lab's answer is there)."""
    key = capture_key(config, policy, seed, bench_seed)

    def request():
        nonlocal model
        if model is None:
            model, _, _ = sim_model(config, cache, policy, seed)
        info = {"simgap": {"sim_key": config_hash(key)}}
        return captures.capture_request(config, study_data(config), model.encoder.phase, info,
                                        config.bench.of(bench_seed))  # fmt: skip

    return captures.capture_set(config, cache, key, policy, seed, request, study_dir)


def real_splits(config: StudyConfig, capture_dir: Path):
    """Pool / val / sealed test of a capture set, paired with the displayed input images
    (decoded once per process: consecutive cells of a worker share their capture set)."""
    return _real_splits(config.data.model_dump_json(), str(Path(capture_dir).resolve()))


@lru_cache(maxsize=2)
def _real_splits(data_json: str, capture_dir: str):
    captures = read_capture_set(capture_dir)
    return RealSplits.from_capture_set(captures, _load_data(data_json).images.images)


# ---------------------------------------------------------------------------------- stage 4-6
def run_cell(handle, cell: Cell, run) -> dict:
    """Run one cell; logs into ``run`` (a :class:`studies.tracking.CellRun`), returns final
    metrics (``real_test_acc`` first)."""
    config: StudyConfig = handle.config
    cache = ArtifactCache(handle.cache_dir)
    data = study_data(config)
    model, record, _ = sim_model(config, cache, cell.policy, cell.seed)
    cap_dir = capture_set(config, cache, cell.policy, cell.seed, cell.bench, model,
                          handle.study_dir)
    real = real_splits(config, cap_dir)
    run.log_params({  # the policy's registered name apart from the cell's label
        **{"policy.name" if k == "policy" else k: v for k, v in record["policy"].items()},
        "sim_key": config_hash(sim_key(config, cell.policy, cell.seed)),
        "capture_key": config_hash(capture_key(config, cell.policy, cell.seed, cell.bench)),
        "splits_hash": data.splits_hash, "bench_preset": config.bench.of(cell.bench).preset,
        "bench_kind": config.bench.of(cell.bench).kind,
        "bench_label": config.bench.of(cell.bench).label,
        "sim_best_epoch": record["best_epoch"],
    })  # fmt: skip
    run.log_history("sim", record["history"])
    adapted, metrics = _adapt(config, data, cell, model, real, run)
    metrics.update(_final_evaluation(config, data, cell, adapted, real, run))
    primary = config.primary_metric
    # the x axis of the report: every real label the cell used (selection and tuning included)
    run.log_metrics({f"curve/{primary}": metrics[primary]}, step=int(metrics["n_real_labels"]))
    log_cell_lineage(run, handle, cell, data, cap_dir,
                     config_hash(capture_key(config, cell.policy, cell.seed, cell.bench)), adapted)
    return {primary: metrics.pop(primary), **metrics}


def adapt_train_config(config: StudyConfig, seed: int) -> TrainConfig:
    """The adaptation budget: ``adapt.steps`` optimizer steps for every method and fraction,
    in ``adapt.evals`` selection rounds of ``steps / evals`` batches (cycling the data)."""
    budget = config.adapt
    return TrainConfig(
        epochs=budget.evals, steps_per_epoch=budget.steps // budget.evals,
        batch_size=budget.batch_size, lr=budget.lr, optics_lr=budget.optics_lr,
        weight_decay=budget.weight_decay, seed=seed, device=str(device_of(config)),
        progress=False,
    )  # fmt: skip


def selection_data(config: StudyConfig, data: StudyData, cell: Cell, pool, real):
    """(train frames, selection data or None, label counts) of a cell's selection protocol;
    ``real-val-from-budget`` draws its val split from the cell's own fraction ``pool``."""
    protocol = config.selection.adapt
    train, val, extra = pool, None, 0
    if protocol == "sim-val":
        split = data.splits["sim_val"]
        val = ImageData(data.images.images[split], data.images.labels[split], split="sim-val")
    elif protocol == "real-val-from-budget":
        train, val = pool.holdout(config.selection.budget_val_share, cell.seed)
    elif protocol == "real-val":
        val, extra = real.val, len(real.val)
    elif protocol == "oracle":  # refused by SelectionConfig unless named with oracle: true
        val = replace(real.for_final_evaluation(), split="oracle-test")
    n_val = len(val) if protocol == "real-val-from-budget" else 0
    counts = {"n_real_train": len(train), "n_real_val": n_val, "n_real_labels_extra": extra,
              "n_real_labels": len(train) + n_val + extra,
              "oracle_invalid": float(protocol == "oracle")}
    return train, val, counts


def _adapt(config: StudyConfig, data: StudyData, cell: Cell, model, real, run):
    """Stage 4: (adapted model, metrics) after the cell's method on its real fraction."""
    pool = real.pool_fractions([cell.fraction], cell.seed)[cell.fraction]
    spec = config.policy(cell.policy)
    tuned = spec.tuning.real_labels if spec.tuning else 0  # labels its tuning read
    metrics: dict = {"n_real_pool": len(pool), "adapt_steps": 0, "n_real_train": 0,
                     "n_real_val": 0, "n_real_labels_extra": 0, "n_real_labels": tuned,
                     "n_real_labels_tuning": tuned,
                     "oracle_invalid": float(config.selection.adapt == "oracle")}
    run.log_params({"selection_adapt": config.selection.adapt,
                    "selection_sim": config.selection.sim})
    if cell.method == ZERO_SHOT:
        return model, metrics
    train, val, counts = selection_data(config, data, cell, pool, real)
    metrics.update(counts, n_real_labels=counts["n_real_labels"] + tuned)
    hparams = method_hparams(cell.method, config.hparams.get(cell.method), config.adapt)
    tconfig, kwargs = method_options(cell.method, hparams, adapt_train_config(config, cell.seed))
    run.log_params({f"hp.{k}": v for k, v in hparams.items()})
    split = data.splits["sim_train"]
    sim_train = ImageData(data.images.images[split], data.images.labels[split], split="sim-train")
    steps = []
    result = get_method(cell.method)(
        model, train, val, tconfig, cell.seed, sim_train=sim_train,
        policy=build_policy(spec.name, spec.strengths, config.optics), **kwargs,
        callback=lambda epoch, m: (steps.append(1), run.log_metrics(
            {f"adapt/{k}": v for k, v in m.items() if k != "epoch"}, epoch)),
    )  # fmt: skip
    metrics["adapt_steps"] = len(steps) * tconfig.steps_per_epoch
    metrics["adapt_best_epoch"] = result.metrics.get("best_epoch", -1)
    for name, part in (("real_train_ids.json", train), ("real_val_ids.json", val)):
        if isinstance(part, FrameData) and part.input_ids is not None:
            _log_json(run, name, part.input_ids.tolist())
    if "val_accuracy" in result.metrics and config.selection.adapt != "sim-val":
        key = "budget_val_acc" if config.selection.adapt == "real-val-from-budget" else (
            "real_val_acc")  # oracle: the real test accuracy it selected on
        metrics[key] = result.metrics["val_accuracy"]
    return result.model, metrics


def _final_evaluation(config: StudyConfig, data: StudyData, cell: Cell, adapted, real,
                      run) -> dict:
    """Stage 5: the only place real test is read; at 0 % also the sim side of the gap."""
    metrics: dict = {}
    test = real.for_final_evaluation()
    real_scores, f_real = _scores(adapted, test)
    metrics.update({f"real_test_{k}": v for k, v in real_scores.items()})
    if cell.method != ZERO_SHOT:
        return metrics
    # the sim side of the gap: the same inputs through the ideal simulation
    twins = ImageData(test.images, test.labels, split="sim-twins-of-test")
    twin_scores, f_sim = _scores(adapted, twins)
    metrics.update({f"sim_real_test_{k}": v for k, v in twin_scores.items()})
    split = data.splits["sim_test"]
    sim_test = ImageData(data.images.images[split], data.images.labels[split],
                         split="sim-test")
    metrics.update({f"sim_test_{k}": v for k, v in _scores(adapted, sim_test)[0].items()})
    score = "acc" if "acc" in real_scores else "psnr"  # the gap of the primary score
    metrics["gap"] = twin_scores[score] - real_scores[score]
    dist = feature_distance(f_sim, f_real)
    metrics.update({"feature_mmd2": dist["mmd2"], "feature_frechet": dist["frechet"]})
    _log_features(run, f_sim, f_real, twins.labels, test.labels, config.report.feature_points)
    return metrics


def _scores(model, data) -> tuple[dict, torch.Tensor]:
    """({acc | psnr, ssim}, features) of ``model`` on ``data`` from one pass."""
    out = predict(model, data)
    scores = {}
    if "logits" in out:
        scores["acc"] = accuracy(out["logits"], data.labels)
    targets = data.targets(torch.arange(len(data)))
    if "recon" in out and targets is not None:
        rec = reconstruction_metrics(out["recon"], targets)
        scores.update({k: rec[k] for k in ("psnr", "ssim") if k in rec})
    return scores, out["features"]


def _log_json(run, name: str, obj) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(json.dumps(obj))
        run.log_artifact(path)


def _log_features(run, f_sim, f_real, y_sim, y_real, points: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "features.npz"
        np.savez(path, sim_features=f_sim[:points].numpy(), real_features=f_real[:points].numpy(),
                 sim_labels=y_sim[:points].numpy(), real_labels=y_real[:points].numpy())
        run.log_artifact(path)
