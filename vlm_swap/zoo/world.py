"""The synthetic image-text world: coloured shapes on a canvas, with captions and questions.

Everything is a pure function of a seed, so the same seed gives the same images and texts on
every machine. A scene holds 1-3 shapes; each has a colour, a kind and a position (left,
middle, right). Captions describe the scene; questions ask for a colour, a shape or a count,
with the short answer that the tiny models learn to give.

The text-only task asks the same questions about a scene told in words, with no image ("there
are a red circle on the left and a blue square on the right. what shape is on the right?"): the
embedded source LLM learns it in pretraining, so how much of it an image fine-tune keeps measures
the text ability the LLM loses (``vlm-swap compare``'s forgetting).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 190),
    "orange": (240, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "middle", "right")
NUMBERS = ("zero", "one", "two", "three")
EXTRA_WORDS = (
    "the a an is are there of in on what which how many image picture shows color shape at "
    "describe answer with word question yes no and it this one"
).split()


@dataclass(frozen=True)
class Shape:
    color: str
    kind: str
    position: str


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    size: tuple[int, int]  # (width, height)
    seed: int

    def render(self) -> Image.Image:
        w, h = self.size
        img = Image.new("RGB", (w, h), (245, 245, 245))
        draw = ImageDraw.Draw(img)
        r = max(4, min(w // 8, h // 3))
        for s in self.shapes:
            cx = {"left": w // 6, "middle": w // 2, "right": 5 * w // 6}[s.position]
            cy = h // 2
            box = (cx - r, cy - r, cx + r, cy + r)
            fill = COLORS[s.color]
            if s.kind == "circle":
                draw.ellipse(box, fill=fill)
            elif s.kind == "square":
                draw.rectangle(box, fill=fill)
            else:
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
        return img

    def _shapes_in_words(self) -> str:
        parts = [
            f"{'an' if s.color[0] in 'aeiou' else 'a'} {s.color} {s.kind} on the {s.position}" for s in self.shapes
        ]
        return " and ".join(parts)

    def caption(self) -> str:
        return f"the image shows {self._shapes_in_words()}."

    def in_words(self) -> str:
        """The scene told in words, for the text-only task (the world's own vocabulary)."""
        return f"there {'is' if len(self.shapes) == 1 else 'are'} {self._shapes_in_words()}."

    def questions(self) -> list[tuple[str, str]]:
        """(question, short answer) pairs about the scene."""
        qa = []
        for s in self.shapes:
            qa.append((f"what color is the shape on the {s.position}?", s.color))
            qa.append((f"what shape is on the {s.position}?", s.kind))
        qa.append(("how many shapes are there?", NUMBERS[len(self.shapes)]))
        return qa


def make_scene(seed: int, size: tuple[int, int] | None = None) -> Scene:
    rng = random.Random(seed)
    n = rng.randint(1, 3)
    positions = rng.sample(POSITIONS, n)
    shapes = tuple(
        Shape(rng.choice(list(COLORS)), rng.choice(SHAPES), p) for p in sorted(positions, key=POSITIONS.index)
    )
    if size is None:
        size = (rng.choice((96, 128, 160)), rng.choice((64, 96, 128)))
    return Scene(shapes, size, seed)


def vocabulary() -> list[str]:
    """Every word the world uses, for building the tiny tokenizers."""
    words = list(COLORS) + list(SHAPES) + list(POSITIONS) + list(NUMBERS) + list(EXTRA_WORDS)
    return sorted(set(words))


#: text-only rows mixed into datasets (batches without images)
TEXT_ONLY = [("say hello.", "hello"), ("what is two plus two?", "four"), ("count to three.", "one two three")]


def write_dataset(
    out_dir: Path,
    n: int,
    seed: int = 0,
    *,
    fmt: str = "llava",
    captions: bool = False,
    words: bool = False,
    texts: int = 0,
) -> Path:
    """``n`` scenes as PNG files under ``out_dir/images`` and a LLaVA JSON (or messages JSONL) file.

    Each row is one question (or one caption request when ``captions``) about one scene; the file
    is ``out_dir/data.json`` (LLaVA) or ``out_dir/data.jsonl`` (``fmt="messages"``). ``words``: the
    text-only task, the scene told in words before the question and no image (none is written).
    ``texts`` text-only rows (a question and answer without an image) are spread evenly among them.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        scene = make_scene(seed * 1_000_003 + i)
        name = f"images/{i:05d}.png"
        if captions:
            question, answer = "describe the image.", scene.caption()
        else:
            question, answer = rng.choice(scene.questions())
        if words:
            rows.append(_text_row(i, f"{scene.in_words()} {question}", answer, fmt))
            continue
        scene.render().save(out_dir / name)
        if fmt == "llava":
            rows.append(
                {
                    "id": str(i),
                    "image": name,
                    "conversations": [
                        {"from": "human", "value": f"<image>\n{question}"},
                        {"from": "gpt", "value": answer},
                    ],
                }
            )
        else:
            rows.append(
                {
                    "messages": [
                        {
                            "role": "user",
                            "content": [{"type": "image", "image": name}, {"type": "text", "text": question}],
                        },
                        {"role": "assistant", "content": answer},
                    ]
                }
            )
    total = len(rows) + texts
    at = {(2 * i + 1) * total // (2 * texts) for i in range(texts)}  # evenly spread positions
    images, mixed = iter(rows), []
    for pos in range(total):
        if pos not in at:
            mixed.append(next(images))
            continue
        question, answer = TEXT_ONLY[len(mixed) % len(TEXT_ONLY)]
        mixed.append(_text_row(f"text-{pos}", question, answer, fmt))
    rows = mixed
    if fmt == "llava":
        path = out_dir / "data.json"
        path.write_text(json.dumps(rows, indent=1))
    else:
        path = out_dir / "data.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _text_row(key: int | str, question: str, answer: str, fmt: str) -> dict:
    if fmt == "llava":
        turns = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        return {"id": str(key), "conversations": turns}
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
