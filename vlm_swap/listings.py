"""Listings for ``vlm-swap list`` and ``vlm-swap pairs``: plain dicts, JSON-able, keyed by id.

Everything here is data or pure Python: listing and pairing import neither torch nor transformers.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict

from .backends import ENCODERS
from .catalog import CATALOG
from .connectors import CONNECTORS
from .errors import VlmSwapError
from .llms import LLMS
from .pairing import as_dicts, check_pair, encoder_facts, llm_facts, verdict
from .surgery.layouts import SOURCES


def listing(what: str, pattern: str = "*") -> dict[str, dict]:
    if what == "encoders":
        return {  # without importing the backends (and torch)
            k: {"help": c.help, "inputs": ", ".join(c.input_names), "boundary_rows": c.uses_boundaries}
            for k, c in ENCODERS.listed(pattern)
        }
    if what == "connectors":
        return {k: {"help": c.help} for k, c in CONNECTORS.items(pattern)}
    if what == "llms":
        return {
            k: {
                "help": f.help,
                "model_types": ", ".join(f.model_types),
                "image_token": f.image_token,
                "vision_start": f.vision_start,
                "vision_end": f.vision_end,
            }
            for k, f in LLMS.items(pattern)
        }
    if what == "sources":
        return {k: {"help": s.help, "architectures": ", ".join(s.architectures)} for k, s in SOURCES.items(pattern)}
    if what == "catalog":
        return {k: {key: v for key, v in asdict(e).items() if key != "id"} for k, e in CATALOG.items(pattern)}
    if what == "recipes":
        from .train.recipe import load_recipe, shipped_recipes

        rows = {}
        for name in shipped_recipes():
            r = load_recipe(name)
            stages = " -> ".join(stage.summary() for stage in r.stages)
            rows[name] = {"help": r.description, "stages": stages}
        return {k: v for k, v in rows.items() if fnmatch.fnmatchcase(k, pattern)}
    raise VlmSwapError(f"nothing to list under {what!r}")


def pair_table(encoder: str | None, llm: str | None, connector: str = "mlp2x-relu") -> list[dict]:
    """Every (encoder, LLM) pair of the catalog (or the ones named), best first, with checks."""
    encoders = [CATALOG.get(encoder)] if encoder else [e for _, e in CATALOG.items() if e.role in ("perceiver", "vit")]
    llms = [CATALOG.get(llm)] if llm else [e for _, e in CATALOG.items() if e.role == "llm"]
    for e in encoders:
        if e.role not in ("perceiver", "vit"):
            raise VlmSwapError(f"{e.id} is a {e.role}, not an encoder (perceiver or ViT)")
    for m in llms:
        if m.role != "llm":
            raise VlmSwapError(f"{m.id} is a {m.role}, not an LLM")
    rows = []
    for e in encoders:
        for m in llms:
            checks = check_pair(encoder_facts(e), llm_facts(m), connector)
            same = e.role == "perceiver" and e.family == m.family
            rows.append(
                {
                    "encoder": e.id,
                    "llm": m.id,
                    "verdict": verdict(checks),
                    "same_family": same,
                    "checks": as_dicts(checks),
                }
            )
    rank = {"ok": 0, "warn": 1, "fail": 2}
    rows.sort(key=lambda r: (r["llm"], rank[r["verdict"]], not r["same_family"], r["encoder"]))
    for m in llms:
        pick = recommend_perceiver(m, [r for r in rows if r["llm"] == m.id])
        for r in rows:
            if r["llm"] == m.id:
                r["recommended"] = pick is not None and r["encoder"] == pick["encoder"]
                if r["recommended"]:
                    r["why"] = pick["why"]
    return rows


def recommend_perceiver(llm, rows: list[dict]) -> dict | None:
    """The perceiver to use with ``llm`` among ``rows`` (its pairs): same text family first, then the
    fewest rows per image among the pairs that fit; None when no perceiver fits."""
    rank = {"ok": 0, "warn": 1}
    fitting = [r for r in rows if CATALOG.get(r["encoder"]).role == "perceiver" and r["verdict"] in rank]
    if not fitting:
        return None

    def rows_per_image(r: dict) -> int:
        return encoder_facts(CATALOG.get(r["encoder"])).tokens_per_image

    best = min(fitting, key=lambda r: (not r["same_family"], rank[r["verdict"]], rows_per_image(r), r["encoder"]))
    n = rows_per_image(best)
    if best["same_family"]:
        why = f"same text family ({llm.family}) as the LLM: deepest pre-alignment expected; {n} rows per image"
    else:
        why = (
            f"no perceiver of the {llm.family} family fits; fewest rows per image ({n}) among those that fit "
            "(only hidden states cross, so any family works)"
        )
    return {"encoder": best["encoder"], "why": why}
