"""Study configuration: one YAML file, validated with pydantic (unknown keys are errors).

A study is a grid of cells over (policy / method, real fraction, seed, bench seed); see
:mod:`studies.grid`.  Presets live in ``studies/configs/`` (``quick``: the default, sized for a
laptop CPU; ``paper``: full Fashion-MNIST, 5 seeds, 3 benches, for a GPU).  ``load_config`` turns
any problem into a one-line :class:`SimgapError` naming the file and the field.

Data protocol: the image source is split once (``data.split_seed``) into six disjoint,
class-stratified parts: sim train / val / test and the real pool / val / test inputs shown on the
bench.  The split is the same for every seed, so every cell is scored on the same real-test
inputs; the nested real fractions (1 % inside 5 % inside 100 % of the pool) are drawn per seed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from augment.policy import build_policy
from baselines import get_method
from harness.data import SOURCES
from harness.errors import SimgapError
from harness.lab.bench import MASK_INITS
from harness.optics import OpticsConfig
from harness.plugins import find_plugin
from studies.benches import BenchConfig, Seed, check_bench
from studies.overrides import apply_overrides
from studies.protocol import AdaptBudget, SelectionConfig, TuningRecord, check_methods

CONFIG_DIR = Path(__file__).parent / "configs"
PRESETS = ("quick", "paper")
ZERO_SHOT = "none"  # the method of a 0 % cell: the sim-trained model as is
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+=-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SimSizes(_Strict):
    """Simulation splits (input images drawn from the source)."""

    train: int = Field(2000, ge=1)
    val: int = Field(300, ge=1)
    test: int = Field(300, ge=1)


class CaptureSizes(_Strict):
    """Inputs captured through the bench: the labelled pool fractions come from, val, test."""

    pool: int = Field(1000, ge=1)
    val: int = Field(200, ge=1)
    test: int = Field(500, ge=1)


class DataConfig(_Strict):
    source: str = "fashion-mnist"
    size: int = Field(32, ge=4, description="image / camera size n in pixels")
    data_root: str | None = None
    limit: int | None = Field(None, ge=1, description="stratified subset of the source first")
    split_seed: Seed = 0
    sim: SimSizes = SimSizes()
    real: CaptureSizes = CaptureSizes()


class ModelConfig(_Strict):
    channels: int = Field(4, ge=1, le=16, description="k phase masks (time-multiplexed frames)")
    mask_init: str = "edge"
    digital: str = "small_cnn"
    task: Literal["classify", "reconstruct", "both"] = "classify"
    train_optics: bool = True


class Budget(_Strict):
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0)
    optics_lr: float = Field(1e-2, gt=0, description="learning rate of the phase mask (rad)")
    weight_decay: float = Field(1e-4, ge=0)


class PolicySpec(_Strict):
    """A policy to compare: a registered ``name`` with ``strengths`` (or a tuned-policy ``file``
    written by ``simgap tune``).  ``label`` names it in cells and tables (default: the name);
    ``lr`` overrides ``training.lr`` for its sim training (tuned policies carry one)."""

    name: str | None = None
    strengths: dict[str, float] = {}
    label: str | None = None
    lr: float | None = Field(None, gt=0)
    file: str | None = None
    tuning: TuningRecord | None = None  # provenance of a tuned policy (enters the hash)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_source(self) -> PolicySpec:
        if (self.name is None) == (self.file is None):
            raise ValueError("give exactly one of 'name' or 'file'")
        if self.label is not None and not _LABEL.match(self.label):
            raise ValueError(f"label {self.label!r} may hold only letters, digits and _.:+=-")
        return self

    @property
    def key(self) -> str:
        return self.label or self.name or ""

    def resolved(self, base: Path) -> PolicySpec:
        """Inline a ``file`` spec (path relative to ``base``); a name spec is returned as is."""
        if self.file is None:
            return self
        path = Path(self.file).expanduser()
        path = path if path.is_absolute() else base / path
        data = _read_yaml(path)
        if not isinstance(data, dict) or "name" not in data:
            raise SimgapError(f"{path}: not a tuned-policy file (needs 'name' and 'strengths')")
        keep = {k: data[k] for k in ("name", "strengths", "label", "lr", "tuning") if k in data}
        if self.label:
            keep["label"] = self.label
        try:
            return PolicySpec(**keep)
        except ValidationError as exc:
            raise SimgapError(f"{path}: {_first_error(exc)}") from None


class GridConfig(_Strict):
    """Liveness of workers: a running cell refreshes its heartbeat every ``heartbeat_s``; a cell
    whose heartbeat is older than ``stale_after_s`` (or whose local worker process is gone) is
    marked failed and queued again."""

    heartbeat_s: float = Field(20.0, gt=0)
    stale_after_s: float = Field(120.0, gt=0)


class ReportConfig(_Strict):
    baseline: str = Field("none", description="label of the no-augmentation policy")
    tsne: list[str] = Field([], description="policy labels whose 0 % cell gets a t-SNE plot")
    tsne_points: int = Field(300, ge=10, description="points per domain in a t-SNE plot")
    feature_points: int = Field(300, ge=10, description="features stored per domain and cell")


class StudyConfig(_Strict):
    name: str = "study"
    data: DataConfig = DataConfig()
    optics: OpticsConfig = OpticsConfig()
    model: ModelConfig = ModelConfig()
    training: Budget = Budget()
    adapt: AdaptBudget = AdaptBudget()
    hparams: dict[str, dict[str, float | bool | str]] = Field(
        {}, description="per method: overrides of baselines.hparams defaults")
    policies: list[PolicySpec] = [PolicySpec(name="none"), PolicySpec(name="physics")]
    ablations: list[PolicySpec] = Field([], description="policies evaluated at 0 % only")
    methods: list[str] = Field(["finetune-head"], description="finetune-head, finetune-full, "
                               "real-only, siamese, or a plug-in (harness.plugins)")
    fractions: list[float] = [0.0, 0.01, 0.05, 1.0]
    seeds: list[Seed] = [0, 1, 2]
    bench: BenchConfig = BenchConfig()
    selection: SelectionConfig = SelectionConfig()
    grid: GridConfig = GridConfig()
    report: ReportConfig = ReportConfig()
    device: str = Field("auto", description="auto (cuda when present), cpu or cuda[:i]")
    tracking_uri: str | None = Field(None, description="MLflow; default sqlite in the study dir")
    storage: str | None = Field(None, description="Optuna; default sqlite in the study dir")

    @model_validator(mode="before")
    @classmethod
    def _before_steps(cls, value: Any) -> Any:
        """A config from before ``adapt.steps`` (a study folder of an older simgap)."""
        adapt = value.get("adapt") if isinstance(value, dict) else None
        if isinstance(adapt, dict) and "epochs" in adapt:
            raise ValueError("adapt.epochs: replaced by adapt.steps (optimizer steps) in simgap "
                             "0.1; rerun the study in a new --out, or edit its config.yaml")
        return value

    @model_validator(mode="before")
    @classmethod
    def _optics_size(cls, value: Any) -> Any:
        """``optics.n`` follows ``data.size`` (it may be given only if equal)."""
        if not isinstance(value, dict):
            return value
        data = value.get("data") or {}
        size = data.get("size", DataConfig.model_fields["size"].default) if isinstance(
            data, dict) else DataConfig.model_fields["size"].default
        optics = value.get("optics") or {}
        if isinstance(optics, dict):
            if "n" in optics and optics["n"] != size:
                raise ValueError(f"optics.n ({optics['n']}) must equal data.size ({size})")
            value = {**value, "optics": {**optics, "n": size}}
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"{v!r} may hold only letters, digits and _.-")
        return v

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        for f in v:
            if not 0.0 <= f <= 1.0:
                raise ValueError(f"{f} is not in [0, 1] (proportions: 0.05 = 5 %)")
        return sorted(_unique_nonempty(v))

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        return _unique_nonempty(v)

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        for name in v:
            try:
                get_method(name)  # built in or a plug-in
            except SimgapError as exc:
                raise ValueError(str(exc).split(": ", 1)[-1]) from None
        return _unique_nonempty(v)

    @model_validator(mode="after")
    def _labels(self) -> StudyConfig:
        if not self.policies:
            raise ValueError("policies: give at least one policy")
        seen: set[str] = set()
        for where, specs in (("policies", self.policies), ("ablations", self.ablations)):
            for spec in specs:
                if spec.file is None and spec.key in seen:
                    raise ValueError(f"{where}: label {spec.key!r} appears twice (set 'label')")
                seen.add(spec.key)
        return self

    # ------------------------------------------------------------------ derived
    def all_policies(self) -> list[PolicySpec]:
        return [*self.policies, *self.ablations]

    def policy(self, label: str) -> PolicySpec:
        for spec in self.all_policies():
            if spec.key == label:
                return spec
        raise KeyError(label)

    @property
    def primary_metric(self) -> str:
        """The number a cell is scored by: real-test accuracy (PSNR for reconstruction only)."""
        return "real_test_acc" if self.model.task != "reconstruct" else "real_test_psnr"

    @property
    def reference_policy(self) -> str:
        """The sim model whose mask the real-only baseline uses: the baseline if compared."""
        labels = [p.key for p in self.policies]
        return self.report.baseline if self.report.baseline in labels else labels[0]

    def hash(self) -> str:
        return config_hash(self.model_dump(mode="json"))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# ---------------------------------------------------------------------------------- helpers
def _unique_nonempty(v: list) -> list:
    if not v:
        raise ValueError("must not be empty")
    if len(set(v)) != len(v):
        raise ValueError(f"{v} has duplicates")
    return list(v)


def config_hash(obj: Any, length: int = 16) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys), first ``length`` hex digits."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ""
    for part in err["loc"]:
        if isinstance(part, int):
            loc += f"[{part}]"
        elif not str(part).startswith("function-"):
            loc += f".{part}" if loc else str(part)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    return f"{loc}: {msg}" if loc else msg


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise SimgapError(f"{path}: file not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise SimgapError(f"{path}: invalid YAML{where} ({problem})") from None


def resolve_config_path(name: str | Path | None) -> Path:
    """A config file path, or a preset name (``quick``, ``paper``); None = ``quick``."""
    if name is None:
        name = "quick"
    if str(name) in PRESETS and not Path(str(name)).is_file():
        return CONFIG_DIR / f"{name}.yaml"
    return Path(name)


def parse_config(data: Any, where: str = "config", base: Path | None = None) -> StudyConfig:
    """Validate a dict; tuned-policy files are inlined (relative to ``base``)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SimgapError(f"{where}: the top level must be a mapping of fields")
    try:
        config = StudyConfig(**data)
    except ValidationError as exc:
        raise SimgapError(f"{where}: {_first_error(exc)}") from None
    base = base or Path.cwd()
    resolved: dict[str, list[PolicySpec]] = {}
    for field in ("policies", "ablations"):
        resolved[field] = []
        for i, spec in enumerate(getattr(config, field)):
            try:
                resolved[field].append(spec.resolved(base))
            except SimgapError as exc:
                raise SimgapError(f"{where}: {field}[{i}].file: {exc}") from None
    if resolved != {"policies": config.policies, "ablations": config.ablations}:
        dumped = config.model_dump(mode="json")
        for field, specs in resolved.items():
            dumped[field] = [s.model_dump(mode="json", exclude_none=True) for s in specs]
        try:
            config = StudyConfig(**dumped)
        except ValidationError as exc:
            raise SimgapError(f"{where}: {_first_error(exc)}") from None
    return config


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> StudyConfig:
    """Read and validate a study config file (or preset name), with ``--set key.sub=value``
    ``overrides`` (:mod:`studies.overrides`) applied before validation."""
    path = resolve_config_path(path)
    data = apply_overrides(_read_yaml(path), overrides)
    where = f"{path} (with --set {' '.join(overrides)})" if overrides else str(path)
    return parse_config(data, where, base=path.parent)


