"""The pure grid: which cells a config makes."""

from __future__ import annotations

from studies import grid
from studies.config import parse_config
from tests.studies.tiny import TINY


def test_grid_cells():
    config = parse_config({**TINY, "ablations": ["physics:defocus"], "bench": {"seeds": [3, 4]},
                           "methods": ["finetune-head", "siamese", "real-only"]})
    cells = grid.grid_cells(config)
    ids = [c.id for c in cells]
    assert len(ids) == len(set(ids))
    per_seed_bench = 3 + 2 * (2 * 2 + 1)  # 3 zero-shot + 2 fractions x (2 policies x 2 + real-only)
    assert len(cells) == per_seed_bench * 2 * 2
    zero = [c for c in cells if c.fraction == 0]
    assert {c.method for c in zero} == {"none"} and len(zero) == 3 * 2 * 2
    assert {c.policy for c in cells if c.method == "real-only"} == {"none"}
    assert all(c.fraction == 0 for c in cells if c.policy == "physics:defocus")
    assert grid.Cell("physics", "siamese", 0.1, 1, 4).id == "physics/siamese/10%/s1/b4"
