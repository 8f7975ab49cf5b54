"""``python -m vlm_swap.cli``: the ``vlm-swap`` command (as torchrun and accelerate launch start it)."""

from . import main

main()
