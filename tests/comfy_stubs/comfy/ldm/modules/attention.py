"""Stand-in for ``comfy.ldm.modules.attention.optimized_attention``: PyTorch SDPA, counted.

Same arguments as ComfyUI's backends (sage, flash, xformers, split, sub-quadratic or SDPA, picked
from its flags): q, k, v as (B, N, heads * dim), or (B, heads, N, dim) with ``skip_reshape``; the
output (B, N, heads * dim), or (B, heads, N, dim) with ``skip_output_reshape``; ``mask`` additive
(float) or boolean (True = attend), broadcast over batch and heads when 2-D or 3-D. ``calls``
counts the calls so tests can check that a model routes its attention through the host.
"""

from __future__ import annotations

import torch

calls = 0


def optimized_attention(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                        skip_output_reshape=False, **kwargs):
    global calls
    calls += 1
    if skip_reshape:
        b, _, _, dim_head = q.shape
    else:
        b, _, dim_head = q.shape
        dim_head //= heads
        q, k, v = (t.view(b, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
    if mask is not None:
        if mask.ndim == 2:
            mask = mask.unsqueeze(0)
        if mask.ndim == 3:
            mask = mask.unsqueeze(1)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
    if not skip_output_reshape:
        out = out.transpose(1, 2).reshape(b, -1, heads * dim_head)
    return out


optimized_attention_masked = optimized_attention
