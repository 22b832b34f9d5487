"""Injection points and small building blocks shared by the Ingredients transformer.

The model is built the way ComfyUI's ``comfy/ldm`` models are:

- layers come from an ``operations`` namespace (``Linear``, ``LayerNorm``, ``Conv2d``; default
  :data:`TORCH_OPS`, i.e. ``torch.nn``), so a host can hand in layers that stream, cast or quantise
  their weights (ComfyUI's ``comfy.ops``);
- attention goes through an injected function with the contract of :func:`sdpa_attention`
  (ComfyUI's ``optimized_attention(..., skip_reshape=True)`` has it), so a host can swap kernels.

Parameters and buffers that are not owned by an ``operations`` layer (the learned positional
embedding, the q-former's latents) are cast to the activations' device and dtype where they are
used (:func:`cast_like`): a host that streams the model leaves them on its offload device.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb, get_timestep_embedding
from torch import nn

#: The default layer namespace: plain ``torch.nn`` layers.
TORCH_OPS = SimpleNamespace(Linear=nn.Linear, LayerNorm=nn.LayerNorm, Conv2d=nn.Conv2d)

#: ``attention(q, k, v, heads)`` with q, k, v of shape (B, heads, N, d) -> (B, N, heads * d).
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Softmax attention with scale d^-1/2 through ``scaled_dot_product_attention``.

    q (B, H, N, d), k and v (B, H, M, d) -> (B, N, H * d).
    """
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).flatten(2)


def cast_like(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``tensor`` on ``like``'s device in ``like``'s dtype (no copy when it already is)."""
    return tensor.to(device=like.device, dtype=like.dtype)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, H * d) -> (B, H, N, d)."""
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def timestep_features(timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool, freq_shift: float) -> torch.Tensor:
    """Sinusoidal timestep features (B,) -> (B, dim), float32 (diffusers' ``get_timestep_embedding``)."""
    return get_timestep_embedding(timesteps, dim, flip_sin_to_cos=flip_sin_to_cos, downscale_freq_shift=freq_shift)


def apply_rotary(x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate interleaved (real, imaginary) pairs of x (B, H, N, d) by cos/sin (N, d) (diffusers'
    ``apply_rotary_emb``, computed in float32)."""
    return apply_rotary_emb(x, rotary)


class TimestepEmbedding(nn.Module):
    """Timestep features -> embedding: Linear, SiLU, Linear (keys ``linear_1``, ``linear_2``)."""

    def __init__(self, in_dim: int, dim: int, activation: str = "silu", ops=TORCH_OPS):
        super().__init__()
        if activation != "silu":
            raise ValueError(f"timestep activation {activation!r} is not supported (CogVideoX uses silu)")
        self.linear_1 = ops.Linear(in_dim, dim)
        self.linear_2 = ops.Linear(dim, dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(features)))


class GELUProjection(nn.Module):
    """Linear then GELU (key ``proj``), the first half of the CogVideoX feed-forward."""

    def __init__(self, dim: int, inner: int, approximate: str, ops=TORCH_OPS):
        super().__init__()
        self.proj = ops.Linear(dim, inner)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate=self.approximate)


_GELU = {"gelu-approximate": "tanh", "gelu": "none"}


class FeedForward(nn.Module):
    """dim -> 4 dim -> dim with GELU (keys ``net.0.proj``, ``net.2``), optionally in token chunks.

    ``chunk``: tokens per piece (None = all at once). The feed-forward acts on each token alone, so
    chunking changes no value; it bounds the (B, chunk, 4 dim) activation instead of (B, S, 4 dim).
    """

    def __init__(self, dim: int, activation: str = "gelu-approximate", mult: int = 4, ops=TORCH_OPS):
        super().__init__()
        if activation not in _GELU:
            raise ValueError(f"feed-forward activation {activation!r} is not supported; use one of {list(_GELU)}")
        self.net = nn.ModuleList([GELUProjection(dim, dim * mult, _GELU[activation], ops), nn.Identity(),
                                  ops.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor, chunk: Optional[int] = None) -> torch.Tensor:
        if chunk is None or x.shape[1] <= chunk:
            return self.net[2](self.net[0](x))
        return torch.cat([self.net[2](self.net[0](part)) for part in x.split(chunk, dim=1)], dim=1)


class LayerNormZero(nn.Module):
    """CogVideoX's adaptive norm of a block: one LayerNorm, shift/scale/gate per stream from the
    time embedding (keys ``linear``, ``norm``)."""

    def __init__(self, time_dim: int, dim: int, affine: bool, eps: float, ops=TORCH_OPS):
        super().__init__()
        self.linear = ops.Linear(time_dim, 6 * dim)
        self.norm = ops.LayerNorm(dim, eps=eps, elementwise_affine=affine)

    def forward(self, video: torch.Tensor, text: torch.Tensor, emb: torch.Tensor):
        """video (B, N, dim), text (B, S, dim), emb (B, time_dim) ->
        normed video, normed text, video gate (B, 1, dim), text gate (B, 1, dim)."""
        shift, scale, gate, t_shift, t_scale, t_gate = self.linear(F.silu(emb)).unsqueeze(1).chunk(6, dim=-1)
        video = self.norm(video) * (1 + scale) + shift
        text = self.norm(text) * (1 + t_scale) + t_shift
        return video, text, gate, t_gate


class AdaptiveOutputNorm(nn.Module):
    """The output norm: LayerNorm modulated by (shift, scale) from the time embedding
    (keys ``linear``, ``norm``; shift comes first)."""

    def __init__(self, time_dim: int, dim: int, affine: bool, eps: float, ops=TORCH_OPS):
        super().__init__()
        self.linear = ops.Linear(time_dim, 2 * dim)
        self.norm = ops.LayerNorm(dim, eps=eps, elementwise_affine=affine)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        shift, scale = self.linear(F.silu(emb)).unsqueeze(1).chunk(2, dim=-1)
        return self.norm(x) * (1 + scale) + shift
