"""A catalog of well-known models: id -> hub id and the facts listings and pair checks need offline.

Facts are from the models' published configs: the width whose hidden states cross over
(``hidden_size``: the perceiver's LM width, a ViT's width, an LLM's width), tokens per image at
the default resolution (perceivers at 512x512 = 262,144 pixels, DPA's training cap), the context
length of LLMs, and the text family (which decides "same family" in pair checks).
"""

from __future__ import annotations

from dataclasses import dataclass

from .registry import Registry


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    hub_id: str
    role: str  # "perceiver" | "vit" | "llm" | "vlm"
    family: str  # text family for perceivers/LLMs/VLMs, tower family for ViTs
    hidden_size: int
    tokens_per_image: int = 0
    context: int = 0
    encoder_kind: str = ""  # for perceivers/ViTs: the encoder kind that loads it

    @property
    def spec(self) -> str:
        return f"{self.encoder_kind}:{self.id}" if self.encoder_kind else self.id


CATALOG: Registry[CatalogEntry] = Registry("catalog model")
for _e in (
    CatalogEntry("qwen3-vl-2b", "Qwen/Qwen3-VL-2B-Instruct", "perceiver", "qwen3", 2048, 256, encoder_kind="perceiver"),
    CatalogEntry("qwen3-vl-4b", "Qwen/Qwen3-VL-4B-Instruct", "perceiver", "qwen3", 2560, 256, encoder_kind="perceiver"),
    CatalogEntry(
        "qwen2.5-vl-3b", "Qwen/Qwen2.5-VL-3B-Instruct", "perceiver", "qwen2", 2048, 324, encoder_kind="perceiver"
    ),
    CatalogEntry(
        "clip-vit-l-14-336", "openai/clip-vit-large-patch14-336", "vit", "clip", 1024, 576, encoder_kind="hf-vit"
    ),
    CatalogEntry(
        "siglip-so400m-384", "google/siglip-so400m-patch14-384", "vit", "siglip", 1152, 729, encoder_kind="hf-vit"
    ),
    CatalogEntry(
        "siglip2-so400m-384", "google/siglip2-so400m-patch14-384", "vit", "siglip2", 1152, 729, encoder_kind="hf-vit"
    ),
    CatalogEntry("qwen3-0.6b", "Qwen/Qwen3-0.6B", "llm", "qwen3", 1024, context=40960),
    CatalogEntry("qwen3-1.7b", "Qwen/Qwen3-1.7B", "llm", "qwen3", 2048, context=40960),
    CatalogEntry("qwen3-4b", "Qwen/Qwen3-4B", "llm", "qwen3", 2560, context=40960),
    CatalogEntry("qwen3-8b", "Qwen/Qwen3-8B", "llm", "qwen3", 4096, context=40960),
    CatalogEntry("llama-3.2-1b", "meta-llama/Llama-3.2-1B-Instruct", "llm", "llama3", 2048, context=131072),
    CatalogEntry("llama-3.2-3b", "meta-llama/Llama-3.2-3B-Instruct", "llm", "llama3", 3072, context=131072),
    CatalogEntry("vicuna-7b", "lmsys/vicuna-7b-v1.5", "llm", "llama2", 4096, context=4096),
    CatalogEntry("llava-1.5-7b-hf", "llava-hf/llava-1.5-7b-hf", "vlm", "llama2", 4096, 576, 4096),
    CatalogEntry("llava-1.5-13b-hf", "llava-hf/llava-1.5-13b-hf", "vlm", "llama2", 5120, 576, 4096),
):
    CATALOG.register(_e.id, _e)
