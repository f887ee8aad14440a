"""``simgap tune``: Optuna TPE over a policy's strengths (and the sim learning rate).

Objective: real **val** accuracy of the model trained in simulation under the trial's policy,
measured on the val inputs captured through the emulated bench with the trial's learned mask and
read back through the capture-set reader.  Only the val inputs are ever captured, so real test
is never produced, let alone read.  After every sim epoch the val accuracy (same bench, same
capture indices, in memory) is reported as an intermediate value, and a MedianPruner stops
trials that fall behind.

The tuning study lives in an Optuna storage (SQLite in the tuning folder by default, or any
``--storage`` URL, e.g. the grid's), so a killed tuning run resumes with the same command; every
trial is an MLflow run nested under one tuning run.  The best trial is written as a tuned-policy
YAML (``name``, ``label``, ``strengths``, ``lr``) that a study config names with
``policies: [..., {file: tuned-physics.yaml}]``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import optuna
import torch
import yaml
from optuna.trial import TrialState

from augment.policy import build_policy
from harness.datasets import FrameData
from harness.errors import SimgapError
from harness.files import write_json, write_text
from harness.lab.bench import EmulatedBench
from harness.lab.plans import capture_dataset, capture_plan
from harness.lab.validate import read_capture_set
from harness.metrics import accuracy
from harness.models import load_model
from harness.train import predict
from studies import cells, queue, tracking
from studies.config import PolicySpec, StudyConfig, config_hash
from studies.storage import open_storage, resolve_storage_url

log = logging.getLogger("simgap.studies")


def _val_capture(config: StudyConfig, bench_seed: int):
    """(bench, val ids in capture order, their capture indices) for the study's val inputs."""
    data = cells.study_data(config)
    plan = capture_plan(data.images, {"val": data.splits["val"]})
    ids = torch.tensor(plan["input_id"].to_numpy(copy=True), dtype=torch.long)
    index = torch.tensor(plan["capture_index"].to_numpy(copy=True), dtype=torch.long)
    return EmulatedBench(config.optics, bench_seed, config.bench.preset), ids, index


def _accuracy(model, frames: torch.Tensor, labels: torch.Tensor) -> float:
    out = predict(model, FrameData(frames, labels, split="val"))
    return accuracy(out["logits"], labels)


def real_val_accuracy(config: StudyConfig, model, bench_seed: int, workdir: Path) -> float:
    """Capture the val inputs with ``model``'s mask, read them back, score the model."""
    data = cells.study_data(config)
    bench = EmulatedBench(config.optics, bench_seed, config.bench.preset)
    capture_dataset(bench, model.encoder.phase.detach(), data.images, {"val": data.splits["val"]},
                    workdir / "val-captures", progress=False)
    val = read_capture_set(workdir / "val-captures", splits=["val"]).val
    return _accuracy(model, val.frames, val.labels)


def _objective(config, policy: str, families, seed: int, bench_seed: int, tracker, parent):
    bench, ids, index = _val_capture(config, bench_seed)
    data = cells.study_data(config)
    val_images, val_labels = data.images.images[ids], data.images.labels[ids]

    def objective(trial: optuna.Trial) -> float:
        strengths = {f: trial.suggest_float(f"strength.{f}", 0.0, 1.0) for f in families}
        lr = trial.suggest_float("lr", config.training.lr / 4, config.training.lr * 4, log=True)
        spec = PolicySpec(name=policy, strengths=strengths, lr=lr)
        queue.mark_started(trial)
        run = tracker.start_cell(parent, f"tune/{policy}/trial{trial.number}",
                                 {"simgap.trial": str(trial.number)},
                                 {"policy": policy, "seed": seed, "bench": bench_seed,
                                  "lr": lr, **{f"strength.{f}": v for f, v in strengths.items()}})

        def report(model, epoch: int, metrics: dict) -> None:
            with torch.no_grad():
                frames = bench.capture(model.encoder, val_images.to(model.encoder.phase.device),
                                       index)
            acc = _accuracy(model, frames.cpu(), val_labels)
            run.log_metrics({**{f"sim/{k}": v for k, v in metrics.items() if k != "epoch"},
                             "real_val_acc_epoch": acc}, step=epoch)
            trial.report(acc, epoch)
            trial.set_user_attr("heartbeat", time.time())
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: real val accuracy {acc:.3f}")

        try:
            with tempfile.TemporaryDirectory() as tmp:
                cells.train_sim_model(config, spec, seed, Path(tmp), callback=report)
                model = load_model(Path(tmp) / "model.pt")
                value = real_val_accuracy(config, model, bench_seed, Path(tmp))
        except optuna.TrialPruned:
            run.end("KILLED")
            raise
        except BaseException:
            run.end("FAILED")
            raise
        run.log_metrics({"real_val_acc": value})
        run.end("FINISHED")
        log.info("tune trial %d: real val accuracy %.4f", trial.number, value)
        return value

    return objective


