"""Image sources, the one split rule and nested fractions.

- :mod:`harness.data.sources`: :class:`ImageSet` and :func:`load_source` (``fashion-mnist``,
  ``digits``, ``folder:PATH``);
- :mod:`harness.data.fashion`: Fashion-MNIST's files (IDX reading, locating, download);
- :mod:`harness.data.cache`: the cache folder and the resized-tensor cache;
- :mod:`harness.data.splits`: stratified splits, nested fractions and :func:`split_source`, the
  six-part split every study and lab command draws its inputs with;
- :mod:`harness.data.cli`: ``simgap data info`` / ``prepare``.

The names below are re-exported for ``from harness.data import ...``.
"""

from harness.data.cache import cache_dir
from harness.data.sources import DEFAULT_SIZE, SOURCES, ImageSet, load_source, source_info
from harness.data.splits import (
    REAL_SIZES,
    SIM_SIZES,
    SPLIT_PARTS,
    nested_fractions,
    split_indices,
    split_sizes,
    split_source,
)

__all__ = [
    "DEFAULT_SIZE",
    "REAL_SIZES",
    "SIM_SIZES",
    "SOURCES",
    "SPLIT_PARTS",
    "ImageSet",
    "cache_dir",
    "load_source",
    "nested_fractions",
    "source_info",
    "split_indices",
    "split_sizes",
    "split_source",
]
