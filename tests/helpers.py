"""Test helpers: checkpoints read back from disk, prompts, the CLI command, LoRA sizes by hand (no library mocks)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from vlm_swap.train.plan import MODULE_OF
from vlm_swap.train.recipe import LoraSpec


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


def expected_lora_params(model: nn.Module, comp: str, spec: LoraSpec) -> int:
    """r * (in + out) for every planned Linear of the component (what LoRA adds)."""
    root = getattr(model, MODULE_OF[comp])
    return sum(
        spec.r * (m.in_features + m.out_features)
        for n, m in root.named_modules()
        if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in spec.target_modules
    )
