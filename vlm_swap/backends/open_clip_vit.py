"""``open-clip`` at upgrade time: an OpenCLIP checkpoint's visual tower read into the format's
``OpenCLIPEncoder`` (which rebuilds it offline from its open_clip model config).

A source is a directory in the open_clip hub layout: ``open_clip_config.json`` (``model_cfg``,
``preprocess_cfg``) and ``open_clip_model.safetensors`` (pickle weights only with ``allow_pickle``, read
``weights_only``); only the ``visual.*`` weights are read (at upgrade, not even those: ``stream_visual`` maps
them to byte ranges of the file). The image processor is a ``CLIPImageProcessor`` set up from the preprocess
config (size, mean, std, interpolation, resize mode). Native ViT towers and timm ViT trunks are supported;
open_clip is imported only when an open-clip encoder is used.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPImageProcessor

from ..checkpoints.atomic import read_json
from ..checkpoints.resolve import ALLOW_PICKLE_HINT, PICKLE_SUFFIXES
from ..checkpoints.safe import open_weights
from ..errors import VlmSwapError, first_line
from ..format.open_clip_vit import OpenCLIPEncoder, build_visual
from .base import EncoderBackend, LoadedEncoder, LoadOptions
from .eval_transform import clip_processor
from .streaming import matched, meta_module, prefixed

CONFIG_NAME, WEIGHTS_NAME = "open_clip_config.json", "open_clip_model.safetensors"


def tower_geometry(visual: torch.nn.Module) -> tuple[list[int], list[int]]:
    """(input size [h, w], pixels per token [sh, sw]) of a ViT tower; refuses towers without patch tokens."""
    from open_clip.timm_model import TimmModel
    from open_clip.transformer import VisionTransformer

    if isinstance(visual, VisionTransformer):
        return list(visual.image_size), list(visual.patch_size)
    if isinstance(visual, TimmModel) and hasattr(getattr(visual.trunk, "patch_embed", None), "grid_size"):
        (h, w), (gh, gw) = visual.trunk.patch_embed.img_size, visual.trunk.patch_embed.grid_size
        return [h, w], [h // gh, w // gw]
    raise VlmSwapError(f"open-clip supports ViT towers, not {type(visual).__name__} (no patch tokens)")


def image_processor(preprocess_cfg: dict[str, Any], size: list[int]) -> CLIPImageProcessor:
    """open_clip's eval transform (merged preprocess config, tower input size) as a transformers processor."""
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    pp = merge_preprocess_dict(PreprocessCfg(), preprocess_cfg)
    h, w = size
    if pp["resize_mode"] == "shortest":  # shorter side to the input size, then center crop (exact for square)
        resize, crop = {"shortest_edge": min(h, w)}, True
    elif pp["resize_mode"] == "squash":  # both sides to the input size
        resize, crop = {"height": h, "width": w}, False
    else:
        raise VlmSwapError(f"open_clip resize_mode {pp['resize_mode']!r} is not supported (shortest, squash)")
    return clip_processor("open_clip", resize, (h, w), crop, pp["interpolation"], pp["mean"], pp["std"])


