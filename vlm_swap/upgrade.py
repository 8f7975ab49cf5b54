"""Surgery: a source (VLM or bare LLM) + an encoder backend -> a SwapVLM checkpoint on disk.

This is the only module that touches both the source parts and the new encoder. The LLM is
streamed tensor by tensor from the source shards to the output shards without materialising the
model, and stays bit-identical (unless ``dtype`` asks for a cast); only the embedding rows of
added placeholder tokens are appended (initialised to the mean row). The tokens are planned first
(``open_inputs``), so every LLM tensor is known before the encoder is opened: the LLM shards are
written in the background while the encoder is opened by its backend and the pair checks run
(``load_inputs``). The encoder is not loaded either: its module is built on the meta device and its
tensors are copied from its own checkpoint files the same way (``encoders.streaming``; an encoder
that loading would change beyond renaming keys, or pickle weights, is loaded whole). A fresh
connector is sized from the encoder width to the LLM width, and the whole directory is written
atomically.
"""

from __future__ import annotations

import copy
import datetime
import platform
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from rich.progress import Progress
from transformers import AutoModelForCausalLM, AutoProcessor, AutoTokenizer, GenerationConfig, PreTrainedConfig
from transformers.initialization import no_init_weights

from . import __version__
from .card import write_model_card
from .checkpoints.atomic import atomic_dir, write_json
from .checkpoints.guards import PROVENANCE_NAME, check_output_dir
from .checkpoints.resolve import resolve_source
from .checkpoints.safe import load_auto
from .checkpoints.shards import DEFAULT_SHARD_BYTES, ShardWriter
from .checkpoints.tensors import FileRange, SourceTensor, safetensors_tensors
from .compat import Check, EncoderFacts, LLMFacts, check_pair, require_compatible
from .connectors import CONNECTORS
from .encoders import ENCODERS, EncoderSpec, LoadedEncoder
from .errors import VlmSwapError
from .llms import LLMFamily, detect_family
from .modeling import SwapVLMConfig, SwapVLMProcessor
from .sources import Source, open_source

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ROW_BLOCK_BYTES = 16 * 1024**2  # rows read, cast and written at a time when a tensor changes


@dataclass
class TokenPlan:
    """Placeholder tokens of the target after the upgrade."""

    image_token: str
    image_start: str
    image_end: str
    added: list[str]
    pad_token: str | None  # set when pad was missing or equal to eos

    def feature_tokens(self) -> list[str]:
        return [t for t in (self.image_start, self.image_token, self.image_end) if t]


def plan_tokens(tokenizer, family: LLMFamily, image_token_id: int | None, boundaries: bool) -> TokenPlan:
    """Add the placeholder (and pad) tokens the target lacks to ``tokenizer``; say what was done."""
    vocab = tokenizer.get_vocab()
    image_token = family.image_token
    if image_token_id is not None:
        known = type(image_token_id) is int and 0 <= image_token_id < len(tokenizer)
        image_token = tokenizer.convert_ids_to_tokens(image_token_id) if known else None
        if image_token is None:
            raise VlmSwapError(
                f"the source's config names image token id {image_token_id!r}, which its tokenizer does not have "
                f"({len(tokenizer)} tokens): config/tokenizer mismatch"
            )
    start, end = (family.vision_start, family.vision_end) if boundaries else ("", "")
    added = [t for t in dict.fromkeys((start, image_token, end)) if t and t not in vocab]
    pad = None
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        pad = next((t for t in family.pad_candidates if t in vocab and t != tokenizer.eos_token), "<|pad|>")
        if pad not in vocab:
            added.append(pad)
    if added:
        tokenizer.add_tokens(added, special_tokens=True)
    if pad is not None:
        tokenizer.pad_token = pad
    return TokenPlan(image_token, start, end, added, pad)


def template_is_text_only(tokenizer, chat_template: str | None, image_token: str) -> bool:
    """True when the chat template cannot render image entries (most LLM templates)."""
    if not chat_template:
        return True
    probe = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    try:
        text = tokenizer.apply_chat_template(probe, chat_template=chat_template, tokenize=False)
    except Exception:
        return True
    return image_token not in text


def upgrade(source: str, encoder: str, out: str | Path, **kwargs) -> Path:
    """Swap the vision side of an existing VLM for ``encoder`` (``KIND:SOURCE``); write ``out``."""
    return _assemble(source, encoder, out, bare_llm=False, **kwargs)


