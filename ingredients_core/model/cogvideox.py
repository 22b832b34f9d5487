"""The CogVideoX-5B-I2V parts of the Ingredients transformer, on injected layers and attention.

Written for this project because diffusers' ``CogVideoXBlock`` builds plain ``nn.Linear`` layers
and calls its own attention, so a host can neither stream nor cast it. Attribute names reproduce
the checkpoint keys of diffusers' ``CogVideoXTransformer3DModel`` (``attn1.to_out.0``,
``ff.net.0.proj``, ...); the arithmetic is the same, in the same order.

Shapes: ``B`` batch, ``F`` latent frames, ``C`` latent channels, ``H x W`` latent size, ``p`` patch
size, ``S`` text tokens, ``N = F * H/p * W/p`` video tokens, ``D`` width (heads x head size).
"""

from __future__ import annotations

from typing import Optional

import torch
from diffusers.models.embeddings import get_3d_sincos_pos_embed
from torch import nn

from .config import TransformerConfig
from .layers import (
    TORCH_OPS,
    AttentionFn,
    FeedForward,
    LayerNormZero,
    apply_rotary,
    cast_like,
    sdpa_attention,
    split_heads,
)


class PatchEmbed(nn.Module):
    """Text and latent video to tokens, plus the positional embedding of the I2V model.

    Keys: ``proj`` (Conv2d, patch x patch), ``text_proj`` and, for learned positions, the buffer
    ``pos_embedding`` (1, S_max + N_max, D) over [text, video]. Without learned positions and
    without rotary embeddings (CogVideoX-2B style) fixed sin-cos embeddings are added instead.
    """

    def __init__(self, config: TransformerConfig, ops=TORCH_OPS):
        super().__init__()
        c, dim = config, config.inner_dim
        self.patch_size = c.patch_size
        self.proj = ops.Conv2d(c.in_channels, dim, kernel_size=c.patch_size, stride=c.patch_size, bias=True)
        self.text_proj = ops.Linear(c.text_embed_dim, dim)
        self.learned = c.use_learned_positional_embeddings
        self.sincos = not c.use_learned_positional_embeddings and not c.use_rotary_positional_embeddings
        self.interpolation = (c.spatial_interpolation_scale, c.temporal_interpolation_scale)
        if self.learned:
            tokens = c.max_text_seq_length + c.latent_frames * (c.sample_height // c.patch_size) * (
                c.sample_width // c.patch_size)
            self.register_buffer("pos_embedding", torch.zeros(1, tokens, dim))

    def forward(self, text: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """text (B, S, text_dim), video (B, F, C, H, W) -> text tokens (B, S, D), video tokens (B, N, D)."""
        batch, frames, channels, height, width = video.shape
        text = self.text_proj(text)
        # 1. patchify every frame: (B*F, D, H/p, W/p) -> (B, F * H/p * W/p, D), frame-major
        video = self.proj(video.reshape(-1, channels, height, width))
        video = video.view(batch, frames, *video.shape[1:]).flatten(3).transpose(2, 3).flatten(1, 2)
        # 2. positions over [text, video]
        if self.learned:
            pos = cast_like(self.pos_embedding, video)
            if pos.shape[1] != text.shape[1] + video.shape[1]:
                raise ValueError(f"learned positions cover {pos.shape[1]} tokens, the input has "
                                 f"{text.shape[1]} text + {video.shape[1]} video tokens")
            return text + pos[:, :text.shape[1]], video + pos[:, text.shape[1]:]
        if self.sincos:
            video = video + self._sincos(frames, height // self.patch_size, width // self.patch_size, video)
        return text, video

    def _sincos(self, frames: int, rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
        """Fixed 3-D sin-cos positions (1, N, D) (diffusers' ``get_3d_sincos_pos_embed``)."""
        spatial, temporal = self.interpolation
        pos = get_3d_sincos_pos_embed(like.shape[-1], (cols, rows), frames, spatial, temporal,
                                      device=like.device, output_type="pt")
        return pos.flatten(0, 1).unsqueeze(0).to(like.dtype)


class JointAttention(nn.Module):
    """Self-attention over [text, video] with q/k LayerNorm per head and rotary positions on the
    video tokens (keys ``to_q``, ``to_k``, ``to_v``, ``norm_q``, ``norm_k``, ``to_out.0``)."""

    def __init__(self, dim: int, heads: int, head_dim: int, bias: bool, ops=TORCH_OPS,
                 attention: AttentionFn = sdpa_attention):
        super().__init__()
        self.heads = heads
        self.attention = attention
        self.to_q = ops.Linear(dim, heads * head_dim, bias=bias)
        self.to_k = ops.Linear(dim, heads * head_dim, bias=bias)
        self.to_v = ops.Linear(dim, heads * head_dim, bias=bias)
        self.norm_q = ops.LayerNorm(head_dim, eps=1e-6, elementwise_affine=True)
        self.norm_k = ops.LayerNorm(head_dim, eps=1e-6, elementwise_affine=True)
        self.to_out = nn.ModuleList([ops.Linear(heads * head_dim, dim, bias=True)])

    def forward(self, video: torch.Tensor, text: torch.Tensor,
                rotary: Optional[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """video (B, N, D), text (B, S, D) -> attended video (B, N, D), text (B, S, D)."""
        s = text.shape[1]
        x = torch.cat([text, video], dim=1)                                        # (B, S+N, D)
        q = self.norm_q(split_heads(self.to_q(x), self.heads))                     # (B, H, S+N, d)
        k = self.norm_k(split_heads(self.to_k(x), self.heads))
        v = split_heads(self.to_v(x), self.heads)
        if rotary is not None:  # in place on the video part, as upstream
            q[:, :, s:] = apply_rotary(q[:, :, s:], rotary)
            k[:, :, s:] = apply_rotary(k[:, :, s:], rotary)
        out = self.to_out[0](self.attention(q, k, v, self.heads))                  # (B, S+N, D)
        return out[:, s:], out[:, :s]


class CogVideoXBlock(nn.Module):
    """One CogVideoX transformer block: adaptive norm, joint attention, adaptive norm, feed-forward,
    each added back with its gate (keys ``norm1``, ``attn1``, ``norm2``, ``ff``)."""

    def __init__(self, config: TransformerConfig, ops=TORCH_OPS, attention: AttentionFn = sdpa_attention):
        super().__init__()
        c, dim = config, config.inner_dim
        affine, eps = c.norm_elementwise_affine, c.norm_eps
        self.norm1 = LayerNormZero(c.time_embed_dim, dim, affine, eps, ops)
        self.attn1 = JointAttention(dim, c.num_attention_heads, c.attention_head_dim, c.attention_bias, ops,
                                    attention)
        self.norm2 = LayerNormZero(c.time_embed_dim, dim, affine, eps, ops)
        self.ff = FeedForward(dim, c.activation_fn, ops=ops)

    def forward(self, video: torch.Tensor, text: torch.Tensor, emb: torch.Tensor,
                rotary: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                ff_chunk: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """video (B, N, D), text (B, S, D), emb (B, time_dim) -> new video, new text."""
        s = text.shape[1]
        # 1. attention
        n_video, n_text, gate, t_gate = self.norm1(video, text, emb)
        a_video, a_text = self.attn1(n_video, n_text, rotary)
        video, text = video + gate * a_video, text + t_gate * a_text
        # 2. feed-forward over [text, video]
        n_video, n_text, gate, t_gate = self.norm2(video, text, emb)
        ff = self.ff(torch.cat([n_text, n_video], dim=1), ff_chunk)
        return video + gate * ff[:, s:], text + t_gate * ff[:, :s]
