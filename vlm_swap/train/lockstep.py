"""Every rank runs the same modules every step: a dummy image for batches that hold none.

A batch without any image (text-only rows) would skip the encoder and the connector. Under several processes
that rank then falls out of step with the others: DDP waits for gradients that never come, FSDP2 and ZeRO-3
for all-gathers of the encoder's shards that the other ranks issue (gloo reports a collective mismatch, NCCL
hangs). In one process a connector-only stage has nothing to differentiate. As LLaVA-style trainers do, such
a batch gets one blank image, processed once, whose placeholder tokens are appended after the end of the first
row (``[B, L] -> [B, L + n]``, the other rows padded): attention mask 0 there (no token attends to them), label
-100 (no loss). Its rows change no output and no loss, and the connector's gradient from them is exactly zero, but
the encoder and connector run, and the frozen-encoder feature cache keys it like any image.
"""

from __future__ import annotations

import torch
from PIL import Image

from ..data import IGNORE
from .features import content_key


class DummyImage:
    """The processed inputs of one blank image and its placeholder ids, appended to batches without images."""

    def __init__(self, processor, pad_token_id: int, feature_token_ids=(), size: int = 64):
        process = getattr(processor, "process_images", None) or processor.image_processor
        processed = process([Image.new("RGB", (size, size))], return_tensors="pt")
        self.inputs = {k: v for k, v in processed.items() if isinstance(v, torch.Tensor)}
        expansion = processor.replace_image_token(self.inputs, 0)
        self.ids = torch.tensor(processor.tokenizer(expansion, add_special_tokens=False)["input_ids"])  # [n]
        self.key = content_key(self.inputs)
        # the feature-cache key of a sample is (content key, its placeholder rows), as data.Collator counts them
        self.rows = int(torch.isin(self.ids, torch.tensor(list(feature_token_ids), dtype=torch.long)).sum())
        self.pad_token_id = pad_token_id

    @staticmethod
    def needed(inputs: dict) -> bool:
        """The batch holds no image (every encoder kind takes ``pixel_values``)."""
        return "pixel_values" not in inputs and "image_features" not in inputs

    def add(self, inputs: dict, keys: list | None) -> tuple[dict, list | None]:
        """``inputs`` with the dummy image after the end of row 0 (masked, unlabelled); its feature-cache key."""
        ids = inputs["input_ids"]
        batch, n = ids.shape[0], self.ids.numel()
        tail = torch.full((batch, n), self.pad_token_id, dtype=ids.dtype, device=ids.device)  # [B, n]
        tail[0] = self.ids.to(ids.device)
        out = dict(inputs)
        out["input_ids"] = torch.cat([ids, tail], dim=1)
        out["attention_mask"] = torch.cat([inputs["attention_mask"], torch.zeros_like(tail)], dim=1)
        out["labels"] = torch.cat([inputs["labels"], torch.full_like(tail, IGNORE)], dim=1)
        out.update({k: v.to(ids.device) for k, v in self.inputs.items()})
        return out, None if keys is None else [(self.key, self.rows), *keys[1:]]