def build(llm: str, encoder: str, out: str | Path, **kwargs) -> Path:
    """Build a VLM from a bare causal LM and ``encoder`` (``KIND:SOURCE``); write ``out``."""
    return _assemble(llm, encoder, out, bare_llm=True, **kwargs)


@dataclass
class Opened:
    """The source opened, its tokens planned and the encoder located: everything but the encoder's weights."""

    source: str
    src: Source
    spec: EncoderSpec
    enc_path: str
    connector: str
    tokenizer: object
    chat_template: str | None
    text_cfg: PreTrainedConfig  # the LLM config as the output will have it (vocab_size grown, pad set)
    family: LLMFamily
    plan: TokenPlan
    trust_remote_code: bool
    allow_pickle: bool

    @property
    def new_ids(self) -> list[int]:
        return [self.tokenizer.convert_tokens_to_ids(t) for t in self.plan.added]


@dataclass
class Prepared:
    """Everything an upgrade needs, loaded and checked, before anything is written."""

    opened: Opened
    loaded: LoadedEncoder
    checks: list[Check]


def open_inputs(
    source: str,
    encoder: str,
    *,
    bare_llm: bool = False,
    connector: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    revision: str | None = None,
    encoder_revision: str | None = None,
) -> Opened:
    """Parse the encoder spec and connector, open the source, locate the encoder and plan the tokens the
    target needs (its tokenizer loaded, the encoder's weights not)."""
    spec = EncoderSpec.parse(encoder)
    connector = connector or ("mlp2x-relu" if spec.kind == "perceiver" else "mlp2x-gelu")
    CONNECTORS.get(connector)
    src = open_source(
        source, bare_llm=bare_llm, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, revision=revision
    )
    backend = ENCODERS.get(spec.kind)
    enc_path = resolve_source(
        spec.source, marker=backend.marker_file, revision=encoder_revision, allow_pickle=allow_pickle
    )
    trust = trust_remote_code
    tokenizer = load_auto(AutoTokenizer, src.path, "tokenizer", trust_remote_code=trust, config=src.config)
    chat_template = _chat_template(src, tokenizer, trust)
    text_cfg = copy.deepcopy(src.text_config)
    family = detect_family(text_cfg.model_type, tokenizer.get_vocab())
    boundaries = backend.has_boundaries(enc_path, trust_remote_code=trust)
    plan = plan_tokens(tokenizer, family, src.image_token_id, boundaries)
    text_cfg.vocab_size = max(text_cfg.vocab_size, len(tokenizer))
    text_cfg.pad_token_id = tokenizer.pad_token_id
    return Opened(
        source, src, spec, enc_path, connector, tokenizer, chat_template, text_cfg, family, plan, trust, allow_pickle
    )


def load_inputs(o: Opened) -> Prepared:
    """Open the encoder and run the pair checks (no writes). Its weights are not read: its module is built on the
    meta device and its tensors are those of its checkpoint files (``LoadedEncoder.weights``), unless they need
    more than renaming to load (then, or for pickle weights, it is loaded whole)."""
    loaded = ENCODERS.get(o.spec.kind).load(
        o.enc_path, dtype=None, trust_remote_code=o.trust_remote_code, allow_pickle=o.allow_pickle, stream=True
    )
    if loaded.module.uses_boundaries != bool(o.plan.image_start):
        raise VlmSwapError(f"encoder backend {o.spec.kind!r}: has_boundaries() disagrees with the loaded encoder")
    facts_enc = EncoderFacts(
        o.spec.source, o.spec.kind, loaded.module.feature_dim, _rows_per_image(loaded), loaded.info.get("text_family")
    )
    text_cfg = o.src.text_config
    facts_llm = LLMFacts(
        str(o.source),
        o.family.id,
        text_cfg.hidden_size,
        getattr(text_cfg, "max_position_embeddings", 0) or 0,
        tuple(o.plan.added),
        o.plan.pad_token,
    )
    return Prepared(o, loaded, check_pair(facts_enc, facts_llm, o.connector))


def prepare(source: str, encoder: str, **kwargs) -> Prepared:
    """Open the source, load the encoder, plan the tokens and run the pair checks (no writes);
    ``kwargs`` are those of ``open_inputs``."""
    return load_inputs(open_inputs(source, encoder, **kwargs))


