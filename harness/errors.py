"""User-facing errors.

Anything a user can fix (a bad config value, a missing or corrupt file, a path outside the
dataset folder) raises :class:`SimgapError` with one line that names the file or field.  The CLI
prints that line and exits with code 2; nothing half-written is left behind.
"""


class SimgapError(Exception):
    """A problem with the user's input: one line naming the file or field and what is wrong."""

    exit_code = 2
