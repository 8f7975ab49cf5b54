"""``--format remote-code``: the upgraded model with its run-time code beside it (``trust_remote_code``).

The code is the model format's own files (``vlm_swap/format/*.py``, its package ``__init__`` aside), copied as
they are: they import nothing of vlm_swap and each other only as flat siblings, which transformers' dynamic-module
loader copies along. Every encoder kind's run-time file ships; a kind's library (timm, open_clip) is imported
only when a model of that kind is built. ``config.json`` and ``processor_config.json`` get an ``auto_map``;
weights, tokenizer and processor files are copied.
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoints.atomic import copy_file, read_json, write_json
from ..errors import VlmSwapError
from ..format.kinds import BUILT_IN_KINDS

FORMAT_DIR = Path(__file__).resolve().parent.parent / "format"
AUTO_MAP = {
    "AutoConfig": "configuration_swap_vlm.SwapVLMConfig",
    "AutoModel": "modeling_swap_vlm.SwapVLMForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_swap_vlm.SwapVLMForConditionalGeneration",
}
PROCESSOR_AUTO_MAP = {"AutoProcessor": "processing_swap_vlm.SwapVLMProcessor"}
SKIP_FILES = {"README.md"}


def code_files() -> list[Path]:
    """The files a remote-code export ships: every module of the format but its package ``__init__``."""
    return sorted(p for p in FORMAT_DIR.glob("*.py") if p.name != "__init__.py")


def export_remote_code(model_dir: Path, tmp: Path) -> dict:
    """Copy ``model_dir`` into ``tmp`` with its code and ``auto_map`` entries; return card facts."""
    config = read_json(model_dir / "config.json")
    kind = config.get("encoder_kind")
    if kind not in BUILT_IN_KINDS:
        raise VlmSwapError(
            f"encoder kind {kind!r} comes from a plug-in; remote-code export ships vlm-swap's own encoder kinds only "
            f"({', '.join(BUILT_IN_KINDS)})"
        )
    for path in sorted(model_dir.iterdir()):
        if path.is_file() and path.name not in SKIP_FILES and path.suffix != ".py":
            copy_file(path, tmp / path.name)
    files = code_files()
    for path in files:
        copy_file(path, tmp / path.name)
    write_json(tmp / "config.json", {**config, "auto_map": AUTO_MAP})
    processor_config = tmp / "processor_config.json"
    if not processor_config.is_file():
        raise VlmSwapError(f"{model_dir} has no processor_config.json; it is not a complete upgraded model")
    write_json(processor_config, {**read_json(processor_config), "auto_map": PROCESSOR_AUTO_MAP})
    return {"architecture": "SwapVLMForConditionalGeneration (remote code)", "code_files": [p.name for p in files]}