def _assemble(
    source: str,
    encoder: str,
    out: str | Path,
    *,
    bare_llm: bool,
    connector: str | None = None,
    dtype: str = "auto",
    force: bool = False,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    revision: str | None = None,
    encoder_revision: str | None = None,
    seed: int = 0,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: bool = False,
) -> Path:
    """Write the upgraded model. The LLM tensors are copied in the background while the encoder loads
    and the pair checks run: a failed check stops the copy, and the temporary directory is removed
    (``atomic_dir``), so nothing is left behind."""
    out = Path(out)
    if dtype not in DTYPES:
        raise VlmSwapError(f"unknown dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    if not 0 <= seed < 2**64:  # what torch.manual_seed takes
        raise VlmSwapError(f"--seed must be in [0, 2**64 - 1], not {seed}")
    inputs = (source, encoder.partition(":")[2])
    check_output_dir(out, force, inputs)
    o = open_inputs(
        source,
        encoder,
        bare_llm=bare_llm,
        connector=connector,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        revision=revision,
        encoder_revision=encoder_revision,
    )
    src, spec, tokenizer, plan, text_cfg = o.src, o.spec, o.tokenizer, o.plan, o.text_cfg
    skeleton = llm_skeleton(copy.deepcopy(src.text_config))
    files = {path: _read_tensors(src, path) for path in src.weight_files}  # every header read and checked once
    check_llm_shapes(src, files, skeleton)  # before anything is written
    with atomic_dir(out, force=force, inputs=inputs) as tmp, ShardWriter(tmp, max_shard_bytes) as writer:
        out_dtype = _stream_llm(src, files, skeleton, writer, text_cfg.vocab_size, o.new_ids, DTYPES[dtype])
        writer.flush()  # the LLM shards are written from here on, while the encoder loads
        p = load_inputs(o)
        require_compatible(p.checks)
        loaded = p.loaded
        _add_encoder(writer, loaded, out_dtype)
        with torch.random.fork_rng(devices=[]):  # a seeded connector init, the caller's RNG untouched
            torch.manual_seed(seed)
            conn = CONNECTORS.get(o.connector).build(loaded.module.feature_dim, text_cfg.hidden_size)
        for k, v in conn.to(out_dtype).state_dict().items():
            writer.add(f"connector.{k}", v.detach())

        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in plan.feature_tokens()}
        config = SwapVLMConfig(
            text_config=text_cfg,
            encoder_config=loaded.config,
            encoder_kind=spec.kind,
            encoder_args=loaded.module.args,
            encoder_dim=loaded.module.feature_dim,
            connector=o.connector,
            image_token_id=ids[plan.image_token],
            feature_token_ids=list(ids.values()),
            dtype=out_dtype,
        )
        config.architectures = ["SwapVLMForConditionalGeneration"]
        config.save_pretrained(tmp)
        processor = SwapVLMProcessor(
            image_processor=loaded.image_processor,
            tokenizer=tokenizer,
            chat_template=o.chat_template,
            image_token=plan.image_token,
            image_start=plan.image_start,
            image_end=plan.image_end,
            encoder_kind=spec.kind,
            encoder_args=loaded.module.args,
            text_only_template=template_is_text_only(tokenizer, o.chat_template, plan.image_token),
        )
        processor.save_pretrained(tmp)
        _generation_config(src, tokenizer).save_pretrained(tmp)
        write_json(
            tmp / PROVENANCE_NAME,
            {
                "vlm_swap_version": __version__,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "command": "build" if bare_llm else "upgrade",
                "source": str(source),
                "source_kind": src.adapter.id,
                "llm_family": o.family.id,
                "encoder": str(spec),
                "encoder_info": loaded.info,
                "connector": o.connector,
                "dtype": str(out_dtype).replace("torch.", ""),
                "added_tokens": plan.added,
                "pad_token": plan.pad_token,
                "versions": _versions(),
            },
        )
        write_model_card(tmp)
        with Progress(transient=True, disable=not progress) as bar:
            task = bar.add_task("writing weights", total=writer.total_bytes)
            writer.close(advance=lambda n: bar.advance(task, n))
    return out


