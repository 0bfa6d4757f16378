"""A tiny in-memory dataset following the canvas batch contract (until canvas_jax.data is wired in).

Each example: a coloured square on a grey background at one of four corners, captioned "a red square at
the top left"; transforms tokenize, apply caption dropout and (optionally) draw a random rectangle mask.
"""

from __future__ import annotations

import time

import numpy as np

from core_jax import data as data_lib

COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 220), "green": (40, 180, 60)}
CORNERS = {"top left": (0, 0), "top right": (0, 1), "bottom left": (1, 0), "bottom right": (1, 1)}

TINY_VAE = {"block_out_channels": [16, 32], "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 8,
            "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
            "scaling_factor": 1.0}
TINY_UNET = {"block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 8, "cross_attention_dim": 384,
             "attention_head_dim": 4, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]}


def examples(n: int, size: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        corner = list(CORNERS)[rng.integers(len(CORNERS))]
        img = np.full((size, size, 3), 128, np.uint8)
        r, c = CORNERS[corner]
        h = size // 2
        img[r * h:(r + 1) * h, c * h:(c + 1) * h] = COLOURS[colour]
        out.append({"image": img, "caption": f"a {colour} square at the {corner}"})
    return out


def data_fn(n: int = 64, size: int = 16, delay: float = 0.0, condition: bool = False):
    """A ``canvas_jax.train.data.DataFn`` over ``n`` in-memory examples (test split: 16 others); ``delay``
    seconds of sleep per training example slow a run down (for the signal tests); ``condition``: each batch
    carries ``cond_image`` (the image mirrored top-bottom, for IP-Adapter training; with ``ip_adapter.distill``
    also the full caption's ``teacher_input_ids`` / ``teacher_attention_mask``)."""
    train, test = examples(n, size, 0), examples(16, size, 1)

    def fn(cfg, tokenizer, ctx, split, with_masks):
        dropout = cfg.data.caption_dropout

        def convert(ex, rng):
            if delay and split == "train":
                time.sleep(delay)
            out = {"image": ex["image"].astype(np.float32) / 127.5 - 1.0}
            if condition:
                out["cond_image"] = out["image"][::-1].copy()
            if tokenizer is not None:
                caption = "" if rng.random() < dropout else ex["caption"]
                tok = tokenizer([caption])
                out["input_ids"], out["attention_mask"] = tok["input_ids"][0], tok["attention_mask"][0]
                if condition and cfg.ip_adapter.distill > 0:  # the distillation teacher reads the full caption
                    tok = tokenizer([ex["caption"]])
                    out["teacher_input_ids"], out["teacher_attention_mask"] = tok["input_ids"][0], \
                        tok["attention_mask"][0]
            if with_masks:
                m = np.zeros((size, size, 1), np.float32)
                y0, x0 = rng.integers(0, size // 2, 2)
                y1, x1 = y0 + rng.integers(2, size // 2 + 1), x0 + rng.integers(2, size // 2 + 1)
                m[y0:y1, x0:x1] = 1.0
                out["mask"] = m
            return out

        source = train if split == "train" else test
        return data_lib.make_iterator(source, batch_size=ctx.batch_size, seed=ctx.seed, shuffle=split == "train",
                                      num_epochs=None if split == "train" else 1, random_transforms=[convert],
                                      shard_index=ctx.process_index, shard_count=ctx.process_count)

    return fn
