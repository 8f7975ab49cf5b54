"""Tiny real tokenizers for the embedded models, built offline with the ``tokenizers`` library.

Each style mirrors a real family's special tokens and chat template (ChatML for Qwen, header
tokens for Llama 3, "USER: ... ASSISTANT:" for Vicuna/LLaVA-1.5), so the family rules of
vlm-swap run on them exactly as on the real ones. A byte-level BPE is trained on the synthetic
world's words; the same inputs always give the same vocabulary.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from .world import vocabulary

QWEN_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for item in message['content'] %}"
    "{%- if item['type'] == 'image' or 'image' in item %}{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif item['type'] == 'text' %}{{- item['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
VICUNA_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{- message['content'] + ' ' }}"
    "{%- elif message['role'] == 'user' %}{{- 'USER: ' + message['content'] + ' ' }}"
    "{%- else %}{{- 'ASSISTANT: ' + message['content'] + eos_token }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- 'ASSISTANT:' }}{%- endif %}"
)
MISTRAL_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{- '[INST] ' + message['content'] + ' [/INST]' }}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] + eos_token }}{%- endif %}"
    "{%- endfor %}"
)
GEMMA_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{- '<start_of_turn>' + role + '\n' + message['content'] + '<end_of_turn>\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<start_of_turn>model\n' }}{%- endif %}"
)
# SmolVLM / Idefics3: "<|im_start|>User:<image>question<end_of_utterance>\nAssistant:".
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
# LLaVA-OneVision (Qwen2 LM): ChatML with "<image>" placeholders before the text of a turn.
ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% for item in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for item in message['content'] | selectattr('type', 'equalto', 'text') %}{{ item['text'] }}{% endfor %}"
    "{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Gemma 3's multimodal template: the system text opens the first user turn; images as "<start_of_image>".
GEMMA3_MM_TEMPLATE = (
    "{{ bos_token }}{%- set first = namespace(v=true, sys='') %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{%- set first.sys = message['content'][0]['text'] + '\n\n' %}"
    "{%- else %}{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' }}{%- if first.v %}{{ first.sys }}{%- set first.v = false %}{%- endif %}"
    "{%- for item in message['content'] %}{%- if item['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' %}{{ item['text'] }}{%- endif %}{%- endfor %}"
    "{{ '<end_of_turn>\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{%- endif %}"
)
# LLaVA-1.5's processor template: list content, images first as "<image>\n".
LLAVA_PROCESSOR_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] != 'system' %}{{- message['role'].upper() + ': ' }}{%- endif %}"
    "{%- for item in message['content'] | selectattr('type', 'equalto', 'image') %}{{- '<image>\\n' }}{%- endfor %}"
    "{%- for item in message['content'] | selectattr('type', 'equalto', 'text') %}{{- item['text'] + ' ' }}"
    "{%- endfor %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- 'ASSISTANT:' }}{%- endif %}"
)

STYLES = {
    "qwen": {
        "specials": [
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|image_pad|>",
            "<|video_pad|>",
            "<think>",
            "</think>",
        ],
        "bos": None,
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "unk": None,
        "template": QWEN_TEMPLATE,
    },
    "llama3": {
        "specials": [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<|finetune_right_pad_id|>",
        ],
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",
        "pad": None,
        "unk": None,
        "template": LLAMA3_TEMPLATE,
    },
    "mistral": {
        "specials": ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"],
        "bos": "<s>",
        "eos": "</s>",
        "pad": None,
        "unk": "<unk>",
        "template": MISTRAL_TEMPLATE,
    },
    "gemma2": {
        "specials": ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
        "bos": "<bos>",
        "eos": "<end_of_turn>",
        "pad": "<pad>",
        "unk": "<unk>",
        "template": GEMMA_TEMPLATE,
    },
    "gemma3": {
        "specials": [
            "<pad>",
            "<eos>",
            "<bos>",
            "<unk>",
            "<start_of_turn>",
            "<end_of_turn>",
            "<start_of_image>",
            "<end_of_image>",
            "<image_soft_token>",
        ],
        "bos": "<bos>",
        "eos": "<end_of_turn>",
        "pad": "<pad>",
        "unk": "<unk>",
        "template": GEMMA_TEMPLATE,
    },
    "smolvlm": {
        "specials": [
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<end_of_utterance>",
            "<fake_token_around_image>",
            "<image>",
            "<global-img>",
            *[f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)],
        ],
        "bos": None,
        "eos": "<end_of_utterance>",
        "pad": "<|im_end|>",
        "unk": "<|endoftext|>",
        "template": SMOLVLM_TEMPLATE,
    },
    "llama2": {
        "specials": ["<unk>", "<s>", "</s>"],
        "bos": "<s>",
        "eos": "</s>",
        "pad": None,
        "unk": "<unk>",
        "template": VICUNA_TEMPLATE,
    },
}


def _corpus() -> list[str]:
    words = vocabulary()
    lines = [" ".join(words), "USER: ASSISTANT: system user assistant"]
    lines += [f"the {w} is {v}." for w in words for v in words[:12]]
    return lines


def make_tokenizer(
    style: str, vocab_size: int = 400, extra_special: tuple[str, ...] = (), named: dict[str, str] | None = None
) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer with the special tokens and chat template of ``style``.

    ``named`` gives special tokens of the style a name (``{"boi_token": "<start_of_image>"}`` makes
    ``tokenizer.boi_token``), as some families' tokenizers do for their processors.
    """
    spec = STYLES[style]
    specials = list(spec["specials"]) + list(extra_special)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    if spec["bos"]:
        bos = spec["bos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=spec["bos"],
        eos_token=spec["eos"],
        pad_token=spec["pad"],
        unk_token=spec["unk"],
        chat_template=spec["template"],
        extra_special_tokens=named,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    return fast
