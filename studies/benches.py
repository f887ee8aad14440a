"""The ``bench:`` block of a study config: which bench gives the real domain.

``kind`` selects one of the benches of :mod:`harness.lab.benches`:

- ``emulated`` (default): the seeded emulated bench at ``preset`` (``seeds`` = bench seeds);
- ``driver``: a class the worker calls (``driver``: ``module:attr`` or an entry point of the
  group ``simgap.benches``), built as ``cls(optics=..., bench=<seed>, **options)``;
- ``exchange``: capture requests written to ``folder`` (default ``<study folder>/exchange``,
  a relative path is taken from the study folder) and answered by a lab; ``poll_s`` > 0 makes
  workers wait for the answers, checking every ``poll_s`` seconds, instead of stopping.

For ``driver`` and ``exchange``, ``seeds`` are bench ids (one capture session each).
``calibration``: the dark and flat-field frames asked for with every capture set.  ``also``:
more bench blocks (each with its own ``seeds``); every cell runs on every bench and the report
gives its tables per bench as well.  Fields left at their defaults are not written out (so a
config without them keeps its hash).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
    model_validator,
)

from harness.errors import SimgapError
from harness.lab.bench import PRESETS
from harness.lab.benches import CALIBRATION_COUNTS, KINDS, load_driver

_OPTIONAL = {"kind": "emulated", "driver": None, "options": {}, "folder": None, "poll_s": 0.0,
             "calibration": CALIBRATION_COUNTS, "also": []}  # fmt: skip


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):  # YAML's true / false would pass as 1 / 0
        raise ValueError(f"a seed is an integer, not {value!r}")  # noqa: TRY004 - pydantic
    return value


Seed = Annotated[int, BeforeValidator(_not_bool)]  # a seed field, whether from a file or --set


class BenchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["emulated", "driver", "exchange"] = "emulated"
    seeds: list[Seed] = [0]
    preset: str = "typical"
    driver: str | None = None
    options: dict[str, Any] = {}
    folder: str | None = None
    poll_s: float = Field(0.0, ge=0)
    calibration: dict[Literal["dark", "flat"], int] = Field(
        default_factory=lambda: dict(CALIBRATION_COUNTS))
    also: list[BenchConfig] = Field([], description="more benches, each with its own seeds")

    @field_validator("seeds")
    @classmethod
    def _unique(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("must not be empty")
        if len(set(v)) != len(v):
            raise ValueError(f"{v} has duplicates")
        return list(v)

    @field_validator("calibration")
    @classmethod
    def _counts(cls, v: dict) -> dict:
        if any(n < 0 for n in v.values()):
            raise ValueError("frame counts must be >= 0")
        return {**{k: 0 for k in CALIBRATION_COUNTS}, **v}

    @model_validator(mode="after")
    def _kind_fields(self) -> BenchConfig:
        if self.kind == "driver" and not self.driver:
            raise ValueError("driver: name the bench class (module:attr or an entry point of "
                             "the group simgap.benches)")  # fmt: skip
        if self.kind != "driver" and (self.driver or self.options):
            raise ValueError(f"driver / options: only for kind driver (kind is {self.kind})")
        if self.kind != "exchange" and (self.folder or self.poll_s):
            raise ValueError(f"folder / poll_s: only for kind exchange (kind is {self.kind})")
        if any(b.also for b in self.also):
            raise ValueError("also: a bench listed in 'also' has no 'also' of its own")
        seeds = [s for b in self.blocks for s in b.seeds]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds: every bench needs its own seeds (bench ids), got {seeds}")
        if len({b.folder for b in self.blocks if b.kind == "exchange"}) > 1:
            raise ValueError("folder: every exchange bench of a study uses the same folder")
        return self

    @property
    def blocks(self) -> list[BenchConfig]:
        """Every bench of the study: this block, then those of ``also``."""
        return [self, *self.also]

    @property
    def all_seeds(self) -> list[int]:
        return [s for b in self.blocks for s in b.seeds]

    def of(self, seed: int) -> BenchConfig:
        """The bench block whose ``seeds`` hold ``seed`` (the first block for a seed in none,
        e.g. ``simgap tune --bench-seed``)."""
        return next((b for b in self.blocks if seed in b.seeds), self)

    @property
    def poll(self) -> float:
        """Seconds between looks for answers (0: a worker stops when only waiting is left)."""
        return max(b.poll_s for b in self.blocks)

    @model_serializer(mode="wrap")
    def _compact(self, handler):
        data = handler(self)
        for name, default in _OPTIONAL.items():
            if name in data and data[name] == default:
                del data[name]
        return data

    @property
    def label(self) -> str:
        """What the report calls this bench: ``emulated:typical``, ``driver:mylab:Cam``."""
        if self.kind == "emulated":
            return f"emulated:{self.preset}"
        return f"driver:{self.driver}" if self.kind == "driver" else "exchange"


def check_bench(config: BenchConfig, where: str) -> None:
    """Check what the schema cannot: the preset names, that the driver classes load."""
    for bench in config.blocks:
        _check_block(bench, where)


def _check_block(bench: BenchConfig, where: str) -> None:
    if bench.kind not in KINDS:  # the schema's Literal and KINDS name the same kinds
        raise SimgapError(f"{where}: bench.kind: {bench.kind!r} is not one of {', '.join(KINDS)}")
    if bench.kind == "emulated" and bench.preset not in PRESETS:
        raise SimgapError(
            f"{where}: bench.preset: {bench.preset!r} is not one of {', '.join(PRESETS)}"
        )
    if bench.kind == "driver":
        try:
            load_driver(bench.driver)
        except SimgapError as exc:
            raise SimgapError(f"{where}: {exc}") from None


BenchConfig.model_rebuild()
