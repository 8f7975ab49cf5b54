"""The shapes tasks' document functions (lmms-eval imports this file through ``!function utils.*``).

A document is a row of ``qa.json`` / ``mc.json``: the LLaVA format that ``vlm-swap eval`` reads, with
``options`` on the multiple-choice rows, so both tools score the very same rows.
"""

from pathlib import Path

from PIL import Image

from vlm_swap.evaluation import normalize

HERE = Path(__file__).resolve().parent


def doc_to_visual(doc):
    return [Image.open(HERE / doc["image"]).convert("RGB")]


def doc_to_text(doc):
    return doc["conversations"][0]["value"].replace("<image>", "").strip()


def doc_to_target(doc):
    return doc["conversations"][1]["value"]


def doc_to_choice(doc):
    return doc["options"]


def process_results(doc, results):
    """Exact match as ``vlm-swap eval`` counts it."""
    return {"exact_match": float(normalize(results[0]) == normalize(doc_to_target(doc)))}
