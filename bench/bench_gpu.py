"""GPU throughput, MFU and peak memory of DPA against a ViT baseline, at real sizes with random weights.

Two SwapVLMs share one target LLM shape (Qwen3-4B):

- ``dpa``: a Qwen3-VL-2B-shaped perceiver (ViT depth 24 / 1024 wide, LM 28 layers / 2048 wide), the DPA
  connector ``mlp2x-relu``; a 512x512 image gives 256 rows + vision start/end;
- ``vit``: a SigLIP-so400m-384 tower (27 layers / 1152 wide, patch 14: 729 rows) and LLaVA's ``mlp2x-gelu``.

Both train the stages of ``dpa-align-short`` through the library's own plan (``wrap`` + ``apply_stage``:
stage 1 the connector, stage 2 the connector + LoRA r=32 on the LLM, gradient checkpointing as the
recipe says), bf16 autocast, AdamW, on random tokens of ``--text-tokens`` text tokens per sample.
Inference is ``generate`` of ``--gen-tokens`` tokens for a batch of prompts with one image each.

MFU = model FLOPs per step / step time / the card's dense bf16 peak. Model FLOPs are counted by the library's
``vlm_swap.train.flops.FlopCounter`` (the same counter ``vlm-swap train`` logs MFU with): for the rows each
Linear / convolution layer processed, 2 x weights for the forward, + 2 when its weight trains, + 2 when a
gradient crosses it (6N trained, 4N frozen under training, 2N frozen upstream); embedding lookups,
attention scores and checkpointing recompute are not counted (so the figure is conservative).

Then the real command: ``bench/gpu_cli.py`` writes the DPA model to disk at the same shapes (random weights, a
real tokenizer and processor) with a data file of images of the same side and answers of about the same text
tokens, runs ``vlm-swap train dpa-align-short`` on it at the same micro-batches (``--gpus N``: torchrun on N
GPUs) and compares its logged samples/s per GPU with the plan loop's (``gpu_train_cli_vs_plan``, stage 2;
the data loading, collation, feature rows and Trainer around the same model are what differs).

    python bench/bench_gpu.py            # on a GPU: records the figures in bench/results.json
    python bench/bench_gpu.py --gpus 8   # the vlm-swap train run on 8 GPUs (torchrun)
    python bench/bench_gpu.py --tiny     # the same code on CPU with tiny shapes, in a minute; records nothing
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import transformers as tf

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_cli  # noqa: E402
from common import record  # noqa: E402

from vlm_swap.format import SwapVLMConfig, SwapVLMForConditionalGeneration  # noqa: E402
from vlm_swap.train.flops import FlopCounter, peak_flops  # noqa: E402
from vlm_swap.train.plan import apply_stage, run_plan, wrap  # noqa: E402
from vlm_swap.train.recipe import load_recipe  # noqa: E402

NOT_MEASURED = "not measured (no GPU)"
NAN = float("nan")
GOALS = {"gpu_dpa_stage2_mfu": ">= 0.35", "gpu_dpa_train_cost_vs_vit": "<= 1.14", "gpu_dpa_inference_vs_vit": ">= 0.94",
         "gpu_train_cli_vs_plan": ">= 0.95"}  # fmt: skip

FULL = {
    "vocab": 151936,
    "perceiver_text": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                           num_key_value_heads=8, head_dim=128),
    "perceiver_vision": dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, patch_size=16,
                             out_hidden_size=2048, num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17]),
    "mrope_section": [24, 20, 20],
    "target": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                   num_key_value_heads=8, head_dim=128),
    "siglip": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                   image_size=384, patch_size=14),
    "image_px": 512,
    "prefix": 14,  # system prompt + user turn up to the vision-start token
}  # fmt: skip
TINY = {
    "vocab": 1024,
    "perceiver_text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16),
    "perceiver_vision": dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                             out_hidden_size=64, num_position_embeddings=64, deepstack_visual_indexes=[0]),
    "mrope_section": [4, 2, 2],
    "target": dict(hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=24),
    "siglip": dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, image_size=56,
                   patch_size=14),
    "image_px": 64,
    "prefix": 14,
}  # fmt: skip


def token_ids(vocab: int) -> dict[str, int]:
    """Qwen's special-token ids at full size; the same offsets from the end of a tiny vocabulary."""
    base = 151643 if vocab == FULL["vocab"] else vocab - 16
    return {"pad": base, "vision_start": base + 9, "vision_end": base + 10, "image": base + 12, "video": base + 13}


