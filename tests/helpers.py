"""Test helpers that read checkpoints back from disk (no library mocks)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            out.update({k: st.get_tensor(k) for k in st.keys()})
    return out


def ask(processor, n_images: int, question: str = "what color is the shape on the left?") -> str:
    content = [{"type": "image"}] * n_images + [{"type": "text", "text": question}]
    return processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )


def cli_command() -> list[str]:
    """The ``vlm-swap`` console script of the running environment (or ``python -m vlm_swap.cli``)."""
    import sys

    script = Path(sys.executable).with_name("vlm-swap")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "vlm_swap.cli"]
