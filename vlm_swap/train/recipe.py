"""Recipe schema: YAML mapped 1:1 onto dataclasses, validated before any model is loaded.

A recipe is a list of stages. Each stage gives, per component (encoder, connector, llm), a tune
mode (``frozen | full | lora``) and a learning rate, plus the optimisation settings. Unknown
keys, wrong types and values out of range are errors naming the key path (``stages[1].llm.lora.r``). ``--set
key.path=value`` overrides any field (``stages.1.steps=100`` or ``stages.align.lr=2e-4``), with
the value parsed as YAML and type-checked like the file.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import VlmSwapError
from ..surgery.layouts import data_dir

MODES = ("frozen", "full", "lora")
SCHEDULERS = ("cosine", "wsd", "linear", "constant")
PRECISIONS = ("bf16", "fp16", "fp32")
COMPONENTS = ("encoder", "connector", "llm")
STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_SEED = 2**32 - 1  # the Trainer seeds numpy too (np.random.seed takes [0, 2**32 - 1])
INT64 = 2**63  # ints are handed to torch: refused at load time when they cannot fit


class RecipeError(VlmSwapError):
    """A recipe that does not validate; the message names the key path."""


def _help(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING):
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class LoraSpec:
    r: int = _help("LoRA rank", 32)
    alpha: int = _help("LoRA alpha (scaling = alpha / r)", 32)
    dropout: float = _help("dropout on the LoRA input", 0.0)
    target_modules: list[str] = _help(
        "module names (last path component) inside the component that get LoRA",
        factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )

    def __post_init__(self):
        if self.r <= 0 or self.alpha <= 0:
            raise RecipeError("lora.r and lora.alpha must be positive")
        if not 0 <= self.dropout < 1:
            raise RecipeError("lora.dropout must be in [0, 1)")
        if not self.target_modules or not all(self.target_modules):
            raise RecipeError("lora.target_modules must be a non-empty list of module names")


@dataclass
class ComponentPlan:
    mode: str = _help("frozen | full | lora", "frozen")
    lr: float | None = _help("learning rate of this component (default: the stage's lr)", None)
    lora: LoraSpec = _help("LoRA settings, used when mode is lora", factory=LoraSpec)

    def __post_init__(self):
        if self.mode not in MODES:
            raise RecipeError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.lr is not None and self.lr <= 0:
            raise RecipeError("lr must be positive")


@dataclass
class Stage:
    name: str = _help("stage name, used for its output folder", "stage")
    encoder: ComponentPlan = _help("encoder (perceiver or ViT) plan", factory=ComponentPlan)
    connector: ComponentPlan = _help("connector plan", factory=lambda: ComponentPlan(mode="full"))
    llm: ComponentPlan = _help("LLM plan", factory=ComponentPlan)
    lr: float = _help("base learning rate", 1e-3)
    steps: int | None = _help("optimizer steps (exclusive with epochs)", None)
    epochs: float | None = _help("passes over the data (exclusive with steps)", None)
    batch_size: int = _help("samples per device per micro-batch", 8)
    grad_accum: int = _help("micro-batches per optimizer step", 1)
    max_length: int = _help("most tokens per sample, image tokens included", 2048)
    scheduler: str = _help("cosine | wsd (warmup-stable-decay) | linear | constant", "cosine")
    warmup_ratio: float = _help("fraction of steps spent warming up", 0.03)
    decay_ratio: float = _help("wsd: fraction of steps spent decaying", 0.1)
    weight_decay: float = _help("AdamW weight decay (not on biases and norms)", 0.0)
    adam_beta1: float = _help("AdamW beta1", 0.9)
    adam_beta2: float = _help("AdamW beta2", 0.999)
    precision: str = _help("bf16 | fp16 | fp32 (mixed precision on GPU; fp32 on CPU)", "bf16")
    gradient_checkpointing: bool = _help("recompute activations to save memory", False)
    save_steps: int = _help("save a checkpoint every N steps", 500)
    save_total_limit: int | None = _help("keep at most N checkpoints per stage", 3)
    eval_steps: int | None = _help("refused: training evaluates nothing between steps (score a run with eval)", None)
    logging_steps: int = _help("log every N steps", 10)
    seed: int = _help("random seed", 42)
    max_bad_steps: int = _help("steps with a non-finite loss/gradient (skipped) before training stops", 5)
    cache_features: bool = _help("when the encoder is frozen, compute each image's features once and reuse them", True)
    group_by_length: bool = _help("batch samples of similar token length together (less padding)", False)
    packing: bool = _help("pack whole samples into rows of up to max_length tokens (attention stays per sample)", False)

    def __post_init__(self):
        """Every field's range, so that the optimizer, the scheduler and the RNG never refuse a value mid-run."""
        if not STAGE_NAME.fullmatch(self.name):
            raise RecipeError(
                f"stage name {_show(self.name)} must be letters, digits, '.', '_' or '-' (it names a folder)"
            )
        if (self.steps is None) == (self.epochs is None):
            raise RecipeError("give exactly one of steps or epochs")
        if self.steps is not None and self.steps <= 0 or self.epochs is not None and self.epochs <= 0:
            raise RecipeError("steps/epochs must be positive")
        for name in ("batch_size", "grad_accum", "max_length", "save_steps", "logging_steps", "max_bad_steps"):
            if getattr(self, name) <= 0:
                raise RecipeError(f"{name} must be positive")
        for name in ("save_total_limit", "eval_steps"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise RecipeError(f"{name} must be positive, or null for no limit")
        if self.eval_steps is not None:  # a range error first, as for every numeric field
            raise RecipeError(
                "eval_steps: training evaluates nothing between steps; leave it unset and score the run with "
                "`vlm-swap eval` (or compare arms with `vlm-swap compare`)"
            )
        if self.lr <= 0:
            raise RecipeError("lr must be positive")
        if self.scheduler not in SCHEDULERS:
            raise RecipeError(f"scheduler must be one of {', '.join(SCHEDULERS)}, not {self.scheduler!r}")
        if self.precision not in PRECISIONS:
            raise RecipeError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if not 0 <= self.warmup_ratio < 1 or not 0 <= self.decay_ratio <= 1:
            raise RecipeError("warmup_ratio must be in [0, 1) and decay_ratio in [0, 1]")
        if self.scheduler == "wsd" and self.warmup_ratio + self.decay_ratio > 1:
            raise RecipeError("wsd: warmup_ratio + decay_ratio must be at most 1")
        if self.weight_decay < 0:
            raise RecipeError("weight_decay must be >= 0")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1):
            raise RecipeError("adam_beta1 and adam_beta2 must be in [0, 1)")
        if not 0 <= self.seed <= MAX_SEED:
            raise RecipeError(f"seed must be in [0, {MAX_SEED}] (the seeds numpy's RNG takes), not {self.seed}")
        if all(getattr(self, c).mode == "frozen" for c in COMPONENTS):
            raise RecipeError("every component is frozen: nothing to train")

    def plan(self, component: str) -> ComponentPlan:
        return getattr(self, component)

    def summary(self) -> str:
        """``name(connector:full, llm:lora)``: the components this stage trains."""
        trained = ", ".join(f"{c}:{self.plan(c).mode}" for c in COMPONENTS if self.plan(c).mode != "frozen")
        return f"{self.name}({trained})"


