"""The HF Trainer wiring: one Trainer per stage, per-component learning rates, checkpoints, resume.

Everything a training loop does (accumulation, mixed precision, checkpoints with optimizer,
scheduler and RNG state, logging via ``report_to``, DDP / FSDP / DeepSpeed through
accelerate/torchrun) is the HF Trainer's; this module only maps a recipe stage onto
``TrainingArguments`` and gives the optimizer one parameter group per component.
"""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import time
from pathlib import Path

import torch
from torch.distributed.fsdp import FSDPModule
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..data import EpochSampler
from ..errors import VlmSwapError
from ..format.compat import (
    checkpoints_written_under,
    keep_fsdp_on_cpu,
    rotate_checkpoints,
    tensor_norms,
    trainer_output_dir,
)
from ..registry import did_you_mean
from .distributed import agree, local
from .features import FeatureCache
from .lockstep import DummyImage
from .plan import component_of
from .recipe import COMPONENTS, Stage
from .telemetry import Throughput

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
SCHEDULER_NAMES = {"cosine": "cosine", "wsd": "warmup_stable_decay", "linear": "linear", "constant": "constant"}


def report_to_list(report_to: str | list[str]) -> list[str]:
    """The Trainer loggers named by ``--report-to`` (comma-separated; ``none``, ``all``), each known to the
    Trainer and installed, else a one-line error (checked before a run directory is written)."""
    from transformers.integrations import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations

    names = [n.strip() for n in report_to.split(",")] if isinstance(report_to, str) else list(report_to)
    if names in (["none"], ["all"]):
        return names
    installed = get_available_reporting_integrations()
    for name in names:
        if name not in INTEGRATION_TO_CALLBACK:
            known = ", ".join(["none", "all", *INTEGRATION_TO_CALLBACK])
            raise VlmSwapError(
                f"--report-to: unknown logger {name!r}{did_you_mean(name, INTEGRATION_TO_CALLBACK)} (known: {known})"
            )
        if name not in installed:
            raise VlmSwapError(f"--report-to {name}: the {name} package is not installed")
    return names


def training_arguments(
    stage: Stage, stage_dir: Path, *, report_to: str | list[str], workers: int = 0
) -> TrainingArguments:
    on_gpu = torch.cuda.is_available()
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"  # set by accelerate launch
    return TrainingArguments(
        output_dir=str(stage_dir),
        max_steps=stage.steps if stage.steps is not None else -1,
        num_train_epochs=stage.epochs if stage.epochs is not None else 1.0,
        per_device_train_batch_size=stage.batch_size,
        per_device_eval_batch_size=stage.batch_size,
        gradient_accumulation_steps=stage.grad_accum,
        learning_rate=stage.lr,
        lr_scheduler_type=SCHEDULER_NAMES[stage.scheduler],
        warmup_steps=stage.warmup_ratio,
        weight_decay=stage.weight_decay,
        adam_beta1=stage.adam_beta1,
        adam_beta2=stage.adam_beta2,
        optim="adamw_torch",
        bf16=on_gpu and stage.precision == "bf16",
        fp16=on_gpu and stage.precision == "fp16",
        activation_checkpointing=stage.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if stage.gradient_checkpointing else None,
        save_strategy="steps",
        save_steps=stage.save_steps,
        save_total_limit=stage.save_total_limit,
        eval_strategy="no",  # a stage trains only; runs are scored afterwards (eval, compare)
        logging_steps=stage.logging_steps,
        logging_first_step=True,
        seed=stage.seed,
        data_seed=stage.seed,
        report_to=report_to,
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=workers,
        dataloader_persistent_workers=workers > 0,  # forked once per stage, not once per epoch
        dataloader_prefetch_factor=4 if workers > 0 else None,
        dataloader_pin_memory=on_gpu,
        include_num_input_tokens_seen="non_padding",
        # DeepSpeed on CPU processes (its CPU accelerator, gloo): accelerate enables it only without use_cpu
        use_cpu=not on_gpu and not deepspeed,
        ddp_backend="gloo" if deepspeed and not on_gpu else None,
        ddp_find_unused_parameters=False,
    )


class NonFiniteError(VlmSwapError):
    """Training met more non-finite losses/gradients than the stage allows, or a non-finite state to save."""


