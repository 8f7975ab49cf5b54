"""``vlm-swap train``: run a recipe's stages on an upgraded model, and ``merge`` the result.

A run directory holds the resolved ``recipe.yaml``, one folder per stage with the Trainer's
``checkpoint-N/`` folders and a ``final/`` folder written atomically when the stage ends, and at
the root the result: a peft adapter (``adapter_config.json`` + ``adapter_model.safetensors``,
connector included) when the recipe uses LoRA, else a full model; plus ``run.json`` and
``loss.png``. ``--resume`` skips finished stages and continues the current one from its newest
complete checkpoint (optimizer, scheduler, RNG and data position included). One process owns the
run directory for the whole run (``lock.own_run_dir``), from before it is checked.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file
from transformers.trainer_callback import PrinterCallback

from ..api import ADAPTER_CONFIG
from ..card import write_model_card
from ..checkpoints.atomic import atomic_dir, write_figure, write_json, write_text
from ..checkpoints.guards import RUN_SUMMARY_NAME, check_output_dir
from ..checkpoints.model_files import read_provenance, save_model, write_model_extras
from ..checkpoints.resolve import checked_weight_files
from ..data import Collator, SampleEncoder, SwapDataset, load_dataset
from ..data.index import index_progress
from ..data.loader import default_workers
from ..data.packing import varlen_attention
from ..errors import VlmSwapError
from ..format.compat import loaded_from
from ..llms import LLMS
from . import precision
from .distributed import state_to_save
from .engine import (
    NonFiniteError,
    SwapTrainer,
    newest_checkpoint,
    report_to_list,
    trainable_finite,
    training_arguments,
)
from .features import FeatureCache
from .lock import LOCK_NAME, own_run_dir
from .lockstep import DummyImage
from .plan import apply_stage, run_plan, wrap
from .progress import RichProgress, training_progress
from .recipe import Recipe, load_recipe, recipe_to_dict
from .telemetry import facts_line, stage_facts

RECIPE_NAME = "recipe.yaml"


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _stage_dir(run: Path, index: int, recipe: Recipe) -> Path:
    return run / f"stage-{index + 1}-{recipe.stages[index].name}"


def _check_run_dir(run: Path, recipe: Recipe, resume: bool) -> None:
    stored = run / RECIPE_NAME
    if resume:
        if not stored.is_file():
            raise VlmSwapError(f"nothing to resume in {run}: no {RECIPE_NAME}")
        try:
            started = yaml.safe_load(stored.read_text())
        except yaml.YAMLError as exc:
            raise VlmSwapError(f"{stored} is not valid YAML; the run in {run} cannot be resumed") from exc
        if started != recipe_to_dict(recipe):
            raise VlmSwapError(f"the recipe differs from the one the run in {run} started with ({stored})")
    elif run.exists() and any(p.name != LOCK_NAME for p in run.iterdir()):
        raise VlmSwapError(f"run directory {run} is not empty; pass --resume to continue it or choose another --out")


def _empty_think(model_dir: Path) -> str | None:
    family = read_provenance(model_dir).get("llm_family")
    return LLMS.get(family).empty_think if family in LLMS else None


def train(
    recipe: str,
    model_dir: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    images: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    resume: bool = False,
    on_bad_rows: str = "fail",
    max_images: int = 1,
    report_to: str = "none",
    progress: bool = True,
    console=None,
    allow_pickle: bool = False,
    allow_absolute_paths: bool = False,
    callbacks: list | tuple = (),
) -> Path:
    """Run ``recipe`` on the upgraded model in ``model_dir``; return the run directory.

    ``allow_pickle`` lets the model be read from pickle weights (``weights_only``); optimizer, scheduler
    and RNG states of a resumed checkpoint are always read ``weights_only`` by the Trainer.
    ``callbacks`` are extra ``transformers.TrainerCallback`` objects given to every stage's Trainer.
    ``allow_absolute_paths`` lets image paths of the data resolve outside ``images``.
    """
    spec = load_recipe(recipe, overrides)  # validated before any model is loaded
    report_to = report_to_list(report_to)  # and before a run directory is written
    run = Path(out).expanduser().absolute()
    with own_run_dir(
        run,
        inputs=(model_dir, data),  # a run may lie inside its images folder
        check=lambda: _check_run_dir(run, spec, resume),
        join=lambda: training_arguments(spec.stages[0], run, report_to=report_to).device,
    ):
        return _train(
            spec, run, model_dir, data, images=images, resume=resume, on_bad_rows=on_bad_rows,
            max_images=max_images, report_to=report_to, progress=progress, console=console,
            allow_pickle=allow_pickle, callbacks=callbacks, allow_absolute_paths=allow_absolute_paths,
        )  # fmt: skip


def _train(spec: Recipe, run: Path, model_dir, data, *, images, resume, on_bad_rows, max_images, report_to,
           progress, console, allow_pickle, callbacks, allow_absolute_paths) -> Path:  # fmt: skip
    """``train`` once the run directory is owned (``own_run_dir``); the arguments are ``train``'s."""
    from ..api import load

    model, processor = load(model_dir, allow_pickle=allow_pickle)
    model_path = loaded_from(model)
    # validated at the shortest stage length, so every kept sample fits every stage (each stage then
    # truncates text, never image tokens, at its own max_length)
    encoder = SampleEncoder(processor, min(s.max_length for s in spec.stages), _empty_think(model_path))
    show = progress and _rank() == 0
    with index_progress(console) if show else contextlib.nullcontext() as bar:
        samples, report = load_dataset(
            data, images, encoder, max_images=max_images, on_bad_rows=on_bad_rows,
            allow_absolute_paths=allow_absolute_paths, progress=bar,
        )  # fmt: skip
    if console is not None and _rank() == 0:
        console.print(f"data: {report.summary()}")
    plan = run_plan(spec)
    model = wrap(model, plan, seed=spec.stages[0].seed)
    stored = precision.place(model, spec, on_gpu=torch.cuda.is_available())  # before any DDP/FSDP/ZeRO wrapper
    if _rank() == 0:
        run.mkdir(parents=True, exist_ok=True)
        write_text(run / RECIPE_NAME, yaml.safe_dump(recipe_to_dict(spec), sort_keys=False))
    dataset = SwapDataset(samples, encoder)
    collator = Collator(
        processor.tokenizer.pad_token_id, feature_token_ids=model.config.feature_token_ids, count_skipped=True
    )
    workers = spec.dataloader_workers if spec.dataloader_workers is not None else default_workers()
    cache = FeatureCache(spec.feature_cache_mb * 2**20)
    # a batch without images still runs the encoder and connector: ranks stay in step, and a connector-only
    # stage still has a graph to differentiate
    dummy = DummyImage(processor, processor.tokenizer.pad_token_id, model.config.feature_token_ids)
    summary = {"model": str(model_path), "data": str(data), "data_report": report.__dict__, "stages": []}

    with training_progress(console, enabled=progress and _rank() == 0) as bar:
        for i, stage in enumerate(spec.stages):
            stage_dir = _stage_dir(run, i, spec)
            final = stage_dir / "final"
            counts = apply_stage(model, stage)
            if resume and final.is_dir():
                _load_trained_state(model, final)
                summary["stages"].append({"name": stage.name, "trainable": counts, "skipped": "finished earlier"})
                continue
            encoder.max_length = stage.max_length
            dataset.set_packing(stage.packing)
            if stage.packing:
                varlen_attention(model)
            decodes = dataset.decodes.value
            cached = uses_feature_cache(spec, stage)
            collator.feature_keys = cached
            if cached:
                cache.bind(model)
            args = training_arguments(stage, stage_dir, report_to=report_to, workers=workers)
            label = f"stage {i + 1}/{len(spec.stages)} {stage.name}"
            trainer = SwapTrainer(
                model=model,
                args=args,
                train_dataset=dataset,
                data_collator=collator,
                stage=stage,
                feature_cache=cache if cached else None,
                dummy_image=dummy,
                callbacks=[RichProgress(bar, label), *callbacks],
            )
            trainer.remove_callback(PrinterCallback)
            facts = stage_facts(stage, trainer.args.world_size, counts, model, getattr(dataset, "lengths", None))
            if console is not None and _rank() == 0:
                console.print(f"{label}: {facts_line(facts)}")
            checkpoint = newest_checkpoint(stage_dir) if resume else None
            try:
                result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
            except pickle.UnpicklingError as exc:  # the Trainer reads checkpoint states with weights_only=True
                if checkpoint is None:
                    raise
                raise VlmSwapError(
                    f"refused to resume from {checkpoint}: a state file holds more than tensors (read weights_only)"
                ) from exc
            if not trainable_finite(model):
                raise NonFiniteError(
                    f"stage {stage.name!r} ended in a non-finite state; its final weights are not saved"
                )
            state = state_to_save(trainer.model, rank0=trainer.is_world_process_zero())  # a collective when sharded
            if trainer.is_world_process_zero():
                with atomic_dir(final, force=True, ours=True) as tmp:
                    if not plan.uses_peft:
                        state = precision.for_saving(state, stored)
                    save_model(trainer.accelerator.unwrap_model(trainer.model), tmp, state_dict=state)
                    if not plan.uses_peft:  # a full model: make it loadable on its own
                        provenance = {**read_provenance(model_path), "trained_by": str(run)}
                        write_model_extras(tmp, processor=processor, provenance=provenance)
                    write_json(tmp / "log_history.json", trainer.state.log_history)
            trainer.accelerator.wait_for_everyone()
            report.undecodable += trainer.undecodable
            trainer.release()
            summary["stages"].append(
                {
                    "name": stage.name,
                    "trainable": counts,
                    "steps": trainer.state.global_step,
                    "train_loss": result.training_loss,
                    "resumed_from": str(checkpoint or ""),
                    "samples_decoded": dataset.decodes.value - decodes,  # this process and its forked workers
                    "undecodable": trainer.undecodable,
                    **({"packing_utilization": dataset.packs.utilization} if dataset.packs is not None else {}),
                    "facts": facts,
                    **({"feature_cache": cache.stats()} if cached else {}),
                }
            )
    if console is not None and _rank() == 0 and report.undecodable:
        console.print(f"data: {report.summary()}")  # samples skipped because they failed to decode
    if _rank() == 0:
        _publish(run, _stage_dir(run, len(spec.stages) - 1, spec) / "final")
        summary["final_loss"] = _last_loss(run, spec)
        write_json(run / RUN_SUMMARY_NAME, summary)
        write_model_card(run, run=run)
        plot_losses(run, spec)
    return run