def _stream_llm(
    src: Source,
    files: dict[Path, dict[str, SourceTensor]],
    skeleton: torch.nn.Module,
    writer: ShardWriter,
    new_vocab: int,
    new_ids: list[int],
    dtype: torch.dtype | None,
) -> torch.dtype:
    """Register the LLM tensors of ``src`` in ``writer`` as ``language_model.*``; return their dtype.

    ``files`` holds the source's tensors by shard, their headers read and checked before a byte is
    written (``_read_tensors``). The output shards follow the source's, so unchanged tensors, registered
    as byte ranges, keep their offsets (mod 64 KiB). Cast tensors are read, a block of rows at a time,
    when the writer writes them; grown embeddings are registered at the end of their shard, so the
    offsets of the others stay as they are. A shard break follows the last tensor, so the caller's
    tensors (encoder, connector) go in a shard of their own.
    """
    names = {n for n, _ in skeleton.named_parameters()} | {n for n, _ in skeleton.named_buffers()}
    grow = {_param_name(skeleton, skeleton.get_input_embeddings())}
    if skeleton.get_output_embeddings() is not None:
        grow.add(_param_name(skeleton, skeleton.get_output_embeddings()))
    seen, out_dtype = set(), dtype
    for path, tensors in files.items():
        writer.end_shard()
        grown = []
        for key, t in tensors.items():
            part = src.adapter.part_of(key)
            if part in ("encoder", "connector"):
                continue
            llm_key = src.adapter.llm_key(key)
            if llm_key is None or llm_key not in names:
                raise VlmSwapError(
                    f"{path.name}: weight {key!r} does not belong to the {src.adapter.id} "
                    "layout (config/weights mismatch?)"
                )
            floating = t.dtype.is_floating_point
            if out_dtype is None and floating:
                out_dtype = t.dtype
            name, out = f"language_model.{llm_key}", dtype if dtype and floating else t.dtype
            if llm_key in grow and (new_ids or t.shape[0] != new_vocab):
                grown.append((name, t, out))
            else:
                _add_tensor(writer, name, t, out)
            seen.add(llm_key)
        for name, t, out in grown:
            shape = (new_vocab, *t.shape[1:])
            writer.add_stream(name, out, shape, partial(_resized, t, out, new_vocab, new_ids))
    writer.end_shard()
    tied = getattr(skeleton.config, "tie_word_embeddings", False)
    required = {n for n, _ in skeleton.named_parameters()}  # tied params appear once
    missing = sorted(required - seen - ({_param_name(skeleton, skeleton.get_output_embeddings())} if tied else set()))
    if missing:
        raise VlmSwapError(
            f"the source lacks {len(missing)} LLM weights (first: {missing[0]}): config/weights mismatch"
        )
    return out_dtype or torch.float32


def _add_encoder(writer: ShardWriter, loaded: LoadedEncoder, dtype: torch.dtype) -> None:
    """Register the encoder's tensors as ``encoder.*``, floating ones cast to ``dtype``: byte ranges of its
    checkpoint files (a new shard at each file, so that the copies keep their offsets mod 64 KiB) or, for an
    encoder loaded whole, its tensors in memory."""
    path = None
    for key, t in loaded.tensors().items():
        if t.raw is not None and t.raw.path != path:
            writer.end_shard()
            path = t.raw.path
        _add_tensor(writer, f"encoder.{key}", t, dtype if t.dtype.is_floating_point else t.dtype)


def llm_skeleton(text_cfg: PreTrainedConfig) -> torch.nn.Module:
    """The causal LM of ``text_cfg`` on the meta device (no memory, no initialisation): names and shapes."""
    with torch.device("meta"), no_init_weights():
        return AutoModelForCausalLM.from_config(text_cfg)


def check_llm_shapes(src: Source, files: dict[Path, dict[str, SourceTensor]], skeleton: torch.nn.Module) -> None:
    """Every LLM weight of the source has the shape its config implies (embedding rows may differ: resized)."""
    expected = {n: tuple(t.shape) for n, t in skeleton.state_dict().items()}
    embeddings = (skeleton.get_input_embeddings(), skeleton.get_output_embeddings())
    resized = {_param_name(skeleton, m) for m in embeddings if m is not None}
    for key, shape in ((k, t.shape) for tensors in files.values() for k, t in tensors.items()):
        llm_key = None if src.adapter.part_of(key) in ("encoder", "connector") else src.adapter.llm_key(key)
        want = expected.get(llm_key)
        if want is not None and (shape[1:] != want[1:] if llm_key in resized else shape != want):
            raise VlmSwapError(
                f"weight {key!r} of {src.path} has shape {list(shape)} where its config implies {list(want)} "
                "(config/weights mismatch)"
            )


