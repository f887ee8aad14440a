"""``simgap tune``: Optuna TPE over a policy's or a method's hyper-parameters.

The search spaces are :mod:`baselines.hparams` (a policy's strengths and sim lr; a method's lr,
weight decay, layers, Siamese margin / alignment / adversarial term), so every policy and method
is tuned with the same trial budget.  The objective spends no more real labels than the study
claims, by its selection protocol (``selection.adapt``):

* a **policy** (its 0 % cell; a policy without strengths, ``none``, gets its sim lr alone):
  ``real-val`` (the study declares the real val set as an extra label cost) scores real val
  accuracy of the model captured through the emulated bench of the tuned bench seed, the way
  the cells capture (:mod:`studies.captures`): only the val inputs, each at its capture index
  of the study's plan, so its frames are those a cell sees; any other protocol scores the best
  sim val accuracy (no real label);
* a **method** at ``--fraction`` (one of the study's fractions above 0): the method adapted on
  the reference policy's captures, scored on the protocol's selection data
  (``real-val-from-budget`` and ``last``: a held-out part of the fraction itself; ``sim-val``:
  sim val; ``real-val``: real val).

``oracle`` studies cannot be tuned.  After every epoch the objective is reported as an
intermediate value and a MedianPruner stops trials that fall behind.  Real test is never read.

The tuning study lives in an Optuna storage (SQLite in the tuning folder by default, or any
``--storage`` URL), so a killed tuning run resumes with the same command; every trial is an
MLflow run nested under one tuning run.  A policy's best trial is written as a tuned-policy YAML
(``name``, ``label``, ``strengths``, ``lr``) that a study config names with ``policies: [...,
{file: tuned-physics.yaml}]``; a method's as ``tuned-<method>.yaml`` holding the ``hparams``
block to paste into the study config.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from pathlib import Path

import optuna
import torch
import yaml
from optuna.trial import TrialState

from augment.policy import build_policy
from baselines import get_method, hparams
from harness.datasets import FrameData, ImageData
from harness.errors import SimgapError
from harness.files import write_json, write_text
from harness.lab.validate import read_capture_set
from harness.metrics import accuracy
from harness.models import load_model
from harness.train import predict
from studies import captures, cells, queue, tracking
from studies.cache import ArtifactCache
from studies.config import PolicySpec, StudyConfig, config_hash
from studies.grid import Cell
from studies.storage import open_storage, resolve_storage_url
from studies.urls import in_folder, split_password

log = logging.getLogger("simgap.studies")


def _val_request(config: StudyConfig, masks: torch.Tensor, bench_seed: int):
    """The capture request of the study's val inputs alone, at their capture indices of the
    plan the cells capture (:func:`studies.captures.capture_request`): a val input's frames
    are those a cell of the same (policy model, bench) sees."""
    return captures.capture_request(config, cells.study_data(config), masks, {},
                                    config.bench.of(bench_seed), only=("val",))  # fmt: skip


def _val_frames(config: StudyConfig, bench, phase: torch.Tensor, bench_seed: int):
    """(frames, labels) of the val inputs shown with ``phase`` on ``bench`` (in memory)."""
    request = _val_request(config, phase, bench_seed)
    index = torch.as_tensor(request.plan["capture_index"].to_numpy(copy=True), dtype=torch.long)
    frames = bench.capture(phase.detach(), request.images, request.ids, capture_index=index)
    return frames.cpu(), torch.as_tensor(request.plan["label"].to_numpy(copy=True))


def _accuracy(model, frames: torch.Tensor, labels: torch.Tensor) -> float:
    out = predict(model, FrameData(frames, labels, split="val"))
    return accuracy(out["logits"], labels)


def real_val_accuracy(config: StudyConfig, model, bench_seed: int, workdir: Path) -> float:
    """Capture the val inputs with ``model``'s mask, read them back, score the model."""
    request = _val_request(config, model.encoder.phase, bench_seed)
    captures.record(captures.bench_device(config, bench_seed), request, workdir / "val-captures")
    val = read_capture_set(workdir / "val-captures", splits=["val"]).val
    return _accuracy(model, val.frames, val.labels)


OBJECTIVE_NAMES = {"sim-val": "sim_val_acc", "real-val": "real_val_acc",
                   "real-val-from-budget": "budget_val_acc"}


