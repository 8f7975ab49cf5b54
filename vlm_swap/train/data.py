"""Training data: LLaVA JSON/JSONL and ``messages`` JSONL, validated whole before training.

Rows become samples (messages + image paths). Encoding renders the target's chat template, puts
the loss on assistant tokens only (not the prompt, not the image placeholders, not an empty think
block), expands each image placeholder with the processor's own rule, and never truncates into a
placeholder/feature mismatch: a sample whose image tokens would be cut by ``max_length`` is
dropped and counted. Every problem is reported with its line number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import torch

from ..errors import VlmSwapError
from ..images import load_image
from .features import content_key

IGNORE = -100
ROLE_OF = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class DataError(VlmSwapError):
    """A dataset that cannot be used; the message lists bad rows with their line numbers."""


class RowError(ValueError):
    """One malformed row (the message is the cause; the caller adds the line number)."""


@dataclass
class Sample:
    line: int
    messages: list[dict]  # role + content list of {"type": "image"} / {"type": "text", "text": ...}
    images: list[Path]
    length: int = 0  # tokens once encoded (at validation), for length-grouped batches


@dataclass
class DataReport:
    rows: int = 0
    kept: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)
    too_long: list[int] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.kept}/{self.rows} rows kept, {len(self.bad)} malformed, {len(self.too_long)} too long"
        if self.too_long:
            lines = ", ".join(map(str, self.too_long[:10])) + (", ..." if len(self.too_long) > 10 else "")
            text += f" (dropped: line {lines})"
        return text


def read_rows(path: Path) -> list[tuple[int, Any]]:
    """(line number, parsed row or RowError) for a JSONL file or a JSON array (LLaVA's format)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.lstrip().startswith("["):
        try:
            return [(i + 1, row) for i, row in enumerate(json.loads(text))]
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((lineno, json.loads(line)))
        except json.JSONDecodeError as exc:
            rows.append((lineno, RowError(f"bad JSON ({exc.msg})")))
    return rows


def _text_with_images(text: str) -> list[dict]:
    """LLaVA-style text with ``<image>`` markers -> content entries."""
    parts = text.split("<image>")
    content: list[dict] = []
    for i, part in enumerate(parts):
        if i > 0:
            content.append({"type": "image"})
        part = part.strip("\n") if i > 0 or len(parts) > 1 else part
        if part:
            content.append({"type": "text", "text": part})
    return content


def _role(value: Any) -> bool:
    return isinstance(value, str) and value in ROLE_OF


def parse_row(row: Any, images_dir: Path | None, max_images: int) -> tuple[list[dict], list[Path]]:
    """A raw row -> (messages, image paths); raises RowError naming the cause."""
    if isinstance(row, RowError):
        raise row
    if not isinstance(row, dict):
        raise RowError("a row must be a JSON object")
    if "conversations" in row:
        turns = row["conversations"]
        if not isinstance(turns, list) or not turns:
            raise RowError("'conversations' must be a non-empty list")
        messages = []
        for t in turns:
            if not isinstance(t, dict) or not _role(t.get("from")) or not isinstance(t.get("value"), str):
                raise RowError("each conversation turn needs 'from' (human/gpt/system) and a string 'value'")
            messages.append({"role": ROLE_OF[t["from"]], "content": _text_with_images(t["value"])})
        image = row.get("image")
        paths = [] if image is None else [image] if isinstance(image, str) else image
        if not isinstance(paths, list):
            raise RowError("'image' must be a path or a list of paths")
    elif "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise RowError("'messages' must be a non-empty list")
        images = row.get("images") or []
        if not isinstance(images, list):
            raise RowError("'images' must be a list of paths")
        messages, paths = [], list(images)
        for m in msgs:
            if not isinstance(m, dict) or not _role(m.get("role")):
                raise RowError("each message needs a 'role' of user/assistant/system")
            content = m.get("content")
            if isinstance(content, str):
                items = _text_with_images(content)
            elif isinstance(content, list):
                items = []
                for item in content:
                    kind = item.get("type") if isinstance(item, dict) else None
                    if kind == "image":
                        items.append({"type": "image"})
                        if isinstance(item.get("image"), str):
                            paths.append(item["image"])
                    elif kind == "text" and isinstance(item.get("text"), str):
                        items.append({"type": "text", "text": item["text"]})
                    else:
                        raise RowError("content entries must be {'type': 'image'} or {'type': 'text', 'text': ...}")
            else:
                raise RowError("message content must be a string or a list")
            messages.append({"role": ROLE_OF[m["role"]], "content": items})
    else:
        raise RowError("a row needs 'conversations' (LLaVA) or 'messages'")
    if not all(isinstance(p, str) and p for p in paths):
        raise RowError("image paths must be non-empty strings")
    n_placeholders = sum(1 for m in messages for c in m["content"] if c["type"] == "image")
    if paths and n_placeholders == 0:
        raise RowError("the row has an image but no <image> placeholder")
    if n_placeholders != len(paths):
        raise RowError(f"{n_placeholders} image placeholders but {len(paths)} images")
    if len(paths) > max_images:
        raise RowError(f"{len(paths)} images where at most {max_images} allowed")
    if not any(m["role"] == "assistant" and any(c.get("text", "").strip() for c in m["content"]) for m in messages):
        raise RowError("no assistant answer to train on")
    resolved = []
    for p in paths:
        full = (images_dir / p) if images_dir is not None else Path(p)
        if not full.is_file():
            raise RowError(f"missing image {p}")
        resolved.append(full)
    return messages, resolved


class TooLong(ValueError):
    """The sample's image tokens do not fit max_length (dropped, never truncated)."""


class Encoder:
    """Sample -> model inputs with labels, using the upgraded model's processor."""

    def __init__(self, processor, max_length: int, empty_think: str | None = None):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.max_length = max_length
        self.empty_think = empty_think
        self.image_token_id = processor.image_token_id

    def _render(self, messages: list[dict], **kwargs) -> str:
        try:
            text = self.processor.apply_chat_template(messages, tokenize=False, **kwargs)
        except jinja2.TemplateError as exc:  # e.g. templates that require alternating user/assistant turns
            raise RowError(f"the chat template refuses this conversation: {exc}") from exc
        normalize = getattr(self.processor, "normalize_text", None)  # SwapVLMProcessor; others need none
        return normalize(text) if normalize else text

    def answer_spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        full = self._render(messages)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            if i == 0:
                raise RowError("the conversation starts with an assistant turn: no prompt for it")
            before = self._render(messages[:i], add_generation_prompt=True)
            through = self._render(messages[: i + 1])
            if not (full.startswith(through) and through.startswith(before)):
                raise RowError("the chat template does not render turns as prefixes; cannot mask the prompt")
            start = len(before)
            if self.empty_think and full.startswith(self.empty_think, start):
                start += len(self.empty_think)
            spans.append((start, len(through)))
        return full, spans

    @staticmethod
    def _close_answer(ids: list[int], labels: list[int], eos: int | None) -> None:
        """Templates that do not end an answer with eos (LLaVA-1.5's) get one, trained on, so the model stops."""
        if eos is not None and (not labels or labels[-1] != eos):
            ids.append(eos)
            labels.append(eos)

    def __call__(self, sample: Sample, images=None) -> dict[str, torch.Tensor]:
        text, spans = self.answer_spans(sample.messages)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        pictures = images if images is not None else [load_image(p) for p in sample.images]
        # a SwapVLM processor preprocesses per encoder kind; a source's own processor (eval of a llava) directly
        process = getattr(self.processor, "process_images", None) or self.processor.image_processor
        image_inputs = process(pictures, return_tensors="pt") if pictures else None
        ids: list[int] = []
        labels: list[int] = []
        last_image_end = -1
        k = 0
        eos = self.tokenizer.eos_token_id
        open_spans = list(spans)  # answer spans not yet closed by an eos token
        for tok, (s, e) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
            while open_spans and s >= open_spans[0][1] and e > s:
                self._close_answer(ids, labels, eos)
                open_spans.pop(0)
            if tok == self.image_token_id:
                if image_inputs is None or k >= len(pictures):
                    raise RowError("more image placeholders in the rendered prompt than images")
                expansion = self.processor.replace_image_token(image_inputs, k)
                exp_ids = self.tokenizer(expansion, add_special_tokens=False)["input_ids"]
                ids.extend(exp_ids)
                labels.extend([IGNORE] * len(exp_ids))
                last_image_end = len(ids)
                k += 1
                continue
            ids.append(tok)
            inside = any(s >= a and e <= b and e > s for a, b in spans)
            labels.append(tok if inside else IGNORE)
            if inside and tok == eos and open_spans:
                open_spans.pop(0)
        for _ in open_spans:
            self._close_answer(ids, labels, eos)
        if k != len(pictures):
            raise RowError(f"the rendered prompt holds {k} image placeholders for {len(pictures)} images")
        if last_image_end > self.max_length:
            raise TooLong(f"{last_image_end} tokens up to the last image > max_length {self.max_length}")
        ids, labels = ids[: self.max_length], labels[: self.max_length]
        if all(lab == IGNORE for lab in labels):
            raise TooLong(f"no answer token within max_length {self.max_length}")
        out = {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }
        if image_inputs is not None:
            out.update({k: v for k, v in image_inputs.items() if isinstance(v, torch.Tensor)})
        return out


def load_dataset(
    path: str | Path,
    images_dir: str | Path | None,
    encoder: Encoder,
    *,
    max_images: int = 1,
    on_bad_rows: str = "fail",
    progress=None,
) -> tuple[list[Sample], DataReport]:
    """Parse and validate every row before training; fail on bad rows or skip them (``on_bad_rows``)."""
    if on_bad_rows not in ("fail", "skip"):
        raise DataError(f"on_bad_rows must be fail or skip, not {on_bad_rows!r}")
    images_dir = Path(images_dir) if images_dir is not None else None
    if images_dir is not None and not images_dir.is_dir():
        raise DataError(f"images folder not found: {images_dir}")
    rows = read_rows(Path(path))
    report = DataReport(rows=len(rows))
    samples = []
    for lineno, row in rows if progress is None else progress(rows):
        try:
            messages, paths = parse_row(row, images_dir, max_images)
            sample = Sample(lineno, messages, paths)
            sample.length = len(encoder(sample)["input_ids"])
        except TooLong:
            report.too_long.append(lineno)
            continue
        except (RowError, VlmSwapError) as exc:
            report.bad.append((lineno, str(exc)))
            continue
        samples.append(sample)
    report.kept = len(samples)
    if report.bad and on_bad_rows == "fail":
        shown = "; ".join(f"line {n}: {msg}" for n, msg in report.bad[:5])
        more = f" (and {len(report.bad) - 5} more)" if len(report.bad) > 5 else ""
        raise DataError(f"{path}: {len(report.bad)} bad rows — {shown}{more}; pass --skip-bad-rows to skip them")
    if not samples:
        raise DataError(f"{path}: no usable rows ({report.summary()})")
    return samples, report


class SwapDataset(torch.utils.data.Dataset):
    def __init__(self, samples: list[Sample], encoder: Encoder):
        self.samples = samples
        self.encoder = encoder

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def lengths(self) -> list[int]:
        return [s.length for s in self.samples]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.encoder(self.samples[i])


class Collator:
    """Right-pads text, concatenates image tensors along dim 0 in sample order.

    With ``feature_keys`` on, the batch also holds ``feature_keys``: per sample, the content hash of its
    image tensors (None without images), the key of the frozen-encoder feature cache.
    """

    def __init__(self, pad_token_id: int, feature_keys: bool = False):
        self.pad_token_id = pad_token_id
        self.feature_keys = feature_keys

    def __call__(self, features: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        width = max(f["input_ids"].shape[0] for f in features)
        n = len(features)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, f in enumerate(features):
            L = f["input_ids"].shape[0]
            input_ids[i, :L] = f["input_ids"]
            labels[i, :L] = f["labels"]
            mask[i, :L] = 1
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": mask}
        image_keys = sorted({k for f in features for k in f} - set(batch))
        for key in image_keys:
            parts = [f[key] for f in features if key in f]
            batch[key] = torch.cat(parts, dim=0)
        if self.feature_keys:
            images = [{k: f[k] for k in image_keys if k in f} for f in features]
            batch["feature_keys"] = [content_key(im) if im else None for im in images]
        return batch


def padding_fraction(batches) -> float:
    """Pad tokens / all tokens over collated batches (their ``attention_mask``)."""
    pad = total = 0
    for batch in batches:
        mask = batch["attention_mask"]
        pad += int((mask == 0).sum())
        total += mask.numel()
    return pad / total if total else 0.0