def read_visual_weights(weights: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The ``visual.*`` tensors of an open_clip weight file, prefix removed (the text tower is not read)."""
    with open_weights(weights, allow_pickle=allow_pickle) as st:
        return {k.removeprefix("visual."): st.get_tensor(k) for k in st.keys() if k.startswith("visual.")}


@contextlib.contextmanager
def _building(source: str):
    """Errors of open_clip while building the tower or loading its weights, as one line naming ``source``."""
    try:
        yield
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        first = first_line(exc)
        raise VlmSwapError(f"cannot build the open_clip visual tower of {source}: {first}") from exc


def _check_keys(weights: Path, missing: list[str], unexpected: list[str]) -> None:
    if missing or unexpected:
        raise VlmSwapError(
            f"{weights.name} does not match model_cfg.vision_cfg: {len(missing)} missing, "
            f"{len(unexpected)} unexpected visual weights (first: {(missing + unexpected)[0]})"
        )


def load_visual(
    model_cfg: dict[str, Any], weights: Path, source: str, dtype: torch.dtype | None, allow_pickle: bool
) -> torch.nn.Module:
    """The visual tower with the ``visual.*`` weights of ``weights`` loaded, in ``dtype`` (else the file's)."""
    with _building(source):
        visual = build_visual(model_cfg)
        state = read_visual_weights(weights, allow_pickle)
        missing, unexpected = visual.load_state_dict(state, strict=False)
    _check_keys(weights, missing, unexpected)
    floats = [t.dtype for t in state.values() if t.is_floating_point()]
    return visual.to(dtype or (floats[0] if floats else torch.float32)).eval()


def stream_visual(model_cfg: dict[str, Any], weights: Path, source: str):
    """(the visual tower on the meta device, its state dict as tensors of the safetensors file ``weights``), the
    keys checked as ``load_visual`` checks them; None when loading would cast a tensor to another kind of dtype."""
    from ..checkpoints.tensors import safetensors_tensors

    with _building(source):
        visual = meta_module(lambda: build_visual(model_cfg))
    tensors = safetensors_tensors(weights)
    state = {k.removeprefix("visual."): t for k, t in tensors.items() if k.startswith("visual.")}
    expected = visual.state_dict()
    _check_keys(weights, [k for k in expected if k not in state], [k for k in state if k not in expected])
    found = matched(visual, state, source)
    return None if found is None else (visual, found)


class OpenCLIPBackend(EncoderBackend):
    runtime = OpenCLIPEncoder
    help = "OpenCLIP visual tower from an open_clip hub dir (feature layer, CLS dropped)"
    marker_file = CONFIG_NAME

    @classmethod
    def load(cls, source: str, options: LoadOptions = LoadOptions()) -> LoadedEncoder:
        path = Path(source)
        if not (path / CONFIG_NAME).is_file():
            raise VlmSwapError(f"no {CONFIG_NAME} in {source}: not an open_clip checkpoint")
        cfg = read_json(path / CONFIG_NAME)
        model_cfg = cfg.get("model_cfg", cfg)
        if not isinstance(model_cfg.get("vision_cfg"), dict) or "embed_dim" not in model_cfg:
            raise VlmSwapError(f"{path / CONFIG_NAME} has no model_cfg with embed_dim and vision_cfg")
        weights = weights_file(path, options.allow_pickle)
        stream = options.stream and weights.suffix == ".safetensors"
        streamed = stream_visual(model_cfg, weights, source) if stream else None
        visual, state = streamed or (load_visual(model_cfg, weights, source, options.dtype, options.allow_pickle), None)
        size, stride = tower_geometry(visual)
        tower_cfg = {k: model_cfg[k] for k in ("embed_dim", "quick_gelu", "vision_cfg") if k in model_cfg}
        args = {"model_cfg": tower_cfg, "feature_layer": -2, "stride": stride}
        module = OpenCLIPEncoder(None, args, model=visual)
        processor = image_processor(cfg.get("preprocess_cfg") or {}, size)
        info = {"model_type": "open_clip", "vision": model_cfg["vision_cfg"].get("timm_model_name") or "vit"}
        return LoadedEncoder(module, None, processor, info, prefixed("model.", state))


def weights_file(path: Path, allow_pickle: bool) -> Path:
    """``open_clip_model.safetensors``, else (with ``allow_pickle``) the directory's pickle weights."""
    weights = path / WEIGHTS_NAME
    if weights.is_file():
        return weights
    found = sorted(p for p in path.iterdir() if p.suffix in (*PICKLE_SUFFIXES, ".safetensors"))
    pickles = [p for p in found if p.suffix in PICKLE_SUFFIXES]
    if not (pickles and allow_pickle):
        hint = f"; {ALLOW_PICKLE_HINT}" if pickles else ""
        names = [p.name for p in found] or "no weights"
        raise VlmSwapError(f"no {WEIGHTS_NAME} in {path} (found: {names}); only safetensors load{hint}")
    return pickles[0]
