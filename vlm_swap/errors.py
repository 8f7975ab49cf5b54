"""User-facing errors: one class whose message is a single line naming the cause.

The CLI prints these without a traceback (unless ``--debug``) and exits non-zero; anything else
that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class VlmSwapError(Exception):
    """An error caused by the user's input or environment, with a one-line message."""

    exit_code = 2


class NotImplementedYet(VlmSwapError):
    """A feature that is planned but not implemented; says so instead of guessing."""

    exit_code = 3
