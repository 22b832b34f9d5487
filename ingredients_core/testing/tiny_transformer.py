"""A tiny Ingredients transformer in the official ``transformer/`` layout, for offline tests.

Same key names as the released checkpoint; 2 layers of 3 heads x 32, routed every layer, ID modules
derived from the width (ID tokens 32 x 64), sized for the tiny face models' feature widths
(:mod:`ingredients_core.testing.tiny_faces`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..model.config import IDModuleConfig, TransformerConfig
from .tiny_faces import TINY_EVA_EMBED_DIM, TINY_EVA_WIDTH
from .weights import deterministic_state_dict, write_transformer_folder

TINY_TEXT_DIM = 32


def tiny_config(**overrides: Any) -> TransformerConfig:
    """A CPU-sized config: 2 blocks, width 96, text width 32, learned positions for 9 x 64 x 96."""
    ids_overrides = overrides.pop("ids", {})
    values: dict[str, Any] = dict(
        num_attention_heads=3, attention_head_dim=32, in_channels=32, out_channels=16, time_embed_dim=32,
        text_embed_dim=TINY_TEXT_DIM, num_layers=2, cross_attn_interval=1, sample_height=8, sample_width=12,
        sample_frames=9, max_text_seq_length=226)
    values.update(overrides)
    width = values["num_attention_heads"] * values["attention_head_dim"]
    # the tiny face models give id_cond of 512 + TINY_EVA_EMBED_DIM and hidden states TINY_EVA_WIDTH wide
    ids = dict(extractor_depth=5, heads=4, id_cond_dim=512 + TINY_EVA_EMBED_DIM, vit_dim=TINY_EVA_WIDTH)
    ids.update(ids_overrides)
    return TransformerConfig(**values, ids=IDModuleConfig.for_width(width, **ids))


def tiny_state_dict(config: TransformerConfig) -> dict[str, torch.Tensor]:
    """Deterministic weights (the golden rule) for every key of a model with ``config``."""
    from ..model.transformer import IngredientsTransformer

    with torch.device("meta"):
        model = IngredientsTransformer(config)
    return deterministic_state_dict({k: v.shape for k, v in model.state_dict().items()})


def write_tiny_transformer(root: Path, config: TransformerConfig | None = None) -> Path:
    """Write ``root/transformer/`` (config.json + safetensors) and return that folder."""
    config = config or tiny_config()
    return write_transformer_folder(Path(root) / "transformer", tiny_state_dict(config), config.to_dict())
