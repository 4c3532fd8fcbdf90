"""The one exception type users see.

Anything the user can fix (a bad recipe value, a missing file, a package that is not installed)
raises :class:`EdgeslimError` with one line that says what to change. The CLI prints that line and
exits with code 2; any other exception is a bug and shows a traceback only under ``--debug``.
"""


class EdgeslimError(Exception):
    """A problem the user can fix; the message is one line saying what to change."""


def describe(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line (whitespace squashed, cut at ``limit``): how a failure that does
    not stop the run (a matrix cell, a quantization candidate, a left-out file) records its reason."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:limit]}"