def all_finite(tensors: list[torch.Tensor], device: torch.device) -> bool:
    """Every element of every tensor finite, on every rank (each checks its own shards, then all agree)."""
    parts = [t for t in map(local, tensors) if t.numel()]
    finite = not parts or bool(torch.stack(tensor_norms(parts)).isfinite().all())
    return agree(finite, parts[0].device if parts else device)


def trainable_finite(model: torch.nn.Module) -> bool:
    params = [p.detach() for p in model.parameters() if p.requires_grad]
    return all_finite(params, next(model.parameters()).device)


class SwapTrainer(Trainer):
    """The HF Trainer with one optimizer parameter group per component (its own lr), decay-aware,
    and a numerical guard: a step whose gradients are not finite is skipped (no update, moments
    untouched); after ``stage.max_bad_steps`` of them training stops; a non-finite model is never
    saved. Optionally it reuses a frozen encoder's features (``feature_cache``) and batches samples
    of similar length (``stage.group_by_length``); samples come in the order of ``data.EpochSampler``."""

    def __init__(
        self,
        *args,
        stage: Stage,
        feature_cache: FeatureCache | None = None,
        dummy_image: DummyImage | None = None,
        **kwargs,
    ):
        self.stage = stage
        self.bad_steps = 0
        self.undecodable = 0  # samples that passed the index but failed to decode (skipped)
        self.feature_cache = feature_cache
        self.dummy_image = dummy_image
        super().__init__(*args, **kwargs)
        self.throughput = Throughput(self.model, self.args.world_size)
        self._measuring = False

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        if keep_fsdp_on_cpu(self.accelerator):  # accelerate alone would run an FSDP config as DDP on CPU
            self.is_fsdp_enabled = True
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None)
        if plugin is not None and isinstance(self.model, FSDPModule):
            # a later stage: the model was sharded by the first stage's Trainer, whose layer classes fully_shard
            # renamed (FSDPQwen3DecoderLayer); accelerate would look the wrap policy's classes up by name and fail
            plugin.auto_wrap_policy = None

    def release(self) -> None:
        """Detach what this stage's wrapper hooked onto the shared model: the next stage builds a new Trainer on it,
        and a DeepSpeed engine left in place would keep reducing (and partitioning) its gradients."""
        self.throughput.close()
        # accelerate's own release between two trainings destroys the DeepSpeed engine and drops its references
        # to the stage's DataLoader; the callbacks hold the other one. The collection below then finalizes the
        # DataLoader here: left to a later collection, its finalizer could run in a worker forked by the next stage
        # or run, where it fails ("can only test a child process"), and this stage's persistent workers would live on.
        self.accelerator.free_memory()
        self.callback_handler.train_dataloader = None
        gc.collect()

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The Trainer's fetch of one optimizer step's micro-batches, timed (the data-wait fraction)."""
        if not self._measuring:  # the first fetch: after the model is wrapped and a checkpoint restored
            self.throughput.begin(self.state.num_input_tokens_seen)
            self._measuring = True
        start = time.perf_counter()
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        self.throughput.fetched(time.perf_counter() - start, batches)
        return batches, num_items

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and self._measuring:  # a training interval: add its throughput to every logger
            logs = {**logs, **self.throughput.figures(self.state.num_input_tokens_seen)}
        super().log(logs, *args, **kwargs)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """WSD's decay is a share of the stage's optimizer steps, known here whether the stage gives steps or
        epochs (the Trainer derives them from the data, the batch and the number of processes)."""
        if self.stage.scheduler == "wsd":
            self.args.lr_scheduler_kwargs = {
                "num_decay_steps": max(1, int(self.stage.decay_ratio * num_training_steps))
            }
        return super().create_scheduler(num_training_steps, optimizer)

    def compute_loss(self, model, inputs, *args, **kwargs):
        self.undecodable += len(inputs.pop("skipped_lines", ()))
        keys = inputs.pop("feature_keys", None)
        if self.dummy_image is not None and self.dummy_image.needed(inputs):  # every rank runs the encoder
            inputs, keys = self.dummy_image.add(inputs, keys)
        if keys is None or self.feature_cache is None:
            return super().compute_loss(model, inputs, *args, **kwargs)
        return self.feature_cache.run(
            keys, inputs, lambda batch: super(SwapTrainer, self).compute_loss(model, batch, *args, **kwargs)
        )

    def _get_train_sampler(self, train_dataset=None):
        # (the Trainer's private hook, as _save_checkpoint below: both pinned by tests/test_compat.py)
        # the order comes from (seed, epoch) alone: a resumed run skips finished steps in the sampler and sees
        # the batches an uninterrupted run would; lengths come from the index (nothing is encoded for them)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        lengths = getattr(dataset, "lengths", None)
        grouped = self.stage.group_by_length and not self.stage.packing and lengths is not None
        group = self.args.train_batch_size * self.args.gradient_accumulation_steps if grouped else 0
        return EpochSampler(len(dataset), self.args.data_seed, lengths=lengths if grouped else None, group=group)

    def _guard(self, optimizer: torch.optim.Optimizer) -> None:
        inner = optimizer.step

        def step(*args, **kwargs):
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            if all_finite(grads, self.args.device):  # sharded gradients: every rank must skip the same steps
                return inner(*args, **kwargs)
            self.bad_steps += 1
            optimizer.zero_grad(set_to_none=True)
            if self.bad_steps >= self.stage.max_bad_steps:
                last = newest_checkpoint(Path(self.args.output_dir))
                raise NonFiniteError(
                    f"stage {self.stage.name!r} stopped at step {self.state.global_step + 1}: {self.bad_steps} steps "
                    f"with a non-finite loss or gradient (max_bad_steps={self.stage.max_bad_steps}); "
                    f"last good checkpoint: {last or 'none'}"
                )
            return None

        optimizer.step = step

    def _save_checkpoint(self, model, trial):
        """Refuse a non-finite state; write the checkpoint in a hidden sibling and rename it once complete.

        Every process writes its part (weights, optimizer, RNG states) into ``.checkpoint-N.tmp``; rank 0
        renames it to ``checkpoint-N`` after all have, so a kill leaves whole checkpoints and at most a
        hidden temporary, which ``newest_checkpoint`` ignores and the next save of that step replaces.
        """
        if not trainable_finite(self.model):
            raise NonFiniteError(f"refusing to save a checkpoint of stage {self.stage.name!r} from a non-finite state")
        run_dir = trainer_output_dir(self, trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = run_dir / f".{name}.tmp"
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        with checkpoints_written_under(self, staging):
            super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            final = run_dir / name
            if final.exists():
                shutil.rmtree(final)
            os.rename(staging / name, final)
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups = []
        for comp in COMPONENTS:
            lr = self.stage.plan(comp).lr or self.stage.lr
            for with_decay in (True, False):
                params = [
                    p
                    for n, p in opt_model.named_parameters()
                    if p.requires_grad and component_of(n) == comp and (n in decay) == with_decay
                ]
                if params:
                    wd = self.args.weight_decay if with_decay else 0.0
                    groups.append({"params": params, "lr": lr, "weight_decay": wd, "name": f"{comp}"})
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        self._guard(self.optimizer)
        return self.optimizer


def newest_checkpoint(stage_dir: Path) -> Path | None:
    """The newest checkpoint of a stage that was written completely.

    The HF Trainer writes weights, optimizer, scheduler and RNG state first and
    ``trainer_state.json`` last, so a checkpoint killed mid-write lacks a readable state file. The
    optimizer state is ``optimizer.pt`` (one process, DDP), ``optimizer_0/`` or ``optimizer.bin``
    (FSDP sharded / full state) or a DeepSpeed ``latest`` tag with its ``global_step*`` folder.
    """
    if not stage_dir.is_dir():
        return None
    found = []
    for p in stage_dir.iterdir():
        m = CHECKPOINT.match(p.name)
        if not (m and p.is_dir() and _has_optimizer_state(p) and (p / "scheduler.pt").is_file()):
            continue
        if not any(p.glob("rng_state*.pth")):
            continue
        try:
            json.loads((p / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


def _has_optimizer_state(checkpoint: Path) -> bool:
    if (checkpoint / "optimizer.pt").is_file() or (checkpoint / "optimizer.bin").is_file():
        return True
    if (checkpoint / "optimizer_0").is_dir():
        return True
    tag = checkpoint / "latest"
    return tag.is_file() and (checkpoint / tag.read_text().strip()).is_dir()