def _read_tensors(src: Source, path: Path) -> dict[str, SourceTensor]:
    """The tensors of one weight file: a safetensors shard read lazily through its header, or (only with
    ``allow_pickle``) a pickle file read ``weights_only`` and streamed from memory the same way."""
    if path.suffix == ".safetensors":
        return safetensors_tensors(path)
    with src.open(path) as st:
        return {key: SourceTensor.in_memory(st.get_tensor(key)) for key in st.keys()}


def _param_name(model: torch.nn.Module, module: torch.nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return f"{name}.weight"
    raise VlmSwapError("cannot locate the embedding matrix of the LLM")


def _add_tensor(writer: ShardWriter, name: str, t: SourceTensor, dtype: torch.dtype) -> None:
    """Register ``t`` cast to ``dtype``: a raw byte copy when it is unchanged and lies in a file."""
    if dtype == t.dtype and t.raw is not None:
        writer.add_stream(name, dtype, t.shape, lambda: (t.raw,), source_offset=t.raw.offset)
    else:
        writer.add_stream(name, dtype, t.shape, lambda: _blocks(t, dtype))


def _blocks(t: SourceTensor, dtype: torch.dtype, start: int = 0, stop: int | None = None):
    """Rows ``[start, stop)`` of ``t`` cast to ``dtype``, ``ROW_BLOCK_BYTES`` at a time (a 0-d tensor whole)."""
    if not t.shape:
        yield t.read_rows(0, 1).to(dtype)
        return
    step = max(1, ROW_BLOCK_BYTES // max(1, t.row_bytes))
    stop = t.shape[0] if stop is None else stop
    for a in range(start, stop, step):
        yield t.read_rows(a, min(a + step, stop)).to(dtype)


def _mean_row(t: SourceTensor) -> torch.Tensor:
    """Mean over dim 0 of ``t`` in float64 (float32 within a block of rows, pairwise)."""
    total = torch.zeros(t.shape[1:], dtype=torch.float64)
    for block in _blocks(t, t.dtype):
        total += block.sum(0, dtype=torch.float32)
    return total / max(t.shape[0], 1)


def _resized(t: SourceTensor, dtype: torch.dtype, rows: int, new_ids: list[int]):
    """``[V, D] -> [rows, D]``: old rows kept bit-identical (a byte copy when not cast), rows of new
    tokens and rows past ``V`` set to the mean row of the source (rounded to its dtype). The mean is
    computed when the writer gets to this tensor, on its worker."""
    keep = min(rows, t.shape[0])
    mean = _mean_row(t).to(t.dtype).to(dtype)
    start = 0
    for i in [*sorted({i for i in new_ids if i < keep}), keep]:
        if start < i and t.raw is not None and dtype == t.dtype:
            yield FileRange(t.raw.path, t.raw.offset + start * t.row_bytes, (i - start) * t.row_bytes)
        elif start < i:
            yield from _blocks(t, dtype, start, i)
        if i < keep:
            yield mean[None]
        start = i + 1
    step = max(1, ROW_BLOCK_BYTES // max(1, mean.numel() * mean.element_size()))
    for a in range(keep, rows, step):
        yield mean.expand(min(step, rows - a), *mean.shape)


def _rows_per_image(loaded: LoadedEncoder) -> int:
    """Rows one default-size image gives (boundaries included), measured on a blank image."""
    from PIL import Image

    module = loaded.module
    inputs = module.preprocess(loaded.image_processor, [Image.new("RGB", (512, 512))], module.args, return_tensors="pt")
    return module.image_rows(inputs, 0, module.args) + (2 if module.uses_boundaries else 0)


def _chat_template(src: Source, tokenizer, trust_remote_code: bool) -> str | None:
    """The source's processor template (multimodal-aware), else the tokenizer's, else its adapter's default."""
    if src.adapter.id != "causal-lm":
        try:
            processor = AutoProcessor.from_pretrained(
                str(src.path), config=src.config, trust_remote_code=trust_remote_code
            )
            if getattr(processor, "chat_template", None):
                return processor.chat_template
        except (OSError, ValueError, TypeError):
            pass
    return tokenizer.chat_template or src.adapter.chat_template


def _generation_config(src: Source, tokenizer) -> GenerationConfig:
    try:
        gen = GenerationConfig.from_pretrained(str(src.path))
    except OSError:
        gen = GenerationConfig.from_model_config(src.text_config)
    gen.pad_token_id = tokenizer.pad_token_id
    return gen


def _versions() -> dict[str, str]:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}
