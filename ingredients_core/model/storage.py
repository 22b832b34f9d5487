"""Storage dtype apart from compute dtype: which weights may be kept in fp8.

The large matrices of the transformer (every ``Linear`` of the CogVideoX blocks and of the ID
modules, weights and biases) may be stored in a lower-precision *storage* dtype such as
``float8_e4m3fn``; everything else (patch, text, time and output embeddings, norms, the learned
positions, the q-former's latents) keeps the compute dtype. A host computes with the storage
weights through layers that cast them per call (ComfyUI's ``comfy.ops.manual_cast``, diffusers'
layerwise casting hooks). fp8 halves the resident bytes of bf16 weights; its rounding error on
the forward is measured by ``bench/bench_memory.py`` and bounded in the tests.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: Weight dtype choices (the model loader's ``weight_dtype``), name -> storage dtype (None = compute dtype).
WEIGHT_DTYPES = {
    "default": None,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e4m3fn_fast": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
#: Top-level parts that always keep the compute dtype (small, and the model's input/output ends).
KEEP_COMPUTE_DTYPE = ("patch_embed.", "time_embedding.", "norm_out.", "proj_out.")


def storage_module_names(model: nn.Module) -> set[str]:
    """Names of the ``Linear`` layers whose parameters may be stored in the storage dtype."""
    return {name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and not (name + ".").startswith(KEEP_COMPUTE_DTYPE)}


def tensor_dtype(key: str, storage_modules: set[str], compute: torch.dtype,
                 storage: Optional[torch.dtype]) -> torch.dtype:
    """The dtype the checkpoint tensor ``key`` is kept in."""
    if storage is not None and key.rpartition(".")[0] in storage_modules:
        return storage
    return compute


def convert(tensor: torch.Tensor, dtype: torch.dtype, device) -> torch.Tensor:
    """``tensor`` in ``dtype`` on ``device``; fp8 targets are clamped to their finite range first
    (a plain cast turns values beyond it into NaN; e5m2 reaches beyond e4m3fn's 448 too)."""
    if dtype in FP8_DTYPES and tensor.dtype != dtype:
        limit = torch.finfo(dtype).max
        tensor = tensor.float().clamp_(-limit, limit) if tensor.dtype != torch.float32 else tensor.clamp(-limit, limit)
    return tensor.to(device=device, dtype=dtype)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (meta tensors count as allocated ones would)."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def enable_storage_casting(model: nn.Module, storage: torch.dtype, compute: torch.dtype) -> int:
    """Compute with weights kept in ``storage`` through diffusers' layerwise casting hooks: each
    storage layer is cast to ``compute`` for its forward and back afterwards. For hosts without
    casting layers of their own (the CLI); returns the number of hooked layers."""
    from diffusers.hooks.layerwise_casting import apply_layerwise_casting_hook

    names = storage_module_names(model)
    modules = dict(model.named_modules())
    for name in sorted(names):
        apply_layerwise_casting_hook(modules[name], storage, compute, non_blocking=False)
    return len(names)
