"""Data formats: the files users have, read row by row, and rows normalised to messages + images.

Inputs: a LLaVA JSON file (one large array, streamed element by element, never read whole), JSONL
(LLaVA rows or ``messages`` rows), parquet, and a directory written by 🤗 ``datasets``'
``save_to_disk``. Images are paths (relative to the images folder) or bytes in the table (a
``{"bytes", "path"}`` struct as 🤗 ``datasets``' ``Image`` feature stores it, or raw bytes).

Every row keeps a line number for its errors: the line of a JSONL file, the element number of a
JSON array (1-based), the row number of a table (1-based). An image path may not resolve outside
the images folder (``../x.png``, ``/etc/passwd``) unless absolute paths are allowed explicitly;
symlinks inside the folder are followed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import VlmSwapError

ROLE_OF = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
CHUNK_CHARS = 8 * 2**20  # how much of a JSON array is held at once while streaming it

#: an image as the index and loader carry it: an absolute path, or the encoded bytes from the table
ImageRef = str | bytes


class DataError(VlmSwapError):
    """A dataset that cannot be used; the message lists bad rows with their line numbers."""


class RowError(ValueError):
    """One malformed row (the message is the cause; the caller adds the line number)."""


@dataclass
class Sample:
    line: int
    messages: list[dict]  # role + content list of {"type": "image"} / {"type": "text", "text": ...}
    images: list[ImageRef]
    length: int = 0  # tokens once encoded (known from the index), for length-grouped batches and packing
    options: list[str] | None = field(default=None)  # multiple-choice options of an eval row


def source_kind(path: Path) -> str:
    """``json`` (an array), ``jsonl``, ``parquet`` or ``datasets`` (a ``save_to_disk`` directory)."""
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return "datasets"
        raise DataError(f"{path} is a folder but not a saved 🤗 datasets directory (no dataset_info.json)")
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if path.suffix == ".parquet":
        return "parquet"
    with open(path, encoding="utf-8", errors="replace") as f:
        head = f.read(4096).lstrip()
    return "json" if head.startswith("[") else "jsonl"


def iter_text_rows(path: Path, kind: str) -> Iterator[dict[str, Any]]:
    """``{"line", "row"}`` with the raw JSON text of each row of a JSON array or JSONL file."""
    if kind == "jsonl":
        with open(path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield {"line": lineno, "row": line}
        return
    yield from _json_array(path)


def loads_row(text: str) -> Any:
    """A row's JSON text -> the row, or a ``RowError`` naming what is wrong with the JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        return RowError(f"bad JSON ({exc.msg})")


