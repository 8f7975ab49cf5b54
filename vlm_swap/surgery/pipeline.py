"""The upgrade pipeline: a source (VLM or bare LLM) + an encoder backend -> a SwapVLM checkpoint on disk.

``upgrade`` and ``build`` run these steps in order, each on what the ones before made, so the data go
one way, ending in ``checkpoints/``, which writes:

1. ``open_inputs``: the source opened through its layout (``source.open_source``), the encoder
   located, the tokenizer and chat template read (``source.read_parts``) and the target's tokens
   planned (``tokens.plan_target``). No weight is read.
2. ``streaming.plan_llm``: every LLM tensor of the output, checked against the LLM config, as a
   stream: a byte range of its source shard unless it is cast or grown. Nothing is written yet.
3. The LLM shards start writing in the background, into an atomic directory, while
4. ``open_encoder`` opens the encoder with its backend (its module on the meta device, its tensors
   those of its own checkpoint files, ``backends.streaming``; an encoder that loading would change
   beyond renaming keys, or pickle weights, is loaded whole) and runs the pair checks. A failed
   check stops the copy and the directory is removed.
5. The encoder's tensors and a fresh connector (encoder width -> LLM width, seeded) join the
   shards; the config, processor, generation config and provenance (``checkpoints.model_files``)
   and the model card are written, and the shards are closed.

The LLM stays bit-identical (unless ``dtype`` asks for a cast); only the embedding rows of added
placeholder tokens are appended. This is the only module that touches both the source and the new
encoder.
"""

from __future__ import annotations

import copy
import datetime
import platform
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import Progress

from .. import __version__
from ..backends import ENCODERS, EncoderSpec
from ..backends.base import LoadedEncoder, LoadOptions
from ..card import write_model_card
from ..checkpoints.atomic import atomic_dir
from ..checkpoints.guards import check_output_dir
from ..checkpoints.model_files import write_model_extras
from ..checkpoints.resolve import resolve_source
from ..checkpoints.shards import DEFAULT_SHARD_BYTES, ShardWriter
from ..connectors import CONNECTORS
from ..errors import VlmSwapError
from ..format.configuration_swap_vlm import SwapVLMConfig
from ..format.processing_swap_vlm import SwapVLMProcessor
from ..llms import LLMFamily, detect_family
from ..pairing import Check, EncoderFacts, LLMFacts, check_pair, require_compatible
from .source import Source, SourceParts, open_source, read_parts
from .streaming import check_llm_shapes, encoder_shards, llm_skeleton, plan_llm
from .tokens import Target, plan_target, template_is_text_only

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def upgrade(source: str, encoder: str, out: str | Path, **kwargs) -> Path:
    """Swap the vision side of an existing VLM for ``encoder`` (``KIND:SOURCE``); write ``out``."""
    return _write_upgraded_model(source, encoder, out, bare_llm=False, **kwargs)


def build(llm: str, encoder: str, out: str | Path, **kwargs) -> Path:
    """Build a VLM from a bare causal LM and ``encoder`` (``KIND:SOURCE``); write ``out``."""
    return _write_upgraded_model(llm, encoder, out, bare_llm=True, **kwargs)


@dataclass(frozen=True)
class EncoderSource:
    """The new encoder, located: its spec, its local checkpoint and whether its rows come with boundaries."""

    spec: EncoderSpec
    path: str
    boundaries: bool


@dataclass(frozen=True)
class Inputs:
    """What ``open_inputs`` reads and plans: everything an upgrade needs but the encoder's module and weights."""

    source_id: str  # the source as given (local path, hub id or catalog id)
    source: Source
    parts: SourceParts
    family: LLMFamily
    encoder: EncoderSource
    connector: str
    target: Target
    trust_remote_code: bool
    allow_pickle: bool


@dataclass(frozen=True)
class Prepared:
    """The inputs with the encoder opened (its weights not read) and the pair checks run; nothing written."""

    inputs: Inputs
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
) -> Inputs:
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
    parts = read_parts(src, trust_remote_code=trust_remote_code)
    text_config = src.text_config
    family = detect_family(text_config.model_type, parts.tokenizer.get_vocab())
    boundaries = backend.has_boundaries(enc_path, LoadOptions(trust_remote_code=trust_remote_code))
    return Inputs(
        source_id=source,
        source=src,
        parts=parts,
        family=family,
        encoder=EncoderSource(spec=spec, path=enc_path, boundaries=boundaries),
        connector=connector,
        target=plan_target(parts.tokenizer, text_config, family, src.image_token_id, boundaries),
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
    )


def open_encoder(inputs: Inputs) -> Prepared:
    """Open the encoder and run the pair checks (no writes). Its weights are not read: its module is built on the
    meta device and its tensors are those of its checkpoint files (``LoadedEncoder.weights``), unless they need
    more than renaming to load (then, or for pickle weights, it is loaded whole)."""
    enc, tokens = inputs.encoder, inputs.target.tokens
    options = LoadOptions(trust_remote_code=inputs.trust_remote_code, allow_pickle=inputs.allow_pickle, stream=True)
    loaded = ENCODERS.get(enc.spec.kind).load(enc.path, options)
    if loaded.module.uses_boundaries != bool(tokens.image_start):
        raise VlmSwapError(f"encoder backend {enc.spec.kind!r}: has_boundaries() disagrees with the loaded encoder")
    module = loaded.module
    rows = module.processing.rows_per_image(loaded.image_processor, module.args, module.uses_boundaries)
    facts_enc = EncoderFacts(enc.spec.source, enc.spec.kind, module.feature_dim, rows, loaded.info.get("text_family"))
    text_config = inputs.target.text_config
    facts_llm = LLMFacts(
        str(inputs.source_id),
        inputs.family.id,
        text_config.hidden_size,
        getattr(text_config, "max_position_embeddings", 0) or 0,
        tuple(tokens.added),
        tokens.pad_token,
    )
    return Prepared(inputs, loaded, check_pair(facts_enc, facts_llm, inputs.connector))


