"""User-facing errors: one class whose message is a single line naming the cause.

The CLI prints these without a traceback (unless ``--debug``) and exits non-zero; anything else
that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import sys

from .format.errors import VlmSwapError

__all__ = ["VlmSwapError", "first_line", "quiet_interrupt_while_starting", "started_as_the_command"]


def first_line(exc: BaseException) -> str:
    """The first line of a library's error message (its type's name when it has none), for a one-line error."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def started_as_the_command() -> bool:
    """True in a ``vlm-swap`` process (the console script, or ``python -m vlm_swap.cli`` as torchrun runs it)."""
    return sys.argv[0].rsplit("/", 1)[-1] == "vlm-swap" or "vlm_swap.cli" in getattr(sys, "orig_argv", ())


@contextlib.contextmanager
def quiet_interrupt_while_starting():
    """Ctrl-C while the ``vlm-swap`` command imports its libraries (seconds, before any command runs) ends it
    with one line and exit status 130, not a traceback of the import machinery. A program that imports
    vlm_swap gets its KeyboardInterrupt as usual."""
    try:
        yield
    except KeyboardInterrupt:
        if not started_as_the_command():
            raise
        sys.stderr.write("interrupted while starting; nothing was done\n")
        raise SystemExit(130) from None