def uses_feature_cache(recipe: Recipe, stage) -> bool:
    """A stage reuses encoder features when it keeps the encoder frozen and the recipe allows it."""
    return stage.cache_features and stage.encoder.mode == "frozen" and recipe.feature_cache_mb > 0


def _load_trained_state(model: torch.nn.Module, final: Path) -> None:
    """Load a finished stage's trained weights (adapter or full model) into the live model."""
    adapter = final / "adapter_model.safetensors"
    if adapter.is_file():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(adapter)))
        return
    state = {}
    for f in sorted(final.glob("*.safetensors")):
        state.update(load_file(str(f)))
    model.load_state_dict(state, strict=False)


def _publish(run: Path, final: Path) -> None:
    """Copy the last stage's result to the run root, file by file (each replaced atomically), config last."""
    names = sorted(
        (p.name for p in final.iterdir() if p.name != "log_history.json"),
        key=lambda n: (n in (ADAPTER_CONFIG, "config.json"), n),
    )
    for name in names:
        tmp = run / f".{name}.tmp"
        shutil.copyfile(final / name, tmp)
        os.replace(tmp, run / name)


def _histories(run: Path, recipe: Recipe) -> list[tuple[str, list[dict]]]:
    out = []
    for i, stage in enumerate(recipe.stages):
        path = _stage_dir(run, i, recipe) / "final" / "log_history.json"
        out.append((stage.name, json.loads(path.read_text()) if path.is_file() else []))
    return out


