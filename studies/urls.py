"""Passwords in storage and tracking URLs: masked wherever printed, stripped wherever stored.

A study stores its URLs without passwords (``study.json``, the Optuna study attributes, the
report); the secret comes from the standard mechanisms: libpq reads ``$PGPASSWORD`` or
``~/.pgpass`` when a ``postgresql://`` URL has none, MLflow reads ``$MLFLOW_TRACKING_USERNAME``
and ``$MLFLOW_TRACKING_PASSWORD`` for a server.
"""

from __future__ import annotations

import os
import re
from urllib.parse import unquote

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
    server over HTTP(S).  Other URLs are returned unchanged."""
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
    return url