def run_tuning(
    config: StudyConfig,
    out: str | Path,
    trials: int = 20,
    policy: str = "physics",
    seed: int | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    bench_seed: int | None = None,
) -> dict:
    """Tune ``policy``'s strengths and the sim lr; returns {value, trial, params, path}."""
    if trials < 1:
        raise SimgapError(f"--trials: must be at least 1, got {trials}")
    families = build_policy(policy, {}, config.optics).families
    if not families:
        raise SimgapError(f"--policy: {policy!r} has no strengths to tune")
    seed = config.seeds[0] if seed is None else seed
    bench_seed = config.bench.seeds[0] if bench_seed is None else bench_seed
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    url = resolve_storage_url(storage, out)
    study = _tuning_study(config, url, policy, seed, bench_seed, trials)
    uri = tracking_uri or config.tracking_uri or tracking.default_tracking_uri(out)
    tracker = tracking.Tracking(uri, f"simgap/{config.name}-tune")
    parent = tracker.parent_run(study.study_name,
                                {"policy": policy, "seed": seed, "bench": bench_seed,
                                 "config": config.model_dump(mode="json")})
    # trials left RUNNING by a killed tuning process: FAIL, so TPE ignores them
    queue.fail_stale(study, config.grid.stale_after_s)
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    left = trials - len(study.get_trials(deepcopy=False, states=finished))
    if left > 0:
        study.optimize(_objective(config, policy, families, seed, bench_seed, tracker, parent),
                       n_trials=left, catch=())
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        tracker.set_status(parent, "FAILED")
        raise SimgapError(f"{out}: no tuning trial completed (all pruned or failed)")
    best = study.best_trial
    doc = _tuned_policy(config, study, policy, seed, bench_seed, url)
    path = _write_tuned_policy(out, policy, doc)
    tracker.log_metrics(parent, {"best_real_val_acc": best.value})
    tracker.log_artifact(parent, path)
    tracker.set_status(parent, "FINISHED")
    write_json(out / "tune.json", {"study": study.study_name, "storage": url, "best": doc})
    return {"value": float(best.value), "trial": best.number, "params": best.params,
            "path": path}


def _tuning_study(config: StudyConfig, url: str, policy: str, seed: int, bench_seed: int,
                  trials: int) -> optuna.Study:
    """The tuning study of (config, policy, seed, bench), created or resumed."""
    key = config_hash({"config": config.hash(), "policy": policy, "seed": seed,
                       "bench": bench_seed})
    study = optuna.create_study(
        study_name=f"{config.name}-tune-{policy}-{key[:8]}",
        storage=open_storage(url),
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, trials)),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
        direction="maximize",
        load_if_exists=True,
    )
    study.set_user_attr("kind", "simgap-tune")
    study.set_user_attr("config", config.model_dump(mode="json"))
    return study


def _tuned_policy(config: StudyConfig, study: optuna.Study, policy: str, seed: int,
                  bench_seed: int, url: str) -> dict:
    """The tuned-policy document of the best trial (what a study config's ``file:`` reads)."""
    best = study.best_trial
    strengths = {k.removeprefix("strength."): v for k, v in best.params.items()
                 if k.startswith("strength.")}
    return {
        "name": policy,
        "label": f"{policy}-tuned",
        "strengths": {k: round(v, 6) for k, v in strengths.items()},
        "lr": float(best.params["lr"]),
        "tuning": {
            "objective": "real val accuracy after sim training (real test never used)",
            "real_val_acc": float(best.value), "trial": best.number,
            "trials": len(study.trials), "seed": seed, "bench_seed": bench_seed,
            "bench_preset": config.bench.preset, "study": study.study_name, "storage": url,
            "config": config.name, "config_hash": config.hash(),
        },
    }  # fmt: skip


def _write_tuned_policy(out: Path, policy: str, doc: dict) -> Path:
    path = out / f"tuned-{policy.replace(':', '_')}.yaml"
    write_text(path, "# written by `simgap tune`; name it in a study config: "
                     f"policies: [..., {{file: {path.name}}}]\n"
                     + yaml.safe_dump(doc, sort_keys=False))
    return path
