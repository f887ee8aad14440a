"""User plug-ins: policies, digital networks, adaptation methods and image sources registered
without editing simgap.

A name that is not built in is looked up

1. among the entry points of the component's group in the installed distributions, e.g. in a
   plug-in package's ``pyproject.toml``::

       [project.entry-points."simgap.policies"]
       my-policy = "my_package.policies:make_policy"

2. as a ``module:attr`` reference (``my_package.policies:make_policy``), imported from
   ``sys.path``, else from the working directory, i.e. where ``simgap`` runs (a
   ``my_plugins.py`` there, not necessarily next to the config).

What the object must be (see the docstrings of the functions that call :func:`find_plugin`):

- ``simgap.policies``: a callable ``(strengths, config, ranges, per_channel_noise)`` returning an
  :class:`augment.policy.Policy` (or a subclass);
- ``simgap.networks``: a callable ``(in_channels)`` returning a
  :class:`harness.models.DigitalNet`;
- ``simgap.methods``: an adaptation method (the signature of :mod:`baselines`);
- ``simgap.sources``: a callable ``(size, data_root, download)`` returning a
  :class:`harness.data.sources.ImageSet`.

A study names a plug-in wherever it names a built-in (``policies: [my-policy]``,
``model.digital: my_package.nets:tiny``, ...); its workers must be able to import it too.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import entry_points

from harness.errors import SimgapError, one_line

#: component kind -> entry-point group
GROUPS = {
    "policies": "simgap.policies",
    "networks": "simgap.networks",
    "methods": "simgap.methods",
    "sources": "simgap.sources",
    "benches": "simgap.benches",
}


def plugin_names(kind: str) -> list[str]:
    """Names of the installed entry points of ``kind``."""
    return sorted({ep.name for ep in entry_points(group=GROUPS[kind])})


def is_reference(name: str) -> bool:
    """``name`` has the form ``package.module:attr`` (identifiers on both sides)."""
    module, sep, attr = str(name).partition(":")
    parts = [*module.split("."), *attr.split(".")]
    return bool(sep) and all(p.isidentifier() for p in parts)


def find_plugin(kind: str, name: str):
    """The object registered as ``name`` for ``kind`` (an entry point of its group, else a
    ``module:attr`` reference), or None when there is none.  A plug-in that fails to import
    is a one-line :class:`SimgapError`."""
    group = GROUPS[kind]
    for ep in entry_points(group=group):
        if ep.name == name:
            try:
                return ep.load()
            except Exception as exc:  # the plug-in's own import error, whatever it is
                raise SimgapError(
                    f"{kind}: entry point {name!r} ({ep.value}, group {group}) does not load: "
                    f"{one_line(exc)}"
                ) from exc
    if not is_reference(name):
        return None
    module_name, _, attr = name.partition(":")
    try:
        module = _import(module_name)
    except Exception as exc:  # the plug-in's own import error, whatever it is
        if _is_missing(exc, module_name):
            return None  # not a module at all: an unknown name
        raise SimgapError(
            f"{kind}: {name!r}: importing {module_name} failed: {one_line(exc)}"
        ) from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SimgapError(f"{kind}: {name!r}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _is_missing(exc: BaseException, module_name: str) -> bool:
    """``exc`` says that ``module_name`` itself (or a package above it) does not exist."""
    missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
    return bool(missing) and (module_name == missing or module_name.startswith(missing + "."))


def _import(module_name: str):
    """The module, from ``sys.path`` or else from the working directory (which the ``simgap``
    script, unlike ``python -m``, does not put on ``sys.path``).  The working directory is on
    ``sys.path`` only during that import: the module stays in ``sys.modules``, and other code
    does not see the user's files as top-level modules."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        if not _is_missing(exc, module_name) or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)
        importlib.invalidate_caches()
        try:
            return importlib.import_module(module_name)
        finally:
            sys.path.remove(cwd)  # leave sys.path as it was


def call_plugin(kind: str, name: str, factory, *args, **kwargs):
    """``factory(*args, **kwargs)``; an error it raises (other than a :class:`SimgapError`,
    which is already one line for the user) becomes ``{kind}: {name!r} failed (...)`` with the
    first line of the error."""
    try:
        return factory(*args, **kwargs)
    except SimgapError:
        raise
    except Exception as exc:  # the plug-in's own error, whatever it is
        lines = str(exc).strip().splitlines()
        first = one_line(lines[0]) if lines else ""
        text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        raise SimgapError(f"{kind}: {name!r} failed ({text})") from exc


def known_names(kind: str, builtin) -> str:
    """The built-in names and the installed plug-ins of ``kind``, for an error message."""
    names = [*builtin, *plugin_names(kind)]
    return ", ".join(names) + ", or a module:attr reference"
