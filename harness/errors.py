"""User-facing errors.

Anything a user can fix (a bad config value, a missing or corrupt file, a path outside the
dataset folder) raises :class:`SimgapError` with one line that names the file or field.  The CLI
prints that line and exits with code 2; nothing half-written is left behind.
"""


class SimgapError(Exception):
    """A problem with the user's input: one line naming the file or field and what is wrong."""

    exit_code = 2


def one_line(exc: BaseException, path=None) -> str:
    """The text of ``exc`` on one short line (without ``path``, which the message names first)."""
    text = " ".join(str(exc).split())
    if path is not None:
        text = text.replace(f" '{path}'", "").replace(f" {path}", "")
    return (text[:160] + "...") if len(text) > 160 else (text or type(exc).__name__)
