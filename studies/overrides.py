"""Edits of a study config: ``--set key.sub=value`` overrides (Hydra-style), and the fields in
which two configs differ (named when a study folder holds another config).

An override is applied to the data read from the YAML file before validation, so the same
schema (:class:`studies.config.StudyConfig`) checks it and an invalid one is a one-line error
that names the field.  The value is read as YAML: ``--set training.epochs=5``,
``--set fractions=[0,0.05]``, ``--set bench.preset=harsh``.  The overridden config is the
study's config (its hash, its ``study.json``), so resuming a study needs the same overrides.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import yaml

from harness.errors import SimgapError


def parse_override(text: str) -> tuple[list[str], Any]:
    """(key path, value) of one ``key.sub=value`` override."""
    key, sep, value = text.partition("=")
    keys = [k.strip() for k in key.split(".")]
    if not sep or not all(keys):
        raise SimgapError(f"--set {text!r}: expected key.sub=value (e.g. training.epochs=5)")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        raise SimgapError(f"--set {key}: value {value!r} is not valid YAML") from None
    return keys, parsed


def apply_overrides(data: Any, overrides: Iterable[str]) -> Any:
    """A copy of the config data ``data`` with every override set (intermediate mappings are
    created; a key path through a non-mapping is an error)."""
    overrides = list(overrides)
    if not overrides:
        return data
    out = copy.deepcopy(data) if data is not None else {}
    if not isinstance(out, dict):
        return out  # parse_config names the problem with the file itself
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for depth, key in enumerate(keys[:-1], start=1):
            child = node.setdefault(key, {})
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                where = ".".join(keys[:depth])
                raise SimgapError(f"--set {'.'.join(keys)}: {where} is not a mapping of fields")
            node = child
        node[keys[-1]] = value
    return out


def changed_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the fields whose values differ between two config dumps (JSON-like
    data); a field missing on one side counts as changed."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                out.append(name)
            else:
                out += changed_fields(old[key], new[key], name)
        return out
    return [] if old == new else [prefix or "(top level)"]


def describe_changes(old: Any, new: Any, limit: int = 5) -> str:
    """``a.b, c`` (at most ``limit`` names, then a count) of :func:`changed_fields`."""
    changed = changed_fields(old, new) or ["nothing but the hash"]
    more = f" and {len(changed) - limit} more" if len(changed) > limit else ""
    return ", ".join(changed[:limit]) + more