def tuning_protocol(config: StudyConfig, target: str) -> str:
    """The objective's label source for a ``policy`` or ``method`` target (module docstring)."""
    chosen = config.selection.adapt
    if chosen == "oracle":
        raise SimgapError("selection.adapt: an oracle study cannot be tuned (real test)")
    if target == "policy":
        return "real-val" if chosen == "real-val" else "sim-val"
    return chosen if chosen in ("real-val", "sim-val") else "real-val-from-budget"


def _start(trial, tracker, parent, name: str, params: dict):
    queue.mark_started(trial)
    return tracker.start_cell(parent, name, {"simgap.trial": str(trial.number)}, params)


def _report(trial, run, value: float, epoch: int, metrics: dict) -> None:
    """An intermediate objective value (pruning) and the epoch's metrics in MLflow."""
    run.log_metrics({**{f"train/{k}": v for k, v in metrics.items()
                        if k != "epoch" and isinstance(v, (int, float))},
                     "objective_epoch": value}, step=epoch)
    trial.report(value, epoch)
    trial.set_user_attr("heartbeat", time.time())
    if trial.should_prune():
        raise optuna.TrialPruned(f"epoch {epoch}: objective {value:.3f}")


def _finish(run, trial, body) -> float:
    try:
        value = body()
    except optuna.TrialPruned:
        run.end("KILLED")
        raise
    except BaseException:
        run.end("FAILED")
        raise
    run.log_metrics({"objective": value})
    run.end("FINISHED")
    log.info("tune trial %d: objective %.4f", trial.number, value)
    return value


def _policy_objective(config, policy: str, seed: int, bench_seed: int, tracker, parent,
                      protocol: str):
    space = hparams.policy_space(policy, config.optics, config.training.lr)
    selection = config.selection.model_copy(update={"sim": "sim-val"})
    sim_config = config.model_copy(update={"selection": selection})
    if protocol == "real-val":
        bench = captures.bench_device(config, bench_seed)

    def objective(trial: optuna.Trial) -> float:
        params = {name: param.suggest(trial, name) for name, param in space.items()}
        strengths = {k.removeprefix("strength."): v for k, v in params.items() if k != "lr"}
        spec = PolicySpec(name=policy, strengths=strengths, lr=params["lr"])
        run = _start(trial, tracker, parent, f"tune/{policy}/trial{trial.number}",
                     {"policy": policy, "seed": seed, "bench": bench_seed, **params})

        def report(model, epoch: int, metrics: dict) -> None:
            if protocol == "real-val":
                value = _accuracy(model, *_val_frames(config, bench, model.encoder.phase,
                                                      bench_seed))  # fmt: skip
            else:
                value = metrics["val_accuracy"]
            _report(trial, run, value, epoch, metrics)

        def body() -> float:
            with tempfile.TemporaryDirectory() as tmp:
                record = cells.train_sim_model(sim_config, spec, seed, Path(tmp), callback=report)
                if protocol != "real-val":
                    return max(h["val_accuracy"] for h in record["history"])
                model = load_model(Path(tmp) / "model.pt")
                return real_val_accuracy(config, model, bench_seed, Path(tmp))

        return _finish(run, trial, body)

    return objective


def _method_data(config: StudyConfig, method: str, fraction: float, seed: int, bench: int,
                 protocol: str, cache_dir: Path):
    """(sim model, train frames, selection data, sim train, policy, label counts) of a method
    tuned at ``fraction`` on the reference policy's captures."""
    cache = ArtifactCache(cache_dir)
    policy = config.reference_policy
    model, _, _ = cells.sim_model(config, cache, policy, seed)
    real = cells.real_splits(config, cells.capture_set(config, cache, policy, seed, bench, model))
    pool = real.pool_fractions([fraction], seed)[fraction]
    selection = config.selection.model_copy(update={"adapt": protocol})
    data = cells.study_data(config)
    cell = Cell(policy, method, fraction, seed, bench)
    train, val, counts = cells.selection_data(config.model_copy(update={"selection": selection}),
                                              data, cell, pool, real)
    if val is None or len(val) == 0:
        raise SimgapError(f"--fraction: {fraction:g} of the pool leaves no labels to tune on")
    split = data.splits["sim_train"]
    sim_train = ImageData(data.images.images[split], data.images.labels[split], split="sim-train")
    spec = config.policy(policy)
    sim_policy = build_policy(spec.name, spec.strengths, config.optics)
    return model, train, val, sim_train, sim_policy, counts


