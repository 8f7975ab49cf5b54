"""The freeze/LoRA plan: which parameters of which component train in a stage, and how.

Tune modes live here, never in model code. When any stage of a recipe uses LoRA, the model is
wrapped once with peft for the whole run: LoRA on the planned modules of the LoRA components,
and ``modules_to_save`` copies of the components that train fully (the connector at least), so
every checkpoint is a standard peft adapter (``adapter_config.json`` +
``adapter_model.safetensors``) that carries the connector too. Stages then only switch
``requires_grad``: a LoRA adapter whose stage keeps its component frozen is the identity
(B = 0 at init) and stays untouched. Without LoRA, parts train in place and runs save full models.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import VlmSwapError
from .distributed import numel
from .recipe import COMPONENTS, LoraSpec, Recipe, Stage

#: component -> attribute of SwapVLMForConditionalGeneration
MODULE_OF = {"encoder": "encoder", "connector": "connector", "llm": "language_model"}


@dataclass(frozen=True)
class RunPlan:
    """What the whole recipe needs from the model wrapper."""

    lora: dict[str, LoraSpec]  # component -> LoRA spec, for components that use LoRA in some stage
    full: tuple[str, ...]  # components trained fully in some stage

    @property
    def uses_peft(self) -> bool:
        return bool(self.lora)


def run_plan(recipe: Recipe) -> RunPlan:
    lora: dict[str, LoraSpec] = {}
    full: list[str] = []
    for stage in recipe.stages:
        for comp in COMPONENTS:
            plan = stage.plan(comp)
            if plan.mode == "lora":
                if comp in lora and lora[comp] != plan.lora:
                    raise VlmSwapError(f"LoRA settings of {comp} differ between stages; use one LoRA per component")
                lora[comp] = plan.lora
            elif plan.mode == "full" and comp not in full:
                full.append(comp)
    if lora and "llm" in full:
        raise VlmSwapError("a recipe cannot train the LLM both fully and with LoRA; pick one")
    return RunPlan(lora, tuple(full))


def component_of(name: str) -> str | None:
    """The component a parameter name belongs to (works on plain and peft-wrapped models)."""
    name = name.removeprefix("base_model.model.")
    head = name.split(".", 1)[0]
    for comp, attr in MODULE_OF.items():
        if head == attr:
            return comp
    return None


def wrap(model: nn.Module, plan: RunPlan, seed: int) -> nn.Module:
    """Wrap with peft when the run uses LoRA; otherwise return the model unchanged.

    LoRA's A matrices are initialised from ``seed`` (the caller's RNG untouched), so a run, and a
    run resumed in a new process, is reproducible.
    """
    if not plan.uses_peft:
        return model
    from peft import LoraConfig, get_peft_model

    patterns, rank, alpha = [], {}, {}
    first = next(iter(plan.lora.values()))
    for comp, spec in plan.lora.items():
        names = "|".join(re.escape(m) for m in spec.target_modules)
        pattern = rf"{MODULE_OF[comp]}\..*\.({names})"
        patterns.append(pattern)
        if spec.r != first.r or spec.alpha != first.alpha:
            rank[pattern], alpha[pattern] = spec.r, spec.alpha
    targets = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and re.fullmatch("|".join(patterns), n)]
    if not targets:
        raise VlmSwapError(f"no module matches the LoRA target_modules ({', '.join(first.target_modules)})")
    config = LoraConfig(
        r=first.r,
        lora_alpha=first.alpha,
        lora_dropout=first.dropout,
        target_modules="|".join(f"(?:{p})" for p in patterns),
        modules_to_save=[MODULE_OF[c] for c in plan.full],
        rank_pattern=rank,
        alpha_pattern=alpha,
        bias="none",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def apply_stage(model: nn.Module, stage: Stage) -> dict[str, int]:
    """Set ``requires_grad`` for ``stage``; return the trainable parameter count per component."""
    counts = dict.fromkeys(COMPONENTS, 0)
    for name, param in model.named_parameters():
        comp = component_of(name)
        mode = stage.plan(comp).mode if comp else "frozen"
        if ".lora_" in name:
            train = mode == "lora"
        elif "modules_to_save" in name or not hasattr(model, "peft_config"):
            train = mode == "full"
        else:  # the frozen original inside a peft wrapper
            train = False
        param.requires_grad_(train)
        if train:
            counts[comp] += numel(param)
    for comp in COMPONENTS:
        if stage.plan(comp).mode != "frozen" and counts[comp] == 0:
            raise VlmSwapError(f"stage {stage.name!r} trains {comp} but no parameter of it is trainable")
    return counts