@dataclass
class Recipe:
    name: str = _help("recipe name", "recipe")
    description: str = _help("what the recipe is for", "")
    stages: list[Stage] = _help("the stages, run in order", factory=list)
    feature_cache_mb: int = _help("memory bound of the frozen-encoder feature cache, in MiB (shared by stages)", 4096)
    dataloader_workers: int | None = _help(
        "processes that decode and preprocess samples (default: cores - 1, at most 8)", None
    )

    def __post_init__(self):
        if not self.stages:
            raise RecipeError("a recipe needs at least one stage")
        if self.feature_cache_mb < 0:
            raise RecipeError("feature_cache_mb must be >= 0")
        if self.dataloader_workers is not None and not 0 <= self.dataloader_workers <= 256:
            raise RecipeError("dataloader_workers must be in [0, 256] (or null for the default)")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise RecipeError(f"stage names must be unique, got {names}")


# ---- YAML <-> dataclasses ---------------------------------------------------------------------


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, path)
            except RecipeError as exc:
                errors.append(str(exc))
        raise RecipeError(errors[0])
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{path}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if tp is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:  # YAML 1.1 reads "1e-3" as a string
            number = float(value)
        except ValueError:
            number = None
        if number is not None and not math.isfinite(number):
            raise RecipeError(f"{path}: expected a finite number, got {value!r}")
        if number is not None:
            return number
    if tp is int and type(value) is int and not -INT64 <= value < INT64:
        raise RecipeError(f"{path}: {value} is out of range (a 64-bit integer)")
    if tp in (int, str, bool) and type(value) is tp:
        return value
    raise RecipeError(f"{path}: expected {tp.__name__}, got {type(value).__name__} {value!r}")


def from_dict(cls, data: Any, path: str = "recipe"):
    """Build dataclass ``cls`` from ``data``, refusing unknown keys and wrong types by key path."""
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(map(_show, set(data) - names))
    if unknown:
        raise RecipeError(f"{path}.{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {k: _convert(hints[k], v, f"{path}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except RecipeError as exc:
        raise RecipeError(f"{path}: {exc}") from None


def _show(key: Any) -> str:
    """A key as written, or its repr when it holds characters that would break a one-line error."""
    return str(key) if str(key).isprintable() else repr(key)


def _apply_override(data: dict, override: str) -> None:
    key, sep, raw = override.partition("=")
    shown = _show(key)
    if not sep or not key:
        raise RecipeError(f"--set {override!r}: expected key.path=value")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as exc:
        raise RecipeError(f"--set {shown}: the value is not valid YAML: {str(exc).splitlines()[0]}") from exc
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            idx = next((j for j, s in enumerate(node) if isinstance(s, dict) and s.get("name") == part), None)
            if idx is None and part.isdigit() and int(part) < len(node):
                idx = int(part)
            if idx is None:
                raise RecipeError(f"--set {shown}: no stage {part!r} (stages: {[s.get('name') for s in node]})")
            if last:
                node[idx] = value
            node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise RecipeError(f"--set {shown}: {where} is not a mapping or list")


def resolve_recipe_path(name_or_path: str) -> Path:
    """A shipped recipe name (``dpa-align-short``) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    shipped = data_dir("recipes") / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return shipped
    known = ", ".join(shipped_recipes())
    raise RecipeError(f"recipe not found: {name_or_path} (shipped: {known})")


def shipped_recipes() -> list[str]:
    return sorted(p.stem for p in data_dir("recipes").glob("*.yaml"))


def load_recipe(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    path = resolve_recipe_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not a text file (a recipe is YAML in UTF-8; byte {exc.start} is not)") from exc
    except OSError as exc:
        raise RecipeError(f"cannot read the recipe {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping with a 'stages' list")
    for override in overrides:
        _apply_override(data, override)
    return from_dict(Recipe, data)


def recipe_to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)