def read_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, row or ``RowError``) of a JSON array or JSONL file, streamed: for checks of small files
    (evaluation rows before a long run); training data goes through the cached index."""
    kind = source_kind(path)
    if kind not in ("json", "jsonl"):
        raise DataError(f"{path}: a {kind} table, not a JSON or JSONL file")
    for item in iter_text_rows(path, kind):
        yield item["line"], loads_row(item["row"])


def _json_array(path: Path) -> Iterator[dict[str, Any]]:
    """Elements of a JSON array, decoded one at a time from a bounded buffer (a 1M-row file is never
    held whole); each element is yielded as its own text, to be parsed again where it is validated."""
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8", errors="replace") as f:
        buf, pos, eof = f.read(CHUNK_CHARS), 0, False
        pos = _skip_space(buf, pos)
        if buf[pos : pos + 1] != "[":
            raise DataError(f"{path}: not a JSON array")
        pos, index, need_comma = pos + 1, 0, False
        while True:
            pos = _skip_space(buf, pos)
            if pos >= len(buf) - 1 and not eof:  # keep at least one character ahead of the parser
                more = f.read(CHUNK_CHARS)
                eof = not more
                buf, pos = buf[pos:] + more, 0
                continue
            if buf[pos : pos + 1] == "]":
                return
            if need_comma:
                if buf[pos : pos + 1] != ",":
                    raise DataError(f"{path}: not valid JSON (expected ',' or ']' after row {index})")
                pos, need_comma = pos + 1, False
                continue
            try:
                _, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as exc:
                if eof:
                    raise DataError(f"{path}: not valid JSON ({exc.msg} in row {index + 1})") from exc
                more = f.read(CHUNK_CHARS)  # the element runs past the buffer: read on and retry
                eof = not more
                buf, pos = buf[pos:] + more, 0
                continue
            index += 1
            yield {"line": index, "row": buf[pos:end]}
            pos, need_comma = end, True
            if pos > CHUNK_CHARS:  # drop what was consumed
                buf, pos = buf[pos:], 0


def _skip_space(buf: str, pos: int) -> int:
    while pos < len(buf) and buf[pos] in " \t\r\n":
        pos += 1
    return pos


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


def _image_item(value: Any) -> Any:
    """An image entry of a row: a path, raw bytes, or a ``{"bytes", "path"}`` struct (bytes win)."""
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        return value.get("bytes") or value.get("path")
    return value


def _turns(row: dict) -> tuple[list[dict], list]:
    turns = row["conversations"]
    if not isinstance(turns, list) or not turns:
        raise RowError("'conversations' must be a non-empty list")
    messages = []
    for t in turns:
        if not isinstance(t, dict) or not _role(t.get("from")) or not isinstance(t.get("value"), str):
            raise RowError("each conversation turn needs 'from' (human/gpt/system) and a string 'value'")
        messages.append({"role": ROLE_OF[t["from"]], "content": _text_with_images(t["value"])})
    image = row.get("image")
    if image is None:
        return messages, []
    items = image if isinstance(image, list) else [image]
    if not all(isinstance(_image_item(p), (str, bytes)) for p in items):
        raise RowError("'image' must be a path or a list of paths")
    return messages, [_image_item(p) for p in items]


def _messages(row: dict) -> tuple[list[dict], list]:
    msgs = row["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise RowError("'messages' must be a non-empty list")
    images = row.get("images") or []
    if not isinstance(images, list):
        raise RowError("'images' must be a list of paths")
    messages, paths = [], [_image_item(p) for p in images]
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
                    if item.get("image") is not None:
                        paths.append(_image_item(item["image"]))
                elif kind == "text" and isinstance(item.get("text"), str):
                    items.append({"type": "text", "text": item["text"]})
                else:
                    raise RowError("content entries must be {'type': 'image'} or {'type': 'text', 'text': ...}")
        else:
            raise RowError("message content must be a string or a list")
        messages.append({"role": ROLE_OF[m["role"]], "content": items})
    return messages, paths


def parse_row(
    row: Any, images_dir: Path | None, max_images: int, *, allow_absolute: bool = False
) -> tuple[list[dict], list[ImageRef]]:
    """A raw row -> (messages, images as absolute paths or bytes); raises RowError naming the cause.

    Paths are resolved against ``images_dir`` (the current folder when None) and refused when they
    resolve outside it, unless ``allow_absolute``.
    """
    if isinstance(row, RowError):
        raise row
    if not isinstance(row, dict):
        raise RowError("a row must be a JSON object")
    if "conversations" in row:
        messages, paths = _turns(row)
    elif "messages" in row:
        messages, paths = _messages(row)
    else:
        raise RowError("a row needs 'conversations' (LLaVA) or 'messages'")
    if not all(isinstance(p, (str, bytes)) and p for p in paths):
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
    root = os.path.abspath(images_dir if images_dir is not None else os.curdir)
    return messages, [p if isinstance(p, bytes) else resolve_image(p, root, allow_absolute) for p in paths]


def resolve_image(path: str, root: str, allow_absolute: bool) -> str:
    """``path`` under the absolute folder ``root``, normalised without following symlinks; a path that
    leaves ``root`` (absolute, or climbing out with ``..``) is refused unless ``allow_absolute``."""
    full = os.path.normpath(os.path.join(root, path))
    if not allow_absolute and not full.startswith(root.rstrip(os.sep) + os.sep):
        raise RowError(f"image path {path} resolves outside the images folder (pass --allow-absolute-paths)")
    if not os.path.isfile(full):
        raise RowError(f"missing image {path}")
    return full
