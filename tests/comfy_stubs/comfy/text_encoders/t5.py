"""Stand-in for ``comfy.text_encoders.t5.T5``: a T5 v1.1 encoder on ``comfy.ops`` layers.

What the pack relies on in ComfyUI's class: the constructor ``T5(config_dict, dtype, device,
operations)`` reading an HF T5 config (``d_model``, ``d_kv``, ``num_heads``, ``num_layers``,
``d_ff``, ``dense_act_fn`` = ``gelu_pytorch_tanh``, ``is_gated_act``, ``model_type``,
``vocab_size``), the HF state-dict keys (``shared``, ``encoder.block.N.layer.{0,1}...``,
``encoder.final_layer_norm``), every weight in ``operations`` layers (so ComfyUI can stream them)
except the layer norms, which cast their weight to the input, and ``forward(input_ids,
attention_mask, dtype=...)`` returning ``(hidden states, intermediate)`` computed in ``dtype``.
The arithmetic is the T5 encoder's: no attention scaling, a relative position bias from the first
block shared by all blocks (32 buckets, distance 128, bidirectional), gated GELU (tanh).
"""

from __future__ import annotations

import math

import torch

import comfy.ops

ACTIVATIONS = {"gelu_pytorch_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
               "relu": torch.nn.functional.relu}


class T5LayerNorm(torch.nn.Module):
    def __init__(self, size, eps=1e-6, dtype=None, device=None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(size, dtype=dtype, device=device))
        self.eps = eps

    def forward(self, x):
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return comfy.ops.cast_to_input(self.weight, x) * x


def _bucket(relative, buckets=32, max_distance=128):
    half = buckets // 2
    out = (relative > 0).long() * half
    distance = relative.abs()
    exact = half // 2
    large = exact + (torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                     * (half - exact)).long()
    return out + torch.where(distance < exact, distance, large.clamp(max=half - 1))


class T5Attention(torch.nn.Module):
    def __init__(self, dim, inner, heads, relative_bias, dtype, device, operations):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = (operations.Linear(dim, inner, bias=False, dtype=dtype, device=device)
                                  for _ in range(3))
        self.o = operations.Linear(inner, dim, bias=False, dtype=dtype, device=device)
        self.relative_attention_bias = (operations.Embedding(32, heads, dtype=dtype, device=device)
                                        if relative_bias else None)

    def forward(self, x, bias):
        b, n, _ = x.shape
        split = lambda t: t.view(b, n, self.heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        if self.relative_attention_bias is not None:
            position = torch.arange(n, device=x.device)
            buckets = _bucket(position[None, :] - position[:, None])
            bias = self.relative_attention_bias(buckets, out_dtype=x.dtype).permute(2, 0, 1).unsqueeze(0)
        scores = (q @ k.transpose(-2, -1) + bias).float().softmax(-1).to(q.dtype)
        return self.o((scores @ v).transpose(1, 2).reshape(b, n, -1)), bias


class T5FeedForward(torch.nn.Module):
    def __init__(self, dim, ff, activation, gated, dtype, device, operations):
        super().__init__()
        if not gated:
            raise ValueError("the stand-in T5 models T5 v1.1 (gated activation) only")
        self.wi_0 = operations.Linear(dim, ff, bias=False, dtype=dtype, device=device)
        self.wi_1 = operations.Linear(dim, ff, bias=False, dtype=dtype, device=device)
        self.wo = operations.Linear(ff, dim, bias=False, dtype=dtype, device=device)
        self.act = ACTIVATIONS[activation]

    def forward(self, x):
        return self.wo(self.act(self.wi_0(x)) * self.wi_1(x))


class _SelfAttentionLayer(torch.nn.Module):
    def __init__(self, attention, dim, dtype, device):
        super().__init__()
        self.SelfAttention = attention
        self.layer_norm = T5LayerNorm(dim, dtype=dtype, device=device)


class _FeedForwardLayer(torch.nn.Module):
    def __init__(self, ff, dim, dtype, device):
        super().__init__()
        self.DenseReluDense = ff
        self.layer_norm = T5LayerNorm(dim, dtype=dtype, device=device)


class T5Block(torch.nn.Module):
    def __init__(self, c, first, dtype, device, operations):
        super().__init__()
        dim, inner = c["d_model"], c["d_kv"] * c["num_heads"]
        attention = T5Attention(dim, inner, c["num_heads"], first, dtype, device, operations)
        ff = T5FeedForward(dim, c["d_ff"], c["dense_act_fn"], c["is_gated_act"], dtype, device, operations)
        self.layer = torch.nn.ModuleList([_SelfAttentionLayer(attention, dim, dtype, device),
                                          _FeedForwardLayer(ff, dim, dtype, device)])

    def forward(self, x, bias):
        attention, ff = self.layer
        out, bias = attention.SelfAttention(attention.layer_norm(x), bias)
        x = x + out
        return x + ff.DenseReluDense(ff.layer_norm(x)), bias


class T5Stack(torch.nn.Module):
    def __init__(self, c, dtype, device, operations):
        super().__init__()
        self.block = torch.nn.ModuleList(T5Block(c, i == 0, dtype, device, operations)
                                         for i in range(c["num_layers"]))
        self.final_layer_norm = T5LayerNorm(c["d_model"], dtype=dtype, device=device)

    def forward(self, x, attention_mask=None, intermediate_output=None, final_layer_norm_intermediate=True,
                dtype=None, embeds_info=()):
        if attention_mask is not None:
            raise NotImplementedError("the stand-in T5 takes no attention mask (the pack never passes one)")
        bias = None
        for block in self.block:
            x, bias = block(x, bias)
        return self.final_layer_norm(x), None


class T5(torch.nn.Module):
    def __init__(self, config_dict, dtype, device, operations):
        super().__init__()
        if config_dict["model_type"] != "t5":
            raise ValueError("the stand-in T5 models T5 (not umT5)")
        self.num_layers = config_dict["num_layers"]
        self.encoder = T5Stack(config_dict, dtype, device, operations)
        self.dtype = dtype
        self.shared = operations.Embedding(config_dict["vocab_size"], config_dict["d_model"], device=device,
                                           dtype=dtype)

    def forward(self, input_ids, attention_mask, embeds=None, num_tokens=None, **kwargs):
        x = self.shared(input_ids, out_dtype=kwargs.get("dtype", torch.float32)) if embeds is None else embeds
        return self.encoder(x, attention_mask=attention_mask, **kwargs)
