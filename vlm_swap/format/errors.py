"""The error every vlm-swap failure raises: a one-line message naming the cause.

It lives in the model format because the format's code raises it too, in vlm-swap and in an exported model
(which ships these files without vlm-swap); ``vlm_swap.errors`` re-exports it with the command's error handling.
"""


class VlmSwapError(Exception):
    """An error caused by the user's input or environment, with a one-line message."""

    exit_code = 2
