"""The one exception type users see, and the one place an error becomes one line.

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


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (its type's name when it has none): how a
    library's multi-line error becomes part of an edgeslim one-line message."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def last_line(text: str, limit: int = 300) -> str:
    """The last non-empty line of a process's output (where a Python traceback puts the error), cut
    at ``limit``: how a failed subprocess (a device's harness) records its reason."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "no output")[:limit]