def _method_objective(config, method: str, seed: int, bench_seed: int, tracker, parent,
                      prepared):
    model, train, val, sim_train, sim_policy, _ = prepared
    base = {"lr": config.adapt.lr, "weight_decay": config.adapt.weight_decay}

    def objective(trial: optuna.Trial) -> float:
        values = hparams.suggest(method, trial, base)
        tconfig, kwargs = hparams.method_options(method, values,
                                                 cells.adapt_train_config(config, seed))
        run = _start(trial, tracker, parent, f"tune/{method}/trial{trial.number}",
                     {"method": method, "seed": seed, "bench": bench_seed, **values})

        def body() -> float:
            result = get_method(method)(
                model, train, val, tconfig, seed, sim_train=sim_train, policy=sim_policy,
                callback=lambda epoch, m: _report(trial, run, m["val_accuracy"], epoch, m),
                **kwargs)  # fmt: skip
            return float(result.metrics["val_accuracy"])

        return _finish(run, trial, body)

    return objective


def _emulated_bench(config: StudyConfig, bench_seed: int | None) -> int:
    """The bench seed to tune on (default: the study's first); tuning captures on an emulated
    bench, so a driver or exchange bench of the study is refused."""
    bench_seed = config.bench.seeds[0] if bench_seed is None else bench_seed
    if config.bench.of(bench_seed).kind != "emulated":
        raise SimgapError(f"--bench-seed: bench {bench_seed} of the study is a "
                          f"{config.bench.of(bench_seed).kind} bench; tuning captures on an "
                          "emulated one")  # fmt: skip
    return bench_seed


def run_tuning(
    config: StudyConfig,
    out: str | Path,
    trials: int = 20,
    policy: str = "physics",
    seed: int | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    bench_seed: int | None = None,
    method: str | None = None,
    fraction: float | None = None,
) -> dict:
    """Tune ``policy`` (or ``method`` at ``fraction``, default the smallest positive one of the
    study) for ``trials`` trials; returns {value, trial, params, path, protocol, real_labels}."""
    if trials < 1:
        raise SimgapError(f"--trials: must be at least 1, got {trials}")
    seed = config.seeds[0] if seed is None else seed
    bench_seed = _emulated_bench(config, bench_seed)
    protocol = tuning_protocol(config, "method" if method else "policy")
    fraction = _checked_target(config, policy, method, fraction)  # all checks before a write
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target, labels, prepared = _target(config, policy, method, fraction, seed, bench_seed,
                                       protocol, out)
    url = resolve_storage_url(storage, out)
    study = _tuning_study(config, url, target, seed, bench_seed, trials)
    if study.metric_names is None:  # the objective's name in optuna-dashboard
        with warnings.catch_warnings():  # experimental in Optuna 4-5, unchanged since 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([OBJECTIVE_NAMES[protocol]])
    uri = tracking_uri or config.tracking_uri or tracking.default_tracking_uri(out)
    tracker = tracking.Tracking(uri, f"simgap/{config.name}-tune", source="simgap tune")
    parent = tracker.parent_run(study.study_name, {**target, "seed": seed, "bench": bench_seed,
                                                   "protocol": protocol, "real_labels": labels,
                                                   "config": config.model_dump(mode="json")})
    queue.fail_stale(study, config.grid.stale_after_s)  # trials of a killed run: FAIL
    left = trials - len(study.get_trials(deepcopy=False,
                                         states=(TrialState.COMPLETE, TrialState.PRUNED)))
    if left > 0:
        objective = (_method_objective(config, method, seed, bench_seed, tracker, parent,
                                       prepared) if method else
                     _policy_objective(config, policy, seed, bench_seed, tracker, parent,
                                       protocol))  # fmt: skip
        study.optimize(objective, n_trials=left, catch=(), show_progress_bar=True)  # with ETA
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        tracker.set_status(parent, "FAILED")
        raise SimgapError(f"{out}: no tuning trial completed (all pruned or failed)")
    stored = in_folder(split_password(url)[0], out)  # relocatable, never a password
    info = {"protocol": protocol, "real_labels": labels, "seed": seed, "bench_seed": bench_seed,
            "url": stored}
    doc = (_tuned_method(config, study, method, fraction, info) if method
           else _tuned_policy(config, study, policy, info))
    path = _write_tuned(out, method or policy, doc, bool(method))
    tracker.log_metrics(parent, {"best_objective": study.best_value})
    tracker.log_artifact(parent, path)
    tracker.set_status(parent, "FINISHED")
    write_json(out / "tune.json", {"study": study.study_name, "storage": stored, "best": doc})
    return {"value": float(study.best_value), "trial": study.best_trial.number,
            "params": study.best_params, "path": path, "protocol": protocol,
            "real_labels": labels}


