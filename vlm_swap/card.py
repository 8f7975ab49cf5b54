"""Model cards: the ``README.md`` of every output directory vlm-swap writes.

A card states where the model comes from and what was done to it: the source, the encoder and
connector, the recipe and data when it was trained, an evaluation table when scores are known,
the export format when it is an export, and the licence of each part. Facts come from the
directory's provenance (``vlm_swap.json``) or its base model's, from a run's ``recipe.yaml`` and
``run.json``, and from the caller. Licences are read from the parts' own cards (the ``license``
field of their README front matter) or configs when present locally, else the card says
"unknown — check the source"; the combined model is bound by all of them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from .checkpoints.atomic import read_json, write_text
from .checkpoints.model_files import read_provenance

CARD_NAME = "README.md"
UNKNOWN = "unknown — check the source"
FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n", re.DOTALL)


def write_model_card(
    directory: str | Path,
    *,
    base: str | Path | None = None,
    run: str | Path | None = None,
    export: dict | None = None,
    evaluation: dict | None = None,
) -> Path:
    """Write ``directory/README.md``; ``base`` is the model it was made from, ``run`` a training run."""
    directory = Path(directory)
    training = _run_facts(Path(run)) if run is not None else None
    if base is None and training is not None:
        base = training.get("model")
    prov = read_provenance(directory) or (read_provenance(base) if base else {})
    text = render(_title(directory), prov, training=training, export=export, evaluation=evaluation)
    path = directory / CARD_NAME
    write_text(path, text)
    return path


def render(title: str, prov: dict, *, training: dict | None, export: dict | None, evaluation: dict | None) -> str:
    source, encoder = prov.get("source"), prov.get("encoder")
    encoder_source = encoder.partition(":")[2] if encoder else None
    licences = {"LLM (from the source)": licence_of(source), "encoder (from its source)": licence_of(encoder_source)}
    known = {v for v in licences.values() if v != UNKNOWN}
    front = {
        "license": known.pop() if len(known) == 1 and len(set(licences.values())) == 1 else "other",
        "library_name": "transformers",
        "pipeline_tag": "image-text-to-text",
        "tags": ["vlm-swap"] + ([f"export-{export['format']}"] if export else []),
    }
    if source:
        front["base_model"] = [source]
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {title}", ""]
    lines += [
        f"Made with vlm-swap {__version__} (`{prov.get('command', 'unknown')}`): the vision side of `{source}` "
        "replaced by the encoder below, the LLM, tokenizer and chat template kept.",
        "",
        "| part | what |",
        "| --- | --- |",
        f"| source | `{source}` ({prov.get('source_kind', 'unknown')}) |",
        f"| LLM family | {prov.get('llm_family', 'unknown')} |",
        f"| encoder | `{encoder}` {_info(prov.get('encoder_info'))} |",
        f"| connector | {prov.get('connector', 'unknown')} |",
        f"| dtype | {prov.get('dtype', 'unknown')} |",
        "",
        "## Training",
        "",
    ]
    if training:
        lines += [
            f"- recipe: `{training.get('recipe', 'unknown')}`",
            f"- data: `{training.get('data', 'unknown')}`",
            f"- final training loss: {training.get('final_loss', 'unknown')}",
        ]
    else:
        lines.append("Not trained by vlm-swap yet: a freshly upgraded model has an untrained connector.")
    lines += ["", "## Evaluation", ""]
    if evaluation:
        lines += ["| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in evaluation.items()]
    else:
        lines.append("No scores recorded (`vlm-swap eval MODEL --data ...` measures them).")
    if export:
        lines += ["", "## Export", ""]
        lines += [f"- {k}: {', '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in export.items()]
    lines += ["", "## Licence", "", "The model is bound by the licences of all its parts.", ""]
    lines += ["| part | licence |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in licences.items()]
    return "\n".join(lines) + "\n"


def _title(directory: Path) -> str:
    """The output's name, also while it is written in atomic_dir's temporary sibling (checkpoints.atomic)."""
    m = re.fullmatch(r"\.(.+)\.tmp-\d+-[0-9a-f]+", directory.name)
    return m.group(1) if m else directory.name


def _info(info: dict | None) -> str:
    return f"({', '.join(f'{k}: {v}' for k, v in info.items())})" if info else ""


def _run_facts(run: Path) -> dict:
    facts: dict[str, Any] = {}
    if (run / "run.json").is_file():
        summary = read_json(run / "run.json")
        facts.update({k: summary[k] for k in ("model", "data", "final_loss") if k in summary})
    if (run / "recipe.yaml").is_file():
        facts["recipe"] = (yaml.safe_load((run / "recipe.yaml").read_text()) or {}).get("name", "unknown")
    return facts


def licence_of(ref: str | None) -> str:
    """The licence a part declares in its local card or config, else ``UNKNOWN``."""
    if not ref:
        return UNKNOWN
    path = Path(ref).expanduser()
    if not path.is_dir():
        path = _cached_snapshot(ref)
    if path is None:
        return UNKNOWN
    readme = path / CARD_NAME
    if readme.is_file():
        m = FRONT_MATTER.match(readme.read_text(encoding="utf-8", errors="replace"))
        meta = yaml.safe_load(m.group(1)) if m else None
        if isinstance(meta, dict) and meta.get("license"):
            name = meta.get("license_name")
            return f"{meta['license']} ({name})" if name else str(meta["license"])
    config = path / "config.json"
    if config.is_file():
        value = read_json(config).get("license")
        if value:
            return str(value)
    return UNKNOWN


def _cached_snapshot(ref: str) -> Path | None:
    """The local hub-cache snapshot of a catalog or hub id (no network), if any."""
    from .catalog import CATALOG

    hub_id = CATALOG.get(ref).hub_id if ref in CATALOG else ref
    if hub_id.count("/") != 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(hub_id, "config.json")
    except Exception:  # a malformed id is simply not cached
        return None
    return Path(found).parent if isinstance(found, str) else None
