"""Perceiver feature extraction: vlm-swap's trimmed forward vs the naive full small-VLM forward.

Builds (once, reused) a random-initialised Qwen3-VL small VLM from the real config classes:
LM hidden 512, 4 layers, vocabulary 151,936 (Qwen's, so the LM head costs what it really costs),
a 4-block vision tower of width 256; saved with ``save_pretrained`` with a real processor. On a
batch of ``--images`` scenes of ``--size`` pixels it times, side by side in one run:

* trimmed: the ``perceiver`` encoder backend's forward, as ``SwapVLM`` calls it (prompt cut after
  the vision-end token, base model without LM head, last hidden state only);
* naive: ``Qwen3VLForConditionalGeneration`` on the whole prompt (system, image, question) with
  ``output_hidden_states=True`` and the LM head computed, then the image rows sliced out.

Both run under ``torch.no_grad()`` on the same preprocessed images (preprocessing not timed), and
the rows of the two are checked equal first. Records perceiver_trimmed_vs_naive_forward.

    python bench/bench_perceiver.py [--work /tmp/bench-perceiver] [--images 8] [--size 256] [--repeat 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import median_time, record  # noqa: E402

QUESTION = "What shapes are in the picture, and what colour is each of them?"
VOCAB = 151_936


def qwen_token_ids(tok) -> dict[str, int]:
    """The Qwen-VL special-token ids of a tokenizer, as a Qwen3-VL config names them."""
    names = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
             "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}  # fmt: skip
    return {key: tok.convert_tokens_to_ids(token) for key, token in names.items()}


def qwen3_vl_processor(tok, max_pixels: int):
    """A real Qwen3-VL processor (patch 16, 2x2 merge) around ``tok``, capped at ``max_pixels`` per image."""
    import transformers as tf

    from vlm_swap.zoo.models import CLIP_MEAN, CLIP_STD
    from vlm_swap.zoo.tokenizers import QWEN_TEMPLATE

    image_proc = tf.Qwen2VLImageProcessor(
        patch_size=16,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": 32 * 32, "longest_edge": max_pixels},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    video_proc = tf.Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2)
    return tf.Qwen3VLProcessor(
        image_processor=image_proc, tokenizer=tok, video_processor=video_proc, chat_template=QWEN_TEMPLATE
    )


def build_perceiver(out: Path, max_pixels: int) -> Path:
    """A random-initialised Qwen3-VL small VLM and its processor (reused when present)."""
    import torch
    import transformers as tf

    from vlm_swap.zoo.tokenizers import make_tokenizer

    if (out / "model.safetensors").is_file():
        return out
    torch.manual_seed(0)
    tok = make_tokenizer("qwen")
    text = dict(
        vocab_size=VOCAB,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
        max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [12, 10, 10]},
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    text["rope_parameters"]["mrope_interleaved"] = True
    vision = dict(
        depth=4,
        hidden_size=256,
        intermediate_size=1024,
        num_heads=4,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=512,
        num_position_embeddings=256,
        deepstack_visual_indexes=[1, 2],
    )
    config = tf.Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **qwen_token_ids(tok))
    model = tf.Qwen3VLForConditionalGeneration(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    qwen3_vl_processor(tok, max_pixels).save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-perceiver"), help="where the perceiver is built")
    ap.add_argument("--images", type=int, default=8, help="images per batch")
    ap.add_argument("--size", type=int, default=256, help="image side in pixels (square scenes)")
    ap.add_argument("--repeat", type=int, default=5, help="timed repetitions of each (the median is kept)")
    ap.add_argument("--device", default="cpu", help="torch device")
    args = ap.parse_args()

    import torch
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    from vlm_swap import zoo
    from vlm_swap.backends.base import LoadOptions
    from vlm_swap.backends.perceiver import DEFAULT_SYSTEM_PROMPT, PerceiverBackend

    path = build_perceiver(args.work / "qwen3-vl", max_pixels=max(args.size, 64) ** 2)
    loaded = PerceiverBackend.load(str(path), LoadOptions())
    enc = loaded.module.eval().to(args.device)
    full = Qwen3VLForConditionalGeneration.from_pretrained(path).eval().to(args.device)
    processor = AutoProcessor.from_pretrained(path)
    processor.tokenizer.padding_side = "left"

    images = [zoo.make_scene(i, (args.size, args.size)).render() for i in range(args.images)]
    trimmed_in = loaded.image_processor(images, return_tensors="pt").to(args.device)
    messages = [
        {"role": "system", "content": [{"type": "text", "text": DEFAULT_SYSTEM_PROMPT}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    naive_in = processor(images=images, text=[text] * len(images), return_tensors="pt", padding=True).to(args.device)
    start, end = full.config.vision_start_token_id, full.config.vision_end_token_id

    def trimmed():
        with torch.no_grad():
            return enc(**trimmed_in)  # [sum(N_i + 2), D]

    def naive():
        with torch.no_grad():
            out = full(**naive_in, output_hidden_states=True)
        last = out.hidden_states[-1]  # [B, L, D]
        rows = []
        for b, ids in enumerate(naive_in["input_ids"].tolist()):
            rows.append(last[b, ids.index(start) : ids.index(end) + 1])
        return torch.cat(rows)

    torch.testing.assert_close(trimmed(), naive(), atol=1e-4, rtol=1e-4)  # the same features, or no figure
    n_rows = trimmed().shape[0]
    trimmed_s = median_time(trimmed, repeat=args.repeat)
    naive_s = median_time(naive, repeat=args.repeat)
    prompt_len = naive_in["input_ids"].shape[1]
    print(f"{args.images} images of {args.size}x{args.size}: {n_rows} feature rows; naive prompt {prompt_len} tokens")
    print(f"{'':10}{'median s':>10}")
    print(f"{'trimmed':10}{trimmed_s:>10.4f}")
    print(f"{'naive':10}{naive_s:>10.4f}")
    record(
        "perceiver_trimmed_vs_naive_forward",
        round(trimmed_s / naive_s, 3),
        goal="<= 0.8",
        trimmed_s=round(trimmed_s, 4),
        naive_s=round(naive_s, 4),
        images=args.images,
        image_size=args.size,
        device=args.device,
        threads=torch.get_num_threads(),
    )


if __name__ == "__main__":
    main()
