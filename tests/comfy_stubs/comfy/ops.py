"""Stand-in for ``comfy.ops``: layers that let ComfyUI keep their weights anywhere.

The contract of ComfyUI 0.3.64 / 0.33.0 (``offloadable`` streams, fp8 matmul and quantized
tensors left out): every layer has ``comfy_cast_weights``, ``weight_function`` and
``bias_function``. When ``comfy_cast_weights`` is set (``manual_cast`` layers always; others
when ``ModelPatcher.load`` leaves their weights on the offload device) or a function is present,
the forward casts weight and bias to the input's device and dtype on every call (the functions,
e.g. LoRA patches, applied to the cast copies); otherwise it is the plain torch layer.
``disable_weight_init`` layers skip the random initialisation.
"""

from __future__ import annotations

import torch

import comfy.model_management


def cast_to_input(weight, input, non_blocking=False, copy=True):
    return comfy.model_management.cast_to(weight, input.dtype, input.device, non_blocking=non_blocking, copy=copy)


def cast_bias_weight(s, input=None, dtype=None, device=None, bias_dtype=None):
    """(weight, bias) of layer ``s`` on ``device`` in ``dtype`` (default: the input's)."""
    if input is not None:
        dtype = input.dtype if dtype is None else dtype
        bias_dtype = dtype if bias_dtype is None else bias_dtype
        device = input.device if device is None else device
    cast_to = comfy.model_management.cast_to
    bias = None
    if s.bias is not None:
        bias = cast_to(s.bias, bias_dtype, device, copy=len(s.bias_function) > 0)
        for function in s.bias_function:
            bias = function(bias)
    weight = cast_to(s.weight, dtype, device, copy=len(s.weight_function) > 0)
    for function in s.weight_function:
        weight = function(weight)
    return weight, bias


class CastWeightBiasOp:
    comfy_cast_weights = False
    weight_function = []
    bias_function = []


class _Cast(CastWeightBiasOp):
    def reset_parameters(self):
        return None

    def forward(self, *args, **kwargs):
        if self.comfy_cast_weights or len(self.weight_function) > 0 or len(self.bias_function) > 0:
            return self.forward_comfy_cast_weights(*args, **kwargs)
        kwargs.pop("out_dtype", None)
        return super().forward(*args, **kwargs)


def _rms_norm(x, weight, eps):
    shape = (x.shape[-1],) if weight is None else weight.shape
    return torch.nn.functional.rms_norm(x, shape, weight=weight, eps=eps)


class disable_weight_init:
    class Linear(_Cast, torch.nn.Linear):
        def forward_comfy_cast_weights(self, input):
            weight, bias = cast_bias_weight(self, input)
            return torch.nn.functional.linear(input, weight, bias)

    class Conv2d(_Cast, torch.nn.Conv2d):
        def forward_comfy_cast_weights(self, input):
            weight, bias = cast_bias_weight(self, input)
            return self._conv_forward(input, weight, bias)

    class Conv3d(_Cast, torch.nn.Conv3d):
        def forward_comfy_cast_weights(self, input):
            weight, bias = cast_bias_weight(self, input)
            return self._conv_forward(input, weight, bias)

    class GroupNorm(_Cast, torch.nn.GroupNorm):
        def forward_comfy_cast_weights(self, input):
            weight, bias = cast_bias_weight(self, input)
            return torch.nn.functional.group_norm(input, self.num_groups, weight, bias, self.eps)

    class LayerNorm(_Cast, torch.nn.LayerNorm):
        def forward_comfy_cast_weights(self, input):
            weight, bias = cast_bias_weight(self, input) if self.weight is not None else (None, None)
            return torch.nn.functional.layer_norm(input, self.normalized_shape, weight, bias, self.eps)

    class RMSNorm(_Cast, torch.nn.RMSNorm):
        def reset_parameters(self):
            self.bias = None
            return None

        def forward_comfy_cast_weights(self, input):
            weight = cast_bias_weight(self, input)[0] if self.weight is not None else None
            return _rms_norm(input, weight, self.eps)

    class Embedding(_Cast, torch.nn.Embedding):
        def reset_parameters(self):
            self.bias = None
            return None

        def forward_comfy_cast_weights(self, input, out_dtype=None):
            output_dtype = out_dtype
            if self.weight.dtype in (torch.float16, torch.bfloat16):
                out_dtype = None
            weight, _ = cast_bias_weight(self, device=input.device, dtype=out_dtype)
            return torch.nn.functional.embedding(input, weight, self.padding_idx, self.max_norm, self.norm_type,
                                                 self.scale_grad_by_freq, self.sparse).to(dtype=output_dtype)

    @classmethod
    def conv_nd(cls, dims, *args, **kwargs):
        if dims == 2:
            return cls.Conv2d(*args, **kwargs)
        if dims == 3:
            return cls.Conv3d(*args, **kwargs)
        raise ValueError(f"unsupported dimensions: {dims}")


class manual_cast(disable_weight_init):
    """Every layer of :class:`disable_weight_init`, casting its weights at each call (as ComfyUI's)."""


for _layer in ("Linear", "Conv2d", "Conv3d", "GroupNorm", "LayerNorm", "RMSNorm", "Embedding"):
    setattr(manual_cast, _layer, type(_layer, (getattr(disable_weight_init, _layer),),
                                      {"comfy_cast_weights": True, "__qualname__": f"manual_cast.{_layer}"}))
del _layer


def pick_operations(weight_dtype, compute_dtype, load_device=None, disable_fast_fp8=False, fp8_optimizations=False):
    """``disable_weight_init`` when the weights are computed in their own dtype, else ``manual_cast``
    (ComfyUI's fp8-matmul and cuBLAS variants need CUDA and are not modelled)."""
    if compute_dtype is None or weight_dtype == compute_dtype:
        return disable_weight_init
    return manual_cast
