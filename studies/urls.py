"""Passwords in storage and tracking URLs: masked wherever printed, stripped wherever stored.

A study stores its URLs without passwords (``study.json``, the Optuna study attributes, the
report); the secret comes from the standard mechanisms: libpq reads ``$PGPASSWORD`` or
``~/.pgpass`` when a ``postgresql://`` URL has none, MLflow reads ``$MLFLOW_TRACKING_USERNAME``
and ``$MLFLOW_TRACKING_PASSWORD`` for a server.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from harness.errors import SimgapError

_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/:@\s]*):(?P<pw>[^@/\s]*)@"
)


def mask_url(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` replaced by ``***``
    (for anything printed or stored)."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", str(text))


def split_password(url: str) -> tuple[str, str | None]:
    """(``url`` without its password, the password or None).  The stored URL then relies on the
    standard mechanisms: libpq reads ``PGPASSWORD`` or ``~/.pgpass`` when the URL has none."""
    match = _USERINFO.search(url)
    if match is None:
        return url, None
    return url[: match.start("user") + len(match["user"])] + url[match.end("pw"):], match["pw"]


def export_password(url: str | None) -> str | None:
    """Move the password of ``url`` into the environment this process and its workers read
    (never a command line, never a file) and return the URL without it: ``$PGPASSWORD`` for
    PostgreSQL, ``$MLFLOW_TRACKING_USERNAME`` / ``$MLFLOW_TRACKING_PASSWORD`` for an MLflow
    server over HTTP(S).  A password in any other URL is refused (it would reach the workers'
    command lines); other URLs are returned unchanged."""
    if url is None:
        return None
    bare, password = split_password(url)
    if password is None:
        return url
    if url.startswith("postgres"):
        os.environ["PGPASSWORD"] = unquote(password)
        return bare
    if url.startswith("http"):
        match = _USERINFO.search(url)
        os.environ["MLFLOW_TRACKING_USERNAME"] = match["user"]
        os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(password)
        return url[: match.start("user")] + url[match.end():]
    raise SimgapError(f"--storage / --tracking-uri: {mask_url(url)}: a password only in a "
                      "postgresql:// or http(s):// URL; give it the way the driver reads one "
                      "(e.g. an option file), not in the URL")


# ---------------------------------------------------------------------------------- folders
# A store inside the study folder is written relative to it (``sqlite:///optuna.db``,
# ``journal:optuna.log``, ``mlruns`` for an artifact location) wherever it is stored, and made
# absolute against the folder it is opened from: a moved or copied folder uses its own stores.
_FILE_SCHEMES = ("sqlite:///", "journal:", "file://")


def _local_path(url: str) -> tuple[str, str] | None:
    """(scheme, path) of a URL naming a local file or folder; None for any other URL."""
    for scheme in _FILE_SCHEMES:
        if url.startswith(scheme):
            rest = url[len(scheme):]
            return scheme, url2pathname(urlsplit(url).path) if scheme == "file://" else rest
    return None


def in_folder(url: str | None, folder: str | Path | None) -> str | None:
    """``url`` written relative to ``folder`` when it names a file inside it, else unchanged."""
    local = None if url is None or folder is None else _local_path(url)
    if local is None or not Path(local[1]).is_absolute():
        return url
    scheme, path = local
    try:
        rel = Path(path).resolve().relative_to(Path(folder).resolve()).as_posix()
    except ValueError:  # outside the folder: stays absolute
        return url
    return rel if scheme == "file://" else f"{scheme}{rel}"


def from_folder(url: str | None, folder: str | Path | None, bare_path: bool = False) -> str | None:
    """The absolute form of a URL :func:`in_folder` wrote relative to ``folder``; a bare relative
    path (an artifact location, ``bare_path``) becomes a ``file://`` URI."""
    if url is None or folder is None:
        return url
    base = Path(folder).resolve()
    for scheme in ("sqlite:///", "journal:"):
        rest = url.removeprefix(scheme)
        if url.startswith(scheme) and rest and rest != ":memory:" and not Path(rest).is_absolute():
            return f"{scheme}{base / rest}"
    if bare_path and ":" not in url and not Path(url).is_absolute():
        return (base / url).as_uri()
    return url


def folder_of(url: str, stored: str) -> Path | None:
    """The study folder of a file storage opened by its absolute ``url`` whose study stored it
    as the folder-relative ``stored`` (e.g. ``sqlite:///optuna.db``); None when not relative."""
    local, rel = _local_path(url), _local_path(stored)
    if local is None or rel is None or Path(rel[1]).is_absolute():
        return None
    path, parts = Path(local[1]).resolve(), Path(rel[1]).parts
    if path.parts[-len(parts):] != parts:
        return None
    return path.parents[len(parts) - 1]