def build(kind: str, shapes: dict) -> SwapVLMForConditionalGeneration:
    """A random-initialised SwapVLM of ``kind`` (``dpa`` or ``vit``) with the Qwen3-4B-shaped target."""
    ids = token_ids(shapes["vocab"])
    target = tf.Qwen3Config(vocab_size=shapes["vocab"], tie_word_embeddings=True, max_position_embeddings=8192,
                            pad_token_id=ids["pad"], **shapes["target"])  # fmt: skip
    if kind == "dpa":
        rope = {"rope_type": "default", "rope_theta": 5e6, "mrope_section": shapes["mrope_section"]}
        encoder = tf.Qwen3VLConfig(
            text_config=dict(vocab_size=shapes["vocab"], max_position_embeddings=8192, pad_token_id=ids["pad"],
                             rope_parameters={**rope, "mrope_interleaved": True}, **shapes["perceiver_text"]),
            vision_config=dict(spatial_merge_size=2, temporal_patch_size=2, **shapes["perceiver_vision"]),
            tie_word_embeddings=True, image_token_id=ids["image"], video_token_id=ids["video"],
            vision_start_token_id=ids["vision_start"], vision_end_token_id=ids["vision_end"],
        )  # fmt: skip
        args = {"prefix_ids": list(range(shapes["prefix"])), "vision_start_id": ids["vision_start"],
                "vision_end_id": ids["vision_end"], "image_token_id": ids["image"], "pad_id": ids["pad"],
                "merge_size": 2, "system_prompt": "You are a helpful assistant."}  # fmt: skip
        dim, connector, features = shapes["perceiver_text"]["hidden_size"], "mlp2x-relu", ["vision_start", "image"]
        features.append("vision_end")
    else:
        encoder = tf.SiglipVisionConfig(**shapes["siglip"])
        args = {"feature_layer": -1, "has_cls": False, "drop_cls": False, "patch_size": encoder.patch_size}
        dim, connector, features = encoder.hidden_size, "mlp2x-gelu", ["image"]
    config = SwapVLMConfig(
        text_config=target, encoder_config=encoder, encoder_kind="perceiver" if kind == "dpa" else "hf-vit",
        encoder_args=args, encoder_dim=dim, connector=connector, image_token_id=ids["image"],
        feature_token_ids=[ids[f] for f in features],
    )  # fmt: skip
    return SwapVLMForConditionalGeneration(config)


def batch(kind: str, shapes: dict, n: int, text_tokens: int, device) -> dict[str, torch.Tensor]:
    """``n`` samples: a few text tokens, the image's placeholder rows, then the rest of the text."""
    ids = token_ids(shapes["vocab"])
    if kind == "dpa":
        side = shapes["image_px"] // shapes["perceiver_vision"]["patch_size"]
        rows = side * side // 4
        image = [ids["vision_start"], *[ids["image"]] * rows, ids["vision_end"]]
        patch = 3 * 2 * shapes["perceiver_vision"]["patch_size"] ** 2
        pixels = {"pixel_values": torch.randn(n * side * side, patch),
                  "image_grid_thw": torch.tensor([[1, side, side]] * n)}  # fmt: skip
    else:
        side = shapes["siglip"]["image_size"]
        image = [ids["image"]] * (side // shapes["siglip"]["patch_size"]) ** 2
        pixels = {"pixel_values": torch.randn(n, 3, side, side)}
    head = 8
    text = torch.randint(0, ids["pad"], (n, text_tokens))
    input_ids = torch.cat([text[:, :head], torch.tensor(image).expand(n, -1), text[:, head:]], dim=1)
    labels = input_ids.clone()
    labels[:, : head + len(image)] = -100
    out = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels, **pixels}
    return {k: v.to(device) for k, v in out.items()}