def _checked_target(config: StudyConfig, policy: str, method: str | None,
                    fraction: float | None) -> float | None:
    """The fraction a method is tuned at (default: the study's smallest > 0; None for a
    policy); refuses an unknown policy or method and a fraction that is not the study's."""
    if not method:
        if fraction is not None:
            raise SimgapError("--fraction: only with --method (a policy is tuned at 0 %)")
        try:
            build_policy(policy, {}, config.optics)
        except SimgapError as exc:
            raise SimgapError(f"--policy: {exc}") from None
        return None
    hparams.method_space(method)
    positive = sorted(f for f in config.fractions if f > 0)
    if fraction is None and positive:
        return positive[0]
    if fraction not in positive:
        listed = ", ".join(f"{f:g}" for f in positive) or "none"
        raise SimgapError(f"--fraction: {fraction} is not one of the study's fractions above "
                          f"0 ({listed})")
    return fraction


def _target(config: StudyConfig, policy: str, method: str | None, fraction: float | None,
            seed: int, bench_seed: int, protocol: str, out: Path):
    """(target, real labels the objective reads, prepared method data or None); a policy
    without strengths (``none``) gets its sim lr tuned alone."""
    if method:
        prepared = _method_data(config, method, fraction, seed, bench_seed, protocol,
                                out / "cache")
        return {"method": method, "fraction": fraction}, prepared[-1]["n_real_labels"], prepared
    labels = len(cells.study_data(config).splits["val"]) if protocol == "real-val" else 0
    return {"policy": policy}, labels, None


def _tuning_study(config: StudyConfig, url: str, target: dict, seed: int, bench_seed: int,
                  trials: int) -> optuna.Study:
    """The tuning study of (config, target, seed, bench), created or resumed."""
    key = config_hash({"config": config.hash(), **target, "seed": seed, "bench": bench_seed})
    name = target.get("method") or target["policy"]
    study = optuna.create_study(
        study_name=f"{config.name}-tune-{name}-{key[:8]}",
        storage=open_storage(url),
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, trials)),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
        direction="maximize",
        load_if_exists=True,
    )
    study.set_user_attr("kind", "simgap-tune")
    study.set_user_attr("config", config.model_dump(mode="json"))
    return study


def _tuning_info(config: StudyConfig, study: optuna.Study, info: dict) -> dict:
    objective = {"real-val": "real val accuracy (an extra label cost the study declares)",
                 "sim-val": "sim val accuracy (no real label)",
                 "real-val-from-budget": "accuracy on a held-out part of the fraction"}
    return {
        "objective": objective[info["protocol"]] + "; real test never used",
        "protocol": info["protocol"], "real_labels": info["real_labels"],
        "value": float(study.best_value), "trial": study.best_trial.number,
        "trials": len(study.trials), "seed": info["seed"], "bench_seed": info["bench_seed"],
        "bench_preset": config.bench.of(info["bench_seed"]).preset, "study": study.study_name,
        "storage": info["url"], "config": config.name, "config_hash": config.hash(),
    }  # fmt: skip


def _tuned_policy(config: StudyConfig, study: optuna.Study, policy: str, info: dict) -> dict:
    """The tuned-policy document of the best trial (what a study config's ``file:`` reads)."""
    best = study.best_trial
    strengths = {k.removeprefix("strength."): v for k, v in best.params.items()
                 if k.startswith("strength.")}
    return {"name": policy, "label": f"{policy}-tuned",
            "strengths": {k: round(v, 6) for k, v in strengths.items()},
            "lr": float(best.params["lr"]), "tuning": _tuning_info(config, study, info)}


def _tuned_method(config: StudyConfig, study: optuna.Study, method: str, fraction: float,
                  info: dict) -> dict:
    """The ``hparams`` block of the best trial, to paste into a study config."""
    values = {k.removeprefix(f"{method}."): v for k, v in study.best_params.items()}
    values = {k: round(v, 6) if isinstance(v, float) else v for k, v in values.items()}
    return {"hparams": {method: values},
            "tuning": {**_tuning_info(config, study, info), "fraction": fraction}}


def _write_tuned(out: Path, name: str, doc: dict, method: bool) -> Path:
    path = out / f"tuned-{name.replace(':', '_')}.yaml"
    use = ("paste its hparams block into a study config" if method else
           f"name it in a study config: policies: [..., {{file: {path.name}}}]")
    write_text(path, f"# written by `simgap tune`; {use}\n" + yaml.safe_dump(doc, sort_keys=False))
    return path
