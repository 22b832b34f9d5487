"""The three ID modules Ingredients adds to CogVideoX, on injected layers and attention.

1. :class:`FacialProjector` (checkpoint prefix ``local_facial_extractor``): a q-former that turns one
   person's face features (``id_cond`` and five EVA-CLIP hidden states) into ID tokens.
2. :class:`RoutedCrossAttention` (``perceiver_cross_attention.{k}``): video tokens attend to each
   person's ID tokens.
3. :class:`IDRouter` (``router.{k}``): per video token, one logit per person.

Attribute names reproduce the official checkpoint keys; the computation is our own. The official
attention scales q and k each by d^-1/4 and takes the softmax in float32; that is softmax attention
with the usual d^-1/2 scale, computed here by the injected attention function. Shapes use ``P``
persons, ``T`` ID tokens, ``B`` batch, ``N`` video tokens, ``H`` heads, ``d`` head size.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .config import IDModuleConfig
from .layers import TORCH_OPS, AttentionFn, cast_like, sdpa_attention, split_heads


def _feed_forward(dim: int, ops, mult: int = 4) -> nn.Sequential:
    # indices 0, 1, 3 are the checkpoint's key names (LayerNorm, Linear, GELU, Linear)
    return nn.Sequential(ops.LayerNorm(dim), ops.Linear(dim, dim * mult, bias=False), nn.GELU(),
                         ops.Linear(dim * mult, dim, bias=False))


def _mlp(in_dim: int, hidden: int, out_dim: int, ops) -> nn.Sequential:
    # indices 0, 1, 3, 4, 6 carry weights (Linear, LayerNorm, LeakyReLU, ...)
    return nn.Sequential(ops.Linear(in_dim, hidden), ops.LayerNorm(hidden), nn.LeakyReLU(),
                         ops.Linear(hidden, hidden), ops.LayerNorm(hidden), nn.LeakyReLU(),
                         ops.Linear(hidden, out_dim))


class PerceiverAttention(nn.Module):
    """Latents attend to [context, latents] (a Perceiver resampler layer)."""

    def __init__(self, dim: int, heads: int, ops=TORCH_OPS, attention: AttentionFn = sdpa_attention):
        super().__init__()
        self.heads = heads
        self.attention = attention
        self.norm1 = ops.LayerNorm(dim)
        self.norm2 = ops.LayerNorm(dim)
        self.to_q = ops.Linear(dim, dim, bias=False)
        self.to_kv = ops.Linear(dim, 2 * dim, bias=False)
        self.to_out = ops.Linear(dim, dim, bias=False)

    def forward(self, context: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        # context: (P, C, D), latents: (P, L, D) -> (P, L, D)
        context, latents = self.norm1(context), self.norm2(latents)
        q = split_heads(self.to_q(latents), self.heads)                            # (P, H, L, d)
        k, v = self.to_kv(torch.cat([context, latents], dim=1)).chunk(2, dim=-1)
        out = self.attention(q, split_heads(k, self.heads), split_heads(v, self.heads), self.heads)
        return self.to_out(out)


class FacialProjector(nn.Module):
    """Q-former: face features of P persons -> ID tokens (P, T, token_dim)."""

    def __init__(self, cfg: IDModuleConfig, ops=TORCH_OPS, attention: AttentionFn = sdpa_attention):
        super().__init__()
        self.cfg = cfg
        dim = cfg.extractor_dim
        self.latents = nn.Parameter(torch.zeros(1, cfg.num_tokens, dim))
        self.proj_out = nn.Parameter(torch.zeros(dim, cfg.token_dim))
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, cfg.heads, ops, attention), _feed_forward(dim, ops)])
            for _ in range(cfg.extractor_depth)
        )
        for i in range(cfg.num_vit_scales):
            setattr(self, f"mapping_{i}", _mlp(cfg.vit_dim, cfg.vit_dim, dim, ops))
        self.id_embedding_mapping = _mlp(cfg.id_cond_dim, cfg.vit_dim, dim * cfg.num_id_embeds, ops)

    def forward(self, id_cond: torch.Tensor, vit_hidden: list[torch.Tensor]) -> torch.Tensor:
        """id_cond: (P, id_cond_dim); vit_hidden: num_vit_scales x (P, S, vit_dim) -> (P, T, token_dim)."""
        cfg = self.cfg
        persons = id_cond.shape[0]
        # 1. id_cond -> num_id_embeds tokens, appended to the learned queries: (P, T + 5, D)
        id_tokens = self.id_embedding_mapping(id_cond).view(persons, cfg.num_id_embeds, cfg.extractor_dim)
        queries = cast_like(self.latents, id_tokens).expand(persons, -1, -1)
        latents = torch.cat([queries, id_tokens], dim=1)
        # 2. each ViT scale feeds its share of layers: context = [id tokens, mapped hidden states]
        per_scale = cfg.extractor_depth // cfg.num_vit_scales
        for i in range(cfg.num_vit_scales):
            context = torch.cat([id_tokens, getattr(self, f"mapping_{i}")(vit_hidden[i])], dim=1)
            for attn, ff in self.layers[i * per_scale:(i + 1) * per_scale]:
                latents = attn(context, latents) + latents
                latents = ff(latents) + latents
        # 3. keep the learned queries, project: (P, T, token_dim)
        return latents[:, :cfg.num_tokens] @ cast_like(self.proj_out, latents)


class RoutedCrossAttention(nn.Module):
    """Video tokens attend to each person's ID tokens; per-person outputs mixed by routing weights.

    The official code runs one attention per person and mixes the P projected outputs afterwards.
    The query is the same for every person and ``to_out`` is linear without bias, so here one query
    projection and one output projection serve all persons: out = to_out(sum_j w_j attn_j(q)).
    """

    def __init__(self, dim: int, token_dim: int, heads: int, ops=TORCH_OPS,
                 attention: AttentionFn = sdpa_attention):
        super().__init__()
        self.heads = heads
        self.attention = attention
        inner = token_dim  # official: 16 heads x 128 = 2048 = token width
        self.norm1 = ops.LayerNorm(token_dim)
        self.norm2 = ops.LayerNorm(dim)
        self.to_q = ops.Linear(dim, inner, bias=False)
        self.to_kv = ops.Linear(token_dim, 2 * inner, bias=False)
        self.to_out = ops.Linear(inner, dim, bias=False)

    def keys_values(self, id_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(P, T, token_dim) -> k, v each (P, H, T, d). Step-independent: cache per run."""
        k, v = self.to_kv(self.norm1(id_tokens)).chunk(2, dim=-1)
        return split_heads(k, self.heads), split_heads(v, self.heads)

    def forward(self, hidden: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], weights: torch.Tensor,
                persons: Optional[Sequence[int]] = None) -> torch.Tensor:
        """hidden (B, N, dim), kv from :meth:`keys_values`, weights (B, N, P) -> (B, N, dim).

        ``persons``: the IDs to attend to (default all); the others must have weight 0 everywhere.
        """
        k, v = kv
        batch = hidden.shape[0]
        q = split_heads(self.to_q(self.norm2(hidden)), self.heads)                # (B, H, N, d)
        mixed = None
        for j in range(k.shape[0]) if persons is None else persons:
            k_j, v_j = (t[j:j + 1].expand(batch, -1, -1, -1).contiguous() for t in (k, v))
            part = self.attention(q, k_j, v_j, self.heads) * weights[..., j:j + 1]  # (B, N, inner)
            mixed = part if mixed is None else mixed + part
        if mixed is None:
            mixed = q.new_zeros(batch, q.shape[2], q.shape[1] * q.shape[3])
        return self.to_out(mixed)


class IDRouter(nn.Module):
    """Router logits: per video token, one score per person (no scale, no background class)."""

    def __init__(self, dim: int, token_dim: int, num_tokens: int, ops=TORCH_OPS):
        super().__init__()
        inner = token_dim  # official: 2048
        self.norm1 = ops.LayerNorm(token_dim)
        self.norm2 = ops.LayerNorm(dim)
        self.id_merge = ops.Linear(num_tokens, 1, bias=False)
        self.to_q = ops.Linear(dim, inner, bias=False)
        self.to_kv = ops.Linear(token_dim, inner, bias=False)

    def person_keys(self, id_tokens: torch.Tensor) -> torch.Tensor:
        """(P, T, token_dim) -> (P, inner): one key per person. Step-independent: cache per run."""
        merged = self.id_merge(self.norm1(id_tokens).transpose(-2, -1)).squeeze(-1)
        return self.to_kv(merged)

    def forward(self, hidden: torch.Tensor, person_keys: torch.Tensor) -> torch.Tensor:
        """hidden (B, N, dim), person_keys (P, inner) -> logits (B, N, P)."""
        return self.to_q(self.norm2(hidden)) @ person_keys.transpose(0, 1)