def check_flops(model, kind: str, shapes: dict) -> None:
    """The library's FLOP counter on a forward pass against torch's (which adds attention scores)."""
    from torch.utils.flop_counter import FlopCounterMode

    inputs = batch(kind, shapes, 2, 16, torch.device("cpu"))
    counter = FlopCounter(model)
    with torch.no_grad(), FlopCounterMode(display=False) as reference:
        model(**inputs)
    counted, measured = sum(counter.take().values()), reference.get_total_flops()
    counter.remove()
    print(f"{kind} forward FLOPs: counted from the layers that ran {counted:.4g}, torch FLOP counter {measured:.4g}")
    if not 0.7 * measured <= counted <= measured:
        raise SystemExit(f"{kind}: the layer FLOP count is off")


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / steps


def inference(model, kind, shapes, opts, device) -> float:
    """Generated tokens per second for a batch of prompts with one image each (prefill included)."""
    inputs = batch(kind, shapes, opts.gen_batch, opts.prompt_tokens, device)
    inputs.pop("labels")
    ids = token_ids(shapes["vocab"])
    model.eval()

    def run():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            model.generate(**inputs, max_new_tokens=opts.gen_tokens, min_new_tokens=opts.gen_tokens, do_sample=False,
                           pad_token_id=ids["pad"], eos_token_id=None)  # fmt: skip

    return opts.gen_batch * opts.gen_tokens / timed(run, device, opts.repeat, 1)


