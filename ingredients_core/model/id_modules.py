"""The three ID modules Ingredients adds to CogVideoX.

1. :class:`FacialProjector` (checkpoint prefix ``local_facial_extractor``): a q-former that turns one
   person's face features (``id_cond`` and five EVA-CLIP hidden states) into ID tokens.
2. :class:`RoutedCrossAttention` (``perceiver_cross_attention.{k}``): video tokens attend to each
   person's ID tokens.
3. :class:`IDRouter` (``router.{k}``): per video token, one logit per person.

Attribute names reproduce the official checkpoint keys; the computation is our own. Shapes use
``P`` persons, ``T`` ID tokens, ``B`` batch, ``N`` video tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import IDModuleConfig


def _feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    # indices 0, 1, 3 are the checkpoint's key names (LayerNorm, Linear, GELU, Linear)
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                         nn.Linear(dim * mult, dim, bias=False))


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    # indices 0, 1, 3, 4, 6 carry weights (Linear, LayerNorm, LeakyReLU, ...)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.LeakyReLU(),
                         nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.LeakyReLU(),
                         nn.Linear(hidden, out_dim))


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    # (b, n, h*d) -> (b, h, n, d)
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def _scaled_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q k^T with q and k each scaled by d^-1/4 (the official, fp16-friendly form)."""
    scale = q.shape[-1] ** -0.25
    return (q * scale) @ (k * scale).transpose(-2, -1)


class PerceiverAttention(nn.Module):
    """Latents attend to [context, latents] (a Perceiver resampler layer)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, context: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        # context: (P, C, D), latents: (P, L, D) -> (P, L, D)
        context, latents = self.norm1(context), self.norm2(latents)
        q = _split_heads(self.to_q(latents), self.heads)
        k, v = self.to_kv(torch.cat([context, latents], dim=1)).chunk(2, dim=-1)
        k, v = _split_heads(k, self.heads), _split_heads(v, self.heads)
        probs = torch.softmax(_scaled_scores(q, k).float(), dim=-1).to(q.dtype)
        out = (probs @ v).transpose(1, 2).flatten(2)
        return self.to_out(out)


class FacialProjector(nn.Module):
    """Q-former: face features of P persons -> ID tokens (P, T, token_dim)."""

    def __init__(self, cfg: IDModuleConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.extractor_dim
        self.latents = nn.Parameter(torch.zeros(1, cfg.num_tokens, dim))
        self.proj_out = nn.Parameter(torch.zeros(dim, cfg.token_dim))
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, cfg.heads), _feed_forward(dim)])
            for _ in range(cfg.extractor_depth)
        )
        for i in range(cfg.num_vit_scales):
            setattr(self, f"mapping_{i}", _mlp(cfg.vit_dim, cfg.vit_dim, dim))
        self.id_embedding_mapping = _mlp(cfg.id_cond_dim, cfg.vit_dim, dim * cfg.num_id_embeds)

    def forward(self, id_cond: torch.Tensor, vit_hidden: list[torch.Tensor]) -> torch.Tensor:
        """id_cond: (P, id_cond_dim); vit_hidden: num_vit_scales x (P, S, vit_dim) -> (P, T, token_dim)."""
        cfg = self.cfg
        persons = id_cond.shape[0]
        # 1. id_cond -> num_id_embeds tokens, appended to the learned queries: (P, T + 5, D)
        id_tokens = self.id_embedding_mapping(id_cond).view(persons, cfg.num_id_embeds, cfg.extractor_dim)
        latents = torch.cat([self.latents.expand(persons, -1, -1), id_tokens], dim=1)
        # 2. each ViT scale feeds its share of layers: context = [id tokens, mapped hidden states]
        per_scale = cfg.extractor_depth // cfg.num_vit_scales
        for i in range(cfg.num_vit_scales):
            context = torch.cat([id_tokens, getattr(self, f"mapping_{i}")(vit_hidden[i])], dim=1)
            for attn, ff in self.layers[i * per_scale:(i + 1) * per_scale]:
                latents = attn(context, latents) + latents
                latents = ff(latents) + latents
        # 3. keep the learned queries, project: (P, T, token_dim)
        return latents[:, :cfg.num_tokens] @ self.proj_out


class RoutedCrossAttention(nn.Module):
    """Video tokens attend to each person's ID tokens; per-person outputs mixed by routing weights.

    The official code runs one attention per person and mixes the P outputs afterwards. The query is
    the same for every person and ``to_out`` is linear without bias, so here the routing weights are
    folded into the attention probabilities: one query projection, one value product and one output
    projection serve all persons.
    """

    def __init__(self, dim: int, token_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        inner = token_dim  # official: 16 heads x 128 = 2048 = token width
        self.norm1 = nn.LayerNorm(token_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(token_dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def keys_values(self, id_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(P, T, token_dim) -> k, v each (heads, P*T, head_dim). Step-independent: cache per run."""
        persons, tokens, _ = id_tokens.shape
        k, v = self.to_kv(self.norm1(id_tokens)).chunk(2, dim=-1)
        k = k.reshape(persons * tokens, self.heads, -1).transpose(0, 1)
        v = v.reshape(persons * tokens, self.heads, -1).transpose(0, 1)
        return k, v

    def forward(self, hidden: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor],
                weights: torch.Tensor) -> torch.Tensor:
        """hidden (B, N, dim), kv from :meth:`keys_values`, weights (B, N, P) -> (B, N, dim)."""
        k, v = kv
        batch, n, _ = hidden.shape
        persons = weights.shape[-1]
        q = _split_heads(self.to_q(self.norm2(hidden)), self.heads)           # (B, H, N, d)
        scores = _scaled_scores(q, k.unsqueeze(0))                              # (B, H, N, P*T)
        scores = scores.unflatten(-1, (persons, -1))                            # (B, H, N, P, T)
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        probs = probs * weights.unsqueeze(1).unsqueeze(-1)                      # routing folded in
        out = probs.flatten(-2) @ v.unsqueeze(0)                                # (B, H, N, d)
        return self.to_out(out.transpose(1, 2).reshape(batch, n, -1))


class IDRouter(nn.Module):
    """Router logits: per video token, one score per person (no scale, no background class)."""

    def __init__(self, dim: int, token_dim: int, num_tokens: int):
        super().__init__()
        inner = token_dim  # official: 2048
        self.norm1 = nn.LayerNorm(token_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.id_merge = nn.Linear(num_tokens, 1, bias=False)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(token_dim, inner, bias=False)

    def person_keys(self, id_tokens: torch.Tensor) -> torch.Tensor:
        """(P, T, token_dim) -> (P, inner): one key per person. Step-independent: cache per run."""
        merged = self.id_merge(self.norm1(id_tokens).transpose(-2, -1)).squeeze(-1)
        return self.to_kv(merged)

    def forward(self, hidden: torch.Tensor, person_keys: torch.Tensor) -> torch.Tensor:
        """hidden (B, N, dim), person_keys (P, inner) -> logits (B, N, P)."""
        return self.to_q(self.norm2(hidden)) @ person_keys.transpose(0, 1)
