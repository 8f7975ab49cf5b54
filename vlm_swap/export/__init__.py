"""``vlm-swap export``: an upgraded model as a checkpoint that loads without vlm-swap.

Formats:
- ``llava``: a native llava-hf checkpoint (``LlavaForConditionalGeneration`` + ``LlavaProcessor``)
  for CLIP / SigLIP ``hf-vit`` encoders; it loads in plain transformers and serves in vLLM / SGLang.
- ``remote-code``: any encoder; the model's code is written beside the weights and loads with
  ``trust_remote_code=True``.

The input is a full upgraded model directory. A training run that holds a LoRA adapter is refused
with the command that merges it first (``vlm-swap merge``), so what is exported is always a model
that was written and can be checked on its own. The output is written atomically and gets a
model card.
"""

from __future__ import annotations

from pathlib import Path

from ..card import write_model_card
from ..checkpoints.atomic import atomic_dir, read_json
from ..checkpoints.guards import check_output_dir
from ..checkpoints.model_files import read_provenance, write_model_extras
from ..checkpoints.resolve import checked_weight_files, resolve_source
from ..errors import VlmSwapError
from .llava import export_llava
from .remote_code import export_remote_code

FORMATS = {"llava": export_llava, "remote-code": export_remote_code}


def export(model: str | Path, fmt: str, out: str | Path, *, force: bool = False) -> Path:
    """Export the upgraded model in ``model`` as ``fmt`` into ``out``; return ``out``."""
    if fmt not in FORMATS:
        raise VlmSwapError(f"unknown export format {fmt!r} (choose from {', '.join(FORMATS)})")
    out = Path(out)
    check_output_dir(out, force, (model,))
    model_dir = Path(model)
    if (model_dir / "adapter_config.json").is_file():
        raise VlmSwapError(
            f"{model} holds a LoRA adapter; merge it first: vlm-swap merge {model} --out MERGED, "
            f"then vlm-swap export MERGED --format {fmt}"
        )
    model_dir = Path(resolve_source(str(model)))
    model_type = read_json(model_dir / "config.json").get("model_type")
    if model_type != "swap_vlm":
        raise VlmSwapError(f"{model} is a {model_type!r} model, not a vlm-swap upgraded model (swap_vlm)")
    checked_weight_files(model_dir)  # every shard whole before one is renamed or copied, as upgrade checks them
    with atomic_dir(out, force=force, inputs=(model, model_dir)) as tmp:
        facts = FORMATS[fmt](model_dir, tmp)
        provenance = {**read_provenance(model_dir), "export": {"format": fmt, "from": str(model_dir)}}
        write_model_extras(tmp, provenance=provenance)
        write_model_card(tmp, base=model_dir, export={"format": fmt, **facts})
    return out