def training(model, kind, shapes, opts, device, peak: float | None) -> dict[str, dict]:
    """Per stage of dpa-align-short: tokens/s, MFU and peak memory."""
    recipe = load_recipe("dpa-align-short")
    model = wrap(model, run_plan(recipe), seed=0)
    model.train()
    out = {}
    for stage in recipe.stages:
        apply_stage(model, stage)
        if stage.gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=stage.lr, betas=(stage.adam_beta1, stage.adam_beta2))
        n = opts.batch.get(stage.name, stage.batch_size)
        inputs = batch(kind, shapes, n, opts.text_tokens, device)

        def step(inputs=inputs, opt=opt):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model(**inputs).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        counter = FlopCounter(model)
        try:
            seconds = timed(step, device, opts.steps, opts.warmup)
        except torch.OutOfMemoryError:  # recorded, so a smaller --align-batch / --instruct-batch can follow
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            out[stage.name] = {"oom": True, "batch": n}
            counter.remove()
            continue
        counter.take()
        step()  # one more, counted alone: the model FLOPs of one step (the shapes are fixed)
        flops = sum(counter.take().values())
        counter.remove()
        out[stage.name] = {
            "step_s": seconds,
            "tokens_per_s": inputs["input_ids"].numel() / seconds,
            "samples_per_s": n / seconds,
            "mfu": flops / seconds / peak if peak else None,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
            "batch": n,
            "tokens_per_sample": inputs["input_ids"].shape[1],
        }
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on CPU: checks the logic, records nothing")
    parser.add_argument("--text-tokens", type=int, default=256, help="text tokens per training sample")
    parser.add_argument("--align-batch", type=int, default=None, help="stage-1 micro-batch (default: the recipe's)")
    parser.add_argument("--instruct-batch", type=int, default=None, help="stage-2 micro-batch (default: the recipe's)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per stage")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="text tokens per inference prompt")
    parser.add_argument("--gen-tokens", type=int, default=128, help="tokens generated per prompt")
    parser.add_argument("--gen-batch", type=int, default=16, help="prompts per generate call")
    parser.add_argument("--repeat", type=int, default=3, help="timed generate calls")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs for the vlm-swap train run (torchrun when > 1)")
    parser.add_argument("--cli-rows", type=int, default=64, help="rows of the data file the vlm-swap train run reads")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-gpu"), help="where the on-disk model is built")
    parser.add_argument("--no-cli", dest="cli", action="store_false", help="skip the vlm-swap train run")
    opts = parser.parse_args(argv)
    opts.batch = {k: v for k, v in (("align", opts.align_batch), ("instruct", opts.instruct_batch)) if v}
    if opts.tiny:
        opts.batch = {"align": opts.align_batch or 2, "instruct": opts.instruct_batch or 2}
        opts.text_tokens, opts.steps, opts.warmup = 16, 1, 1
        opts.prompt_tokens, opts.gen_tokens, opts.gen_batch, opts.repeat = 8, 4, 2, 1
        opts.gpus, opts.cli_rows = 1, 8
    elif not torch.cuda.is_available():
        for name, goal in GOALS.items():
            record(name, None, goal=goal, note=NOT_MEASURED)
        return
    device = torch.device("cpu" if opts.tiny else "cuda")
    shapes = TINY if opts.tiny else FULL
    card = "" if opts.tiny else torch.cuda.get_device_name(0)
    peak = peak_flops(card) if card else 1e12  # tiny: a nominal 1 TFLOP/s
    results = {}
    for kind in ("dpa", "vit"):
        torch.manual_seed(0)
        with torch.device(device):
            model = build(kind, shapes).to(torch.bfloat16)
        if opts.tiny:
            check_flops(model, kind, shapes)
        results[kind] = {"inference_tokens_per_s": inference(model, kind, shapes, opts, device)}
        results[kind]["train"] = training(model, kind, shapes, opts, device, peak)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for kind, r in results.items():
        print(kind, f"inference {r['inference_tokens_per_s']:.1f} tok/s")
        for stage, s in r["train"].items():
            print(
                f"  {stage}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in s.items())
            )
    dpa, vit = results["dpa"], results["vit"]
    cost = {s: dpa["train"][s].get("step_s", NAN) / vit["train"][s].get("step_s", NAN) for s in dpa["train"]}
    infer = dpa["inference_tokens_per_s"] / vit["inference_tokens_per_s"]
    print(f"training cost dpa/vit per step: {cost}; inference throughput dpa/vit: {infer:.3f}")
    vs_plan, cli = {}, {}
    if opts.cli:  # the same model and micro-batches through the real command, from files on disk
        root = opts.work / ("tiny" if opts.tiny else "full")
        model_dir = gpu_cli.model_dir(shapes, root, device)
        data = gpu_cli.data_file(root, opts.cli_rows, shapes["image_px"], opts.text_tokens)
        batch = {s.name: opts.batch.get(s.name, s.batch_size) for s in load_recipe("dpa-align-short").stages}
        cli = gpu_cli.train_figures(model_dir, data, root, batch, opts.steps, opts.gpus)
        vs_plan = {s: cli[s]["samples_per_s"] / dpa["train"][s].get("samples_per_s", NAN) for s in cli}
        print(f"vlm-swap train on {opts.gpus} GPU(s): {cli}; samples/s per GPU vs the plan loop: {vs_plan}")
    if opts.tiny:
        return
    extra = {"device": card, "results": results}
    mfu = dpa["train"]["instruct"].get("mfu")
    record("gpu_dpa_stage2_mfu", round(mfu, 4) if mfu else None, goal=GOALS["gpu_dpa_stage2_mfu"], **extra)
    record("gpu_dpa_train_cost_vs_vit", round(cost["instruct"], 3), goal=GOALS["gpu_dpa_train_cost_vs_vit"],
           stage1=round(cost["align"], 3), device=card)  # fmt: skip
    record("gpu_dpa_inference_vs_vit", round(infer, 3), goal=GOALS["gpu_dpa_inference_vs_vit"], device=card)
    if vs_plan:
        record("gpu_train_cli_vs_plan", round(vs_plan["instruct"], 3), goal=GOALS["gpu_train_cli_vs_plan"],
               stage1=round(vs_plan["align"], 3), cli=cli, gpus=opts.gpus, device=card)  # fmt: skip


if __name__ == "__main__":
    main()