def validate_components(config: StudyConfig, where: str = "config") -> None:
    """Check the names other modules own (source, policies, methods, preset, mask init) by
    building them; each problem is a one-line SimgapError naming the field."""
    source = config.data.source
    plugin = source not in SOURCES and find_plugin("sources", source) is not None
    if source not in SOURCES and not source.startswith("folder:") and not plugin:
        raise SimgapError(f"{where}: data.source: {source!r} is not one of {', '.join(SOURCES)}")
    if config.model.mask_init not in MASK_INITS and not Path(config.model.mask_init).exists():
        raise SimgapError(
            f"{where}: model.mask_init: {config.model.mask_init!r} is not one of "
            f"{', '.join(MASK_INITS)} or an existing mask file"
        )
    check_methods(config, where)
    check_bench(config.bench, where)
    for field, specs in (("policies", config.policies), ("ablations", config.ablations)):
        for i, spec in enumerate(specs):
            try:
                build_policy(spec.name, spec.strengths, config.optics)
            except SimgapError as exc:
                raise SimgapError(f"{where}: {field}[{i}] ({spec.key}): {exc}") from None
    for label in config.report.tsne:
        if label not in [p.key for p in config.all_policies()]:
            raise SimgapError(f"{where}: report.tsne: {label!r} is not a policy label")
    if 0.0 not in config.fractions and config.ablations:
        raise SimgapError(f"{where}: ablations: need fraction 0 in fractions")