def _last_loss(run: Path, recipe: Recipe) -> float | None:
    losses = [e["loss"] for _, h in _histories(run, recipe) for e in h if "loss" in e]
    return losses[-1] if losses else None


def plot_losses(run: Path, recipe: Recipe) -> Path:
    """``loss.png``: training loss against the global step, stages side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    offset = 0
    for name, history in _histories(run, recipe):
        points = [(e["step"] + offset, e["loss"]) for e in history if "loss" in e]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker=".", label=name)
        steps = [e["step"] for e in history if "step" in e]
        if steps:
            offset += max(steps)
            ax.axvline(offset, color="grey", lw=0.5, ls="--")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(f"{recipe.name}")
    ax.legend()
    fig.tight_layout()
    return write_figure(fig, run / "loss.png")  # atomic, like every other output


def merge(run: str | Path, out: str | Path, *, force: bool = False, allow_pickle: bool = False) -> Path:
    """Fold the run's LoRA adapter into its base model; write a full upgraded model to ``out``."""
    from peft import PeftModel

    from ..api import adapter_base, load

    run = Path(run)
    if not (run / ADAPTER_CONFIG).is_file():
        raise VlmSwapError(
            f"{run} holds no LoRA adapter ({ADAPTER_CONFIG}); a run without LoRA is a full model already"
        )
    base = adapter_base(run)
    check_output_dir(Path(out), force, (run, base))  # before anything is read
    checked_weight_files(run, allow_pickle=allow_pickle)  # pickle-only: refused naming --allow-pickle; truncated
    model, processor = load(base, allow_pickle=allow_pickle)
    merged = PeftModel.from_pretrained(model, str(run)).merge_and_unload()
    with atomic_dir(out, force=force, inputs=(run, base)) as tmp:
        save_model(merged, tmp)
        provenance = {**read_provenance(base), "merged_from": str(run.absolute())}
        write_model_extras(tmp, processor=processor, provenance=provenance)
        write_model_card(tmp, run=run)
    return Path(out)
