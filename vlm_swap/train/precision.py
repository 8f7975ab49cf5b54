"""Where each parameter's dtype comes from during training: fp32 masters for what trains, compute dtype for the rest.

A checkpoint is loaded in the dtype it was stored in (llava-1.5-7b-hf: float16). Updating a 16-bit weight with
a learning rate of 2e-5 .. 2e-4 rounds most updates away, so every parameter that trains in *any* stage of the
recipe (connector, LoRA, a fully trained component) is held in float32 for the whole run, once, before any
wrapper (DDP, FSDP, DeepSpeed) sees the model. Parameters frozen in every stage are held in the recipe's compute
dtype on a GPU (``precision``: bf16 / fp16 / fp32), where the Trainer runs the forward under autocast, and keep
their stored dtype on a CPU, where there is no autocast and nothing to gain from a cast.

Saved results: a LoRA adapter (with the connector in it) is written in float32, the master weights as trained;
a full model is written in the dtype it was stored in, every tensor, so it loads like its source.
"""

from __future__ import annotations

import torch
from torch import nn

from .plan import apply_stage, component_of
from .recipe import COMPONENTS, Recipe

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def compute_dtype(recipe: Recipe, on_gpu: bool) -> torch.dtype | None:
    """The dtype frozen parameters are held in (None: keep the stored one). Stages that differ get the widest."""
    if not on_gpu:
        return None
    wanted = {DTYPES[s.precision] for s in recipe.stages}
    return max(wanted, key=lambda d: torch.finfo(d).bits) if len(wanted) > 1 else wanted.pop()


def trained_anywhere(model: nn.Module, recipe: Recipe) -> set[str]:
    """Names of the parameters that train in at least one stage (``requires_grad`` left as the last stage set it)."""
    names: set[str] = set()
    for stage in recipe.stages:
        apply_stage(model, stage)
        names |= {n for n, p in model.named_parameters() if p.requires_grad}
    return names


def place(model: nn.Module, recipe: Recipe, on_gpu: bool) -> dict[str, torch.dtype]:
    """Cast trained parameters to float32 and frozen ones to the compute dtype; return the stored dtypes by name."""
    stored = {n: p.dtype for n, p in model.named_parameters()}
    trained = trained_anywhere(model, recipe)
    frozen_dtype = compute_dtype(recipe, on_gpu)
    for name, param in model.named_parameters():
        if not param.is_floating_point():
            continue
        dtype = torch.float32 if name in trained else frozen_dtype or param.dtype
        if param.dtype != dtype:
            param.data = param.data.to(dtype)  # in place: tied weights stay one Parameter
    return stored


def component_dtypes(model: nn.Module) -> dict[str, str]:
    """``{component: "trainable float32, frozen bfloat16"}`` for the run facts (the dtypes as held now)."""
    held: dict[str, dict[bool, set[str]]] = {c: {True: set(), False: set()} for c in COMPONENTS}
    for name, param in model.named_parameters():
        comp = component_of(name)
        if comp is not None and param.is_floating_point() and ".original_module." not in name:  # peft's idle copy
            held[comp][param.requires_grad].add(str(param.dtype).removeprefix("torch."))
    out = {}
    for comp, by_grad in held.items():
        parts = [f"{label} {'/'.join(sorted(by_grad[f]))}" for f, label in ((True, "trainable"), (False, "frozen"))]
        out[comp] = ", ".join(p for p, f in zip(parts, (True, False), strict=True) if by_grad[f])
    return out


def for_saving(state: dict[str, torch.Tensor], stored: dict[str, torch.dtype]) -> dict[str, torch.Tensor]:
    """A full model's state in the dtypes it was stored in."""
    return {k: t.to(stored[k]) if k in stored and t.is_floating_point() else t for k, t in state.items()}
