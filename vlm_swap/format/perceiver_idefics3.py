"""SmolVLM / Idefics3: images split into square tiles plus a global view, each tile pixel-shuffled.

The image processor resizes an image to at most ``size["longest_edge"]``, and when
``do_image_splitting`` is on and it is larger than one tile (``max_image_size["longest_edge"]``)
cuts it into ``rows x cols`` tiles plus a downscaled global view; each tile gives
``image_seq_len`` ``<image>`` tokens. The prompt of one image is, as the processor writes it::

    split:     (<fake_token_around_image> <row_r_col_c> <image> x S) per tile, "\\n" after each row,
               then "\\n" <fake_token_around_image> <global-img> <image> x S <fake_token_around_image>
    not split: <fake_token_around_image> <global-img> <image> x S <fake_token_around_image>

Span: from the first to the last ``<fake_token_around_image>`` of the image, markers included
(the row/column tags, the newline tokens and the inner markers are interior rows), the analogue
of Qwen's vision-start..vision-end. The resize edge is capped so the tiles hold at most 262,144
pixels (rounded up to whole tiles; at least one tile).
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import VlmSwapError
from .perceiver_family import DEFAULT_MAX_PIXELS, PerceiverFamily, check_token

MAX_GRID = 6  # the processors know <row_r_col_c> tags up to 6 x 6


class Idefics3(PerceiverFamily):
    model_types = ("idefics3", "smolvlm")
    name = "SmolVLM/Idefics3"
    text_family = "smollm2"
    input_names = ("pixel_values", "pixel_attention_mask", "tile_grid")

    @classmethod
    def span_start_id(cls, config, processor) -> int:
        return check_token(processor.tokenizer, processor.fake_image_token)

    @classmethod
    def cap(cls, config, image_processor) -> None:
        tile = image_processor.max_image_size["longest_edge"]
        edge = max(tile, -(-int(DEFAULT_MAX_PIXELS**0.5) // tile) * tile)
        size = dict(image_processor.size)
        if size.get("longest_edge", 0) > edge:
            size["longest_edge"] = edge
            image_processor.size = size

    @classmethod
    def args(cls, config, processor) -> dict[str, Any]:
        tok = processor.tokenizer
        global_token = getattr(processor, "global_image_token", None) or processor.global_image_tag
        return {
            "fake_id": check_token(tok, processor.fake_image_token),
            "global_id": check_token(tok, global_token),
            "image_token_id": config.image_token_id,
            "row_col_ids": [
                [check_token(tok, f"<row_{r}_col_{c}>") for c in range(1, MAX_GRID + 1)] for r in range(1, MAX_GRID + 1)
            ],
            "newline_ids": tok("\n", add_special_tokens=False)["input_ids"],
            "row_end_ids": tok("\n\n", add_special_tokens=False)["input_ids"],
            "image_seq_len": int(processor.image_seq_len),
        }

    @classmethod
    def preprocess(cls, image_processor, images, args, **kwargs) -> dict[str, torch.Tensor]:
        out = image_processor(
            [[im] for im in images], **{**kwargs, "return_row_col_info": True, "return_tensors": "pt"}
        )
        grid = torch.tensor([[r[0], c[0]] for r, c in zip(out["rows"], out["cols"], strict=True)], dtype=torch.long)
        if grid.numel() and int(grid.max()) > MAX_GRID:
            raise VlmSwapError(f"an image split into {grid.max()} tile rows/cols; the prompt tags stop at {MAX_GRID}")
        tiles = _tiles(grid)
        # [n, T_max, 3, H, W] -> [T, 3, H, W]: the padding tiles of shorter images dropped
        pixels = torch.cat([out["pixel_values"][i, :t] for i, t in enumerate(tiles)])
        mask = torch.cat([out["pixel_attention_mask"][i, :t] for i, t in enumerate(tiles)])
        return {"pixel_values": pixels, "pixel_attention_mask": mask, "tile_grid": grid}

    @classmethod
    def span_ids(cls, inputs, index, args) -> list[int]:
        rows, cols = (int(v) for v in inputs["tile_grid"][index])
        fake, image = args["fake_id"], [args["image_token_id"]] * args["image_seq_len"]
        ids: list[int] = []
        if rows or cols:
            for r in range(rows):
                for c in range(cols):
                    ids += [fake, args["row_col_ids"][r][c], *image]
                ids += args["newline_ids"] if r < rows - 1 else args["row_end_ids"]
        return ids + [fake, args["global_id"], *image, fake]

    @classmethod
    def rows_for_size(cls, image_processor, height, width, args) -> int:
        # the processor's own tiling rule gives the grid; the span follows from it
        _, rows, cols = image_processor.get_number_of_image_patches(height, width, {})
        return cls.image_rows({"tile_grid": [[rows, cols]]}, 0, args)

    @classmethod
    def model_inputs(cls, inputs, args) -> dict[str, torch.Tensor]:
        tiles = _tiles(inputs["tile_grid"])
        width = max(tiles)
        pixels, mask = inputs["pixel_values"], inputs["pixel_attention_mask"]
        batch = pixels.new_zeros((len(tiles), width, *pixels.shape[1:]))  # [n, T_max, 3, H, W]; zero tiles = padding
        batch_mask = mask.new_zeros((len(tiles), width, *mask.shape[1:]))
        start = 0
        for i, t in enumerate(tiles):
            batch[i, :t], batch_mask[i, :t] = pixels[start : start + t], mask[start : start + t]
            start += t
        return {"pixel_values": batch, "pixel_attention_mask": batch_mask}


def _tiles(grid: torch.Tensor) -> list[int]:
    """Tiles per image: rows * cols + the global view, or the global view alone."""
    return [int(r) * int(c) + 1 if int(r) or int(c) else 1 for r, c in grid.tolist()]