def prepare(source: str, encoder: str, **kwargs) -> Prepared:
    """Open the source, load the encoder, plan the tokens and run the pair checks (no writes);
    ``kwargs`` are those of ``open_inputs``."""
    return open_encoder(open_inputs(source, encoder, **kwargs))


def _write_upgraded_model(
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
    """Write the upgraded model (the steps of the module docstring). The LLM tensors are copied in the
    background while the encoder loads and the pair checks run: a failed check stops the copy, and the
    temporary directory is removed (``atomic_dir``), so nothing is left behind."""
    out = Path(out)
    if dtype not in DTYPES:
        raise VlmSwapError(f"unknown dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    if not 0 <= seed < 2**64:  # what torch.manual_seed takes
        raise VlmSwapError(f"--seed must be in [0, 2**64 - 1], not {seed}")
    paths = (source, encoder.partition(":")[2])
    check_output_dir(out, force, paths)
    inputs = open_inputs(
        source,
        encoder,
        bare_llm=bare_llm,
        connector=connector,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        revision=revision,
        encoder_revision=encoder_revision,
    )
    src, target = inputs.source, inputs.target
    skeleton = llm_skeleton(copy.deepcopy(src.text_config))
    files = src.shard_tensors()  # every header read and checked once
    check_llm_shapes(src, files, skeleton)  # before anything is written
    llm = plan_llm(src, files, skeleton, target.text_config.vocab_size, target.new_ids, DTYPES[dtype])
    with atomic_dir(out, force=force, inputs=paths) as tmp, ShardWriter(tmp, max_shard_bytes) as writer:
        writer.add_shards(llm.shards)  # the output shards follow the source's
        writer.end_shard()  # the encoder and the connector go in shards of their own
        writer.flush()  # the LLM shards are written from here on, while the encoder loads
        prepared = open_encoder(inputs)
        require_compatible(prepared.checks)
        writer.add_shards(encoder_shards(prepared.loaded, llm.dtype))
        for name, tensor in _fresh_connector(prepared, seed, llm.dtype).items():
            writer.add(name, tensor)
        _write_model_files(tmp, prepared, llm.dtype, command="build" if bare_llm else "upgrade")
        write_model_card(tmp)
        with Progress(transient=True, disable=not progress) as bar:
            task = bar.add_task("writing weights", total=writer.total_bytes)
            writer.close(advance=lambda n: bar.advance(task, n))
    return out


def _fresh_connector(p: Prepared, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The connector's tensors (``connector.*``): encoder width -> LLM width, initialised from ``seed``."""
    with torch.random.fork_rng(devices=[]):  # a seeded connector init, the caller's RNG untouched
        torch.manual_seed(seed)
        conn = CONNECTORS.get(p.inputs.connector).build(
            p.loaded.module.feature_dim, p.inputs.target.text_config.hidden_size
        )
    return {f"connector.{k}": v.detach() for k, v in conn.to(dtype).state_dict().items()}


def _write_model_files(tmp: Path, p: Prepared, dtype: torch.dtype, *, command: str) -> None:
    """The config, processor, generation config and provenance of the upgraded model."""
    inputs, loaded = p.inputs, p.loaded
    target, tokens, tokenizer = inputs.target, inputs.target.tokens, inputs.parts.tokenizer
    kind, args = inputs.encoder.spec.kind, loaded.module.args
    config = SwapVLMConfig(
        text_config=target.text_config,
        encoder_config=loaded.config,
        encoder_kind=kind,
        encoder_args=args,
        encoder_dim=loaded.module.feature_dim,
        connector=inputs.connector,
        image_token_id=target.feature_ids[tokens.image_token],
        feature_token_ids=list(target.feature_ids.values()),
        dtype=dtype,
    )
    config.architectures = ["SwapVLMForConditionalGeneration"]
    chat_template = inputs.parts.chat_template
    processor = SwapVLMProcessor(
        image_processor=loaded.image_processor,
        tokenizer=tokenizer,
        chat_template=chat_template,
        image_token=tokens.image_token,
        image_start=tokens.image_start,
        image_end=tokens.image_end,
        encoder_kind=kind,
        encoder_args=args,
        text_only_template=template_is_text_only(tokenizer, chat_template, tokens.image_token),
    )
    generation = inputs.parts.generation_config
    generation.pad_token_id = tokenizer.pad_token_id
    provenance = {
        "vlm_swap_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "source": str(inputs.source_id),
        "source_kind": inputs.source.layout.id,
        "llm_family": inputs.family.id,
        "encoder": str(inputs.encoder.spec),
        "encoder_info": loaded.info,
        "connector": inputs.connector,
        "dtype": str(dtype).replace("torch.", ""),
        "added_tokens": tokens.added,
        "pad_token": tokens.pad_token,
        "versions": _versions(),
    }
    write_model_extras(tmp, config=config, processor=processor, generation_config=generation, provenance=provenance)


def _versions() -> dict[str, str]:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}
