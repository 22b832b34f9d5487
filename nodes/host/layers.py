"""ComfyUI's layers for the pack's networks: the folder's T5 on ComfyUI's own T5 (``comfy.ops``
casting layers, so ComfyUI can load it partially and it computes from fp8 weights), and the
``operations`` and attention the transformer is built with (``comfy.ops`` for its storage and
compute dtypes; ComfyUI's ``optimized_attention``: sage, flash, xformers, ... as its flags pick).
"""

from __future__ import annotations

import comfy.model_management
import comfy.ops
import torch

from ...ingredients_core import InputError
from .memory import devices, load_for_run, output_device


# -- T5 on ComfyUI's own T5 ----------------------------------------------------------------------
T5_COMPUTE_DTYPE = torch.float32  # ComfyUI computes its text encoders in float32 (fp16 T5 overflows)
T5_ACTIVATIONS = {"gelu_new": "gelu_pytorch_tanh", "gelu_pytorch_tanh": "gelu_pytorch_tanh", "relu": "relu"}


def _comfy_t5_config(config: dict) -> dict:
    """An HF T5 config as ComfyUI's T5 reads it: ``gelu_new`` is the tanh GELU ComfyUI calls
    ``gelu_pytorch_tanh`` (T5 v1.1's ``feed_forward_proj`` "gated-gelu" means it); ``is_gated_act``
    from ``feed_forward_proj`` when absent. ComfyUI's T5 fixes its relative positions at 32 buckets
    over 128 tokens; a config that asks for others is refused, as is any other activation."""
    projection = config.get("feed_forward_proj", "relu")
    act = config.get("dense_act_fn") or ("gelu_new" if projection == "gated-gelu" else projection.split("-")[-1])
    where = "text_encoder/config.json"
    if act not in T5_ACTIVATIONS:
        raise InputError(f"{where}: activation {act!r} is not one ComfyUI's T5 has ({', '.join(T5_ACTIVATIONS)}); "
                         "use CLIPLoader with this T5 instead")
    buckets = (config.get("relative_attention_num_buckets", 32), config.get("relative_attention_max_distance", 128))
    if buckets != (32, 128):
        raise InputError(f"{where}: relative attention of {buckets[0]} buckets over {buckets[1]} tokens; ComfyUI's "
                         "T5 has 32 over 128 (T5 v1.1 XXL's)")
    gated = config.get("is_gated_act", projection.startswith("gated"))
    return dict(config, dense_act_fn=T5_ACTIVATIONS[act], is_gated_act=gated, model_type=config.get("model_type", "t5"))


def native_t5(config: dict, tensors, storage: torch.dtype) -> torch.nn.Module:
    """ComfyUI's T5 encoder (``comfy.text_encoders.t5.T5`` on ``comfy.ops.manual_cast``, so ComfyUI
    can load it partially and it computes from fp8 weights) for an HF T5 config, the checkpoint
    ``tensors`` converted one at a time to ``storage`` on the offload device."""
    from comfy.text_encoders.t5 import T5

    from ...ingredients_core.model.storage import convert

    _, offload = devices("text")
    with torch.device("meta"):
        model = T5(_comfy_t5_config(config), storage, None, comfy.ops.manual_cast)
    expected = set(model.state_dict())
    params = {}
    for key, tensor in tensors:
        key = "shared.weight" if key == "encoder.embed_tokens.weight" else key  # tied embedding
        if key in expected and key not in params:
            params[key] = convert(tensor, storage if tensor.is_floating_point() else tensor.dtype, offload)
    missing = sorted(expected - set(params))
    if missing:
        raise InputError(f"text_encoder: {len(missing)} T5 weights missing ({', '.join(missing[:6])}); "
                         "download the complete text_encoder/ folder")
    model.load_state_dict(params, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def run_t5(patcher, model: torch.nn.Module, input_ids: torch.Tensor, memory_required: int) -> torch.Tensor:
    """Hidden states (N, tokens, D) in float32 on the output device; ComfyUI loads what fits."""
    load_for_run(patcher, memory_required, memory_required)
    with torch.no_grad():
        hidden, _ = model(input_ids.to(patcher.load_device), None, dtype=T5_COMPUTE_DTYPE)
    return hidden.float().to(output_device())


# -- the transformer on ComfyUI's layers and attention ---------------------------------------------
def optimized_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """ComfyUI's attention backend of the moment (sage, flash, xformers, split, sub-quadratic or
    SDPA, as its flags pick) for q, k, v (B, heads, N, d) -> (B, N, heads * d). Looked up per
    call, so a node that patches ComfyUI's attention applies here too."""
    import comfy.ldm.modules.attention as attention

    return attention.optimized_attention(q, k, v, heads, skip_reshape=True)


def transformer_layers(weight_dtype: torch.dtype, compute: torch.dtype, fast_fp8: bool = False) -> dict:
    """``operations`` and ``attention`` to build the transformer with: ``comfy.ops`` picked for
    its storage and compute dtypes (casting layers when they differ; fp8 matrix multiplies with
    ``fast_fp8`` where the GPU has them), and :func:`optimized_attention`."""
    operations = comfy.ops.pick_operations(weight_dtype, compute, load_device=devices("diffusion")[0],
                                           fp8_optimizations=fast_fp8)
    return {"operations": operations, "attention": optimized_attention}


def supports_fp8_compute() -> bool:
    return bool(comfy.model_management.supports_fp8_compute(devices("diffusion")[0]))
