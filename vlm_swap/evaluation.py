"""``vlm-swap eval``: image-question accuracy and a text-only score, before/after.

Image questions are LLaVA/messages rows whose last assistant turn is the reference. A row with
``options`` (a list of strings) is scored as multiple choice: the option with the highest mean
log-likelihood is the model's answer. Other rows are scored by exact match of the greedy answer
(lower-cased, stripped of surrounding spaces and end punctuation). The text-only scores are the
exact-match accuracy and the perplexity of the answers of text-only rows (no images), to measure
how much of the LLM's text ability a fine-tune has kept against the source model. With
``per_row`` each accuracy comes with its rows' 0/1 outcomes (``correct``, in row order), from which
``vlm-swap compare`` draws its bootstrap intervals.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress

from .data import IGNORE, Sample, SampleEncoder, load_dataset
from .errors import VlmSwapError
from .generation import left_padded
from .images import load_image


def normalize(text: str) -> str:
    text = text.strip().splitlines()[0] if text.strip() else ""
    return re.sub(r"[\s.!?,;:]+$", "", text.strip().lower())


def _prompt_and_reference(sample: Sample) -> tuple[list[dict], str]:
    last = max(i for i, m in enumerate(sample.messages) if m["role"] == "assistant")
    reference = "".join(c.get("text", "") for c in sample.messages[last]["content"])
    return sample.messages[:last], reference


@torch.inference_mode()
def qa_accuracy(
    model,
    processor,
    samples: list[Sample],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 8,
    progress: bool = False,
    label: str = "eval",
    per_row: bool = False,
) -> dict[str, Any]:
    """Exact-match accuracy of greedy answers; returns accuracy, count, a few examples (and, with
    ``per_row``, every row's 0/1 outcome)."""
    tok = processor.tokenizer
    flags: list[int] = []
    examples = []
    with left_padded(tok), Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task(label, total=len(samples))
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            texts, images, refs = [], [], []
            for s in chunk:
                messages, ref = _prompt_and_reference(s)
                texts.append(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
                images.extend(load_image(p) for p in s.images)
                refs.append(ref)
            inputs = processor(
                images=images or None, text=texts, padding=True, add_special_tokens=False, return_tensors="pt"
            ).to(model.device)
            out = model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
            )
            answers = tok.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            for ans, ref in zip(answers, refs, strict=True):
                ok = normalize(ans) == normalize(ref)
                flags.append(int(ok))
                if len(examples) < 5:
                    examples.append({"answer": ans.strip(), "reference": ref, "correct": ok})
            bar.advance(task, len(chunk))
    return _accuracy(flags, per_row, examples=examples)


def _accuracy(flags: list[int], per_row: bool, **extra) -> dict[str, Any]:
    out = {"accuracy": sum(flags) / max(len(flags), 1), "n": len(flags), **extra}
    return {**out, "correct": flags} if per_row else out


@torch.inference_mode()
def choice_accuracy(
    model, encoder: SampleEncoder, rows: list[tuple[Sample, list[str]]], *, per_row: bool = False
) -> dict[str, Any]:
    """Multiple choice: the option with the highest mean log-likelihood of its answer tokens."""
    flags: list[int] = []
    for sample, options in rows:
        messages, ref = _prompt_and_reference(sample)
        scores = []
        for opt in options:
            s = Sample(
                sample.line,
                [*messages, {"role": "assistant", "content": [{"type": "text", "text": opt}]}],
                sample.images,
            )
            scores.append(-_mean_nll(model, encoder(s)))
        flags.append(int(normalize(options[max(range(len(options)), key=scores.__getitem__)]) == normalize(ref)))
    return _accuracy(flags, per_row)


def _mean_nll(model, enc: dict[str, torch.Tensor]) -> float:
    batch = {k: (v.unsqueeze(0) if k in ("input_ids", "labels") else v).to(model.device) for k, v in enc.items()}
    return float(model(**batch).loss)


@torch.inference_mode()
def text_perplexity(model, encoder: SampleEncoder, samples: list[Sample]) -> dict[str, Any]:
    """Perplexity of the answer tokens of text-only rows (token-weighted)."""
    total, count = 0.0, 0
    for s in samples:
        enc = encoder(s)
        n = int((enc["labels"][1:] != IGNORE).sum())
        total += _mean_nll(model, enc) * n
        count += n
    if count == 0:
        raise VlmSwapError("the text data has no answer tokens to score")
    return {"perplexity": math.exp(total / count), "tokens": count}


def score(
    model,
    processor,
    data: Path | None,
    images: Path | None,
    text_data: Path | None,
    *,
    empty_think: str | None = None,
    limit: int | None = None,
    progress: bool = False,
    label: str = "eval",
    allow_absolute_paths: bool = False,
    per_row: bool = False,
    on_bad_rows: str = "fail",
) -> dict[str, Any]:
    """All scores of one model on the given data (``per_row``: with every row's 0/1 outcome;
    ``on_bad_rows="skip"``: the valid rows are scored)."""
    encoder = SampleEncoder(processor, 4096, empty_think)
    result: dict[str, Any] = {}
    if data is not None:
        samples, report = load_dataset(
            data, images, encoder, max_images=8, on_bad_rows=on_bad_rows, allow_absolute_paths=allow_absolute_paths
        )
        samples = list(samples[:limit] if limit else samples)
        mc = [(s, s.options) for s in samples if s.options]
        open_ended = [s for s in samples if not s.options]
        if open_ended:
            result.update(qa_accuracy(model, processor, open_ended, progress=progress, label=label, per_row=per_row))
        if mc:
            result["choice"] = choice_accuracy(model, encoder, mc, per_row=per_row)
            if not open_ended:
                result["accuracy"] = result["choice"]["accuracy"]
    if text_data is not None:
        samples, _ = load_dataset(text_data, None, encoder, max_images=0, on_bad_rows=on_bad_rows)
        samples = list(samples[:limit] if limit else samples)
        result["text"] = {
            **qa_accuracy(model, processor, samples, progress=progress, label=f"{label} (text)", per_row=per_row),
            **text_perplexity(model, encoder, samples),
        }
    return result


def flat_scores(result: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of a ``score`` result, for tables."""
    out = {}
    if "accuracy" in result:
        out["accuracy"] = result["accuracy"]
    if "choice" in result:
        out["choice accuracy"] = result["choice"]["accuracy"]
    if "text" in result:
        out["text accuracy"] = result["text"]["accuracy"]
        out["text perplexity"] = result["text"]["perplexity"]
    return out


REPORT_KEYS = {"model", "baseline"}


def check_report_path(report: Path, inputs: tuple) -> None:
    """Refuse a report path that is (or lies inside) an input, and an existing file that is not a
    previous ``vlm-swap eval`` report (a JSON object with only ``model`` / ``baseline`` entries)."""
    from .checkpoints.guards import check_not_an_input, check_writable_parent

    check_not_an_input(report, inputs)
    check_writable_parent(report)  # before minutes of scoring, not after
    if report.is_dir():
        raise VlmSwapError(f"--out {report} is a directory; name a JSON file")
    if report.exists():
        try:
            previous = json.loads(report.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            previous = None
        if not isinstance(previous, dict) or not previous or not set(previous) <= REPORT_KEYS:
            raise VlmSwapError(f"refusing to overwrite {report}: it is not a vlm-swap eval report")


def evaluate(
    model: str,
    data: Path | None,
    images: Path | None,
    text_data: Path | None,
    *,
    baseline: str | None = None,
    limit: int | None = None,
    report: Path | None = None,
    progress: bool = False,
    allow_pickle: bool = False,
    allow_absolute_paths: bool = False,
    on_bad_rows: str = "fail",
) -> dict[str, Any]:
    """Score ``model`` (and ``baseline``) on the same data; write ``report`` as JSON when given."""
    from .api import load_any
    from .checkpoints.atomic import write_json

    if report is not None:
        check_report_path(Path(report), (model, baseline, data, images, text_data))
    result: dict[str, Any] = {}
    for name, path in (("baseline", baseline), ("model", model)):
        if path is None:
            continue
        m, processor = load_any(path, allow_pickle=allow_pickle)
        result[name] = {
            "path": str(path),
            **score(
                m,
                processor,
                data,
                images,
                text_data,
                limit=limit,
                progress=progress,
                label=name,
                allow_absolute_paths=allow_absolute_paths,
                on_bad_rows=on_bad_rows,
            ),  # fmt: skip
        }
        del m
    if report is not None:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(report), result)
    return result
