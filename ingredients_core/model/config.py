"""Configuration dataclasses of the Ingredients transformer.

The transformer's ``config.json`` (as shipped in ``transformer/``) maps onto :class:`TransformerConfig`.
The ID modules (q-former projector, routed cross-attention, router) are hard-coded in the official
code; here their sizes are derived from the transformer width so that a tiny model works in tests
and the official width (3072) gives the official shapes (see :class:`IDModuleConfig`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from .. import ERROR_NAMESPACE

logger = logging.getLogger(__name__)

# config.json fields of the official class that carry no meaning here (read but unused upstream too).
_IGNORED_FIELDS = {"_class_name", "_diffusers_version", "LFE_num_tokens", "LFE_output_dim", "LFE_heads",
                   "is_train_face", "is_kps", "_name_or_path"}


class ConfigError(ValueError):
    """A checkpoint configuration that cannot describe an Ingredients transformer."""

    __module__ = ERROR_NAMESPACE


@dataclass(frozen=True)
class IDModuleConfig:
    """Sizes of the three ID modules.

    Official values (inner width 3072): ID tokens 32 x 2048, projector width 1024 (10 layers, 16 heads),
    cross-attention 16 heads x 128, router width 2048, ``id_cond`` 1280 (ArcFace 512 + EVA-CLIP 768),
    ViT hidden states 5 x 1024.
    """

    token_dim: int = 2048          # width of one ID token (kv width of the cross-attention)
    num_tokens: int = 32           # ID tokens per person (q-former queries)
    extractor_dim: int = 1024      # q-former width
    extractor_depth: int = 10      # PerceiverAttention + FeedForward pairs, 2 per ViT scale
    heads: int = 16                # heads of q-former attention and routed cross-attention
    num_id_embeds: int = 5         # tokens made from id_cond inside the q-former
    id_cond_dim: int = 1280        # ArcFace + pooled EVA-CLIP
    vit_dim: int = 1024            # EVA-CLIP hidden-state width
    num_vit_scales: int = 5        # EVA-CLIP hidden states used

    @classmethod
    def for_width(cls, inner_dim: int, **overrides: Any) -> "IDModuleConfig":
        """Sizes derived from the transformer width, as the official code fixes them for 3072."""
        if inner_dim % 3:
            raise ConfigError(f"transformer width {inner_dim} must be divisible by 3 (ID tokens are 2/3 of it)")
        values = {"token_dim": 2 * inner_dim // 3, "extractor_dim": inner_dim // 3}
        values.update(overrides)
        cfg = cls(**values)
        cfg.validate()
        return cfg

    @property
    def extractor_head_dim(self) -> int:
        return self.extractor_dim // self.heads

    @property
    def attn_head_dim(self) -> int:
        return self.token_dim // self.heads

    def validate(self) -> None:
        if self.extractor_dim % self.heads or self.token_dim % self.heads:
            raise ConfigError(f"ID module widths {self.extractor_dim}/{self.token_dim} not divisible by "
                              f"{self.heads} heads")
        if self.extractor_depth % self.num_vit_scales:
            raise ConfigError(f"q-former depth {self.extractor_depth} must be a multiple of "
                              f"{self.num_vit_scales} ViT scales")


@dataclass(frozen=True)
class TransformerConfig:
    """The CogVideoX-I2V transformer plus Ingredients' routed ID layers.

    Field names follow the official ``transformer/config.json`` so it loads unchanged.
    """

    num_attention_heads: int = 48
    attention_head_dim: int = 64
    in_channels: int = 32
    out_channels: int = 16
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    time_embed_dim: int = 512
    text_embed_dim: int = 4096
    num_layers: int = 42
    dropout: float = 0.0
    attention_bias: bool = True
    sample_width: int = 90
    sample_height: int = 60
    sample_frames: int = 49
    patch_size: int = 2
    temporal_compression_ratio: int = 4
    max_text_seq_length: int = 226
    activation_fn: str = "gelu-approximate"
    timestep_activation_fn: str = "silu"
    norm_elementwise_affine: bool = True
    norm_eps: float = 1e-5
    spatial_interpolation_scale: float = 1.875
    temporal_interpolation_scale: float = 1.0
    use_rotary_positional_embeddings: bool = True
    use_learned_positional_embeddings: bool = True
    cross_attn_interval: int = 2
    local_face_scale: float = 1.0
    ids: IDModuleConfig = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.ids is None:
            object.__setattr__(self, "ids", IDModuleConfig.for_width(self.inner_dim))
        self.validate()

    # -- derived sizes -------------------------------------------------------------------------
    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def num_routed_layers(self) -> int:
        return self.num_layers // self.cross_attn_interval

    def is_routed(self, block_index: int) -> bool:
        return block_index % self.cross_attn_interval == 0

    @property
    def latent_frames(self) -> int:
        return (self.sample_frames - 1) // self.temporal_compression_ratio + 1

    def validate(self) -> None:
        if self.cross_attn_interval < 1 or self.num_layers % self.cross_attn_interval:
            raise ConfigError(f"num_layers={self.num_layers} is not a multiple of "
                              f"cross_attn_interval={self.cross_attn_interval}")
        if self.use_learned_positional_embeddings and not self.use_rotary_positional_embeddings:
            raise ConfigError("learned positional embeddings without rotary ones match no CogVideoX checkpoint")
        if self.in_channels != 2 * self.out_channels:
            raise ConfigError(f"in_channels={self.in_channels} must be 2 x out_channels={self.out_channels} "
                              "(noise latents + image latents): this is not an image-to-video checkpoint")

    # -- (de)serialisation ---------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> "TransformerConfig":
        """Build from a ``config.json`` dict; unknown keys are logged and ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key in known and key != "ids":
                values[key] = value
            elif key not in _IGNORED_FIELDS:
                logger.debug("config field %r is not used by the Ingredients transformer", key)
        if isinstance(data.get("ids"), dict):
            values["ids"] = IDModuleConfig(**data["ids"])
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` form; non-official ID sizes are kept under ``ids``."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "ids"}
        data["_class_name"] = "IngredientsTransformer3DModel"
        data["is_train_face"] = True
        if self.ids != IDModuleConfig.for_width(self.inner_dim):
            data["ids"] = dataclasses.asdict(self.ids)
        return data

    def replace(self, **changes: Any) -> "TransformerConfig":
        return dataclasses.replace(self, **changes)
