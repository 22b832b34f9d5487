"""LoRA layer names for the Ingredients transformer in the three formats CogVideoX LoRAs come in.

A LoRA file names each layer it changes by a prefix followed by its tensors' suffixes
(``.lora_up.weight`` / ``.lora_down.weight`` / ``.alpha``, ``.lora_B.weight`` / ``.lora_A.weight``,
...). A host applies a LoRA with a *key map*, {layer prefix -> model weight key}; this module builds
the map for a model whose weight keys are ``diffusion_model.<official key>`` (the MODEL's), for:

- kohya: ``lora_unet_transformer_blocks_0_attn1_to_q`` (dots as underscores);
- PEFT / diffusers (how CogVideoX LoRAs are trained): ``transformer.transformer_blocks.0.attn1.to_q``,
  also without the ``transformer.`` prefix or under PEFT's ``base_model.model.``;
- ComfyUI-native CogVideoX (``comfy/ldm/cogvideo``): ``diffusion_model.blocks.0.q``, also bare or in
  kohya form (``lora_unet_blocks_0_q``); its names differ from diffusers' inside the blocks
  (:data:`NATIVE_RULES`) and for the time embedding; ``patch_embed``, ``norm_final``, ``norm_out`` and
  ``proj_out`` are the same. The ID modules have no native name.

Pure: no host import. The host merges this map with its own (``comfy.lora.model_lora_keys_unet``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Optional

MODEL_PREFIX = "diffusion_model."
#: Prefixes a LoRA puts before a layer's name (PEFT/diffusers, PEFT's wrapper, ComfyUI's, none).
NAME_PREFIXES = ("transformer.", "base_model.model.", "diffusion_model.", "")
KOHYA_PREFIX = "lora_unet_"
#: official (diffusers) layer name -> ComfyUI-native CogVideoX name
NATIVE_RULES = tuple((re.compile(pattern), native) for pattern, native in (
    (r"^transformer_blocks\.(\d+)\.attn1\.to_([qkv])$", r"blocks.\1.\2"),
    (r"^transformer_blocks\.(\d+)\.attn1\.(norm_[qk])$", r"blocks.\1.\2"),
    (r"^transformer_blocks\.(\d+)\.attn1\.to_out\.0$", r"blocks.\1.attn_out"),
    (r"^transformer_blocks\.(\d+)\.ff\.net\.0\.proj$", r"blocks.\1.ff_proj"),
    (r"^transformer_blocks\.(\d+)\.ff\.net\.2$", r"blocks.\1.ff_out"),
    (r"^transformer_blocks\.(\d+)\.(norm[12]\.(?:linear|norm))$", r"blocks.\1.\2"),
    (r"^time_embedding\.linear_([12])$", r"time_embedding_linear_\1"),
))
#: Tensor suffixes of one LoRA layer (ComfyUI's adapters read these), longest first.
LAYER_SUFFIXES = tuple(sorted((
    ".lora_up.weight", ".lora_down.weight", ".lora_mid.weight", "_lora.up.weight", "_lora.down.weight",
    ".lora_B.weight", ".lora_A.weight", ".lora.up.weight", ".lora.down.weight", ".lora_B.default.weight",
    ".lora_A.default.weight", ".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight", ".lora_B",
    ".lora_A", ".alpha", ".dora_scale", ".diff", ".diff_b", ".set_weight", ".w_norm", ".b_norm",
    ".reshape_weight", ".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".hada_t1", ".hada_t2",
    ".lokr_w1", ".lokr_w2", ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2_a", ".lokr_w2_b", ".lokr_t2",
    ".oft_blocks", ".oft_diag"), key=len, reverse=True))
#: (up, down) suffix pairs whose shapes tell the layer's (out, in) size.
UP_DOWN = ((".lora_up.weight", ".lora_down.weight"), (".lora_B.weight", ".lora_A.weight"),
           ("_lora.up.weight", "_lora.down.weight"), (".lora.up.weight", ".lora.down.weight"),
           (".lora_B.default.weight", ".lora_A.default.weight"), (".lora_B", ".lora_A"),
           (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight"))
FORMATS = ("kohya (lora_unet_transformer_blocks_0_attn1_to_q.lora_up.weight), PEFT/diffusers "
           "(transformer.transformer_blocks.0.attn1.to_q.lora_A.weight / lora_B.weight, with or without "
           "transformer.) and ComfyUI-native CogVideoX (diffusion_model.blocks.0.q.lora_up.weight, blocks.0.attn_out, "
           "ff_proj, ff_out, time_embedding_linear_1, ...)")


def native_name(layer: str) -> Optional[str]:
    """The ComfyUI-native CogVideoX name of an official layer name where it differs, else None."""
    for pattern, native in NATIVE_RULES:
        if pattern.match(layer):
            return pattern.sub(native, layer)
    return None


def lora_key_map(model_keys: Iterable[str]) -> dict[str, str]:
    """{LoRA layer prefix -> model weight key} in every format above, for the model's ``.weight`` keys
    under ``diffusion_model.``."""
    key_map: dict[str, str] = {}
    for key in model_keys:
        if not (key.startswith(MODEL_PREFIX) and key.endswith(".weight")):
            continue
        layer = key[len(MODEL_PREFIX):-len(".weight")]
        for name in filter(None, (layer, native_name(layer))):
            for prefix in NAME_PREFIXES:
                key_map[prefix + name] = key
            key_map[KOHYA_PREFIX + name.replace(".", "_")] = key
    return key_map


def lora_layers(lora_keys: Iterable[str]) -> dict[str, list[str]]:
    """{layer prefix -> its keys} of a LoRA file; a key with no known suffix is a layer of its own
    (named without its last part)."""
    layers: dict[str, list[str]] = {}
    for key in lora_keys:
        suffix = next((s for s in LAYER_SUFFIXES if key.endswith(s) and len(key) > len(s)), None)
        prefix = key[:-len(suffix)] if suffix else key.rpartition(".")[0] or key
        layers.setdefault(prefix, []).append(key)
    return layers


@dataclass(frozen=True)
class LoraMatch:
    """How a LoRA's layers meet a model: the key map to apply and what did not fit."""

    key_map: dict[str, str]           # the layers that fit: prefix -> model weight key
    unmatched: tuple[str, ...]        # layer prefixes no format maps onto the model
    wrong_shape: tuple[str, ...]      # "prefix: LoRA (out, in) vs model (out, in)"
    total: int                        # layers in the file

    @property
    def matched(self) -> int:
        return len(self.key_map)

    def summary(self, name: str, limit: int = 6) -> str:
        text = f"LoRA {name}: {self.matched} of {self.total} layers applied"
        if self.unmatched:
            text += f"; {len(self.unmatched)} not matched ({_listing(self.unmatched, limit)})"
        if self.wrong_shape:
            text += f"; {len(self.wrong_shape)} of another shape, left out ({_listing(self.wrong_shape, limit)})"
        return text


def match(lora_shapes: Mapping[str, tuple[int, ...]], model_shapes: Mapping[str, tuple[int, ...]],
          key_map: Mapping[str, str]) -> LoraMatch:
    """Which layers of a LoRA (its tensor shapes by key) fit a model (weight shapes by key) through
    ``key_map``; an up/down pair whose (out, in) is not the weight's is left out, so a LoRA made for
    another model (CogVideoX-2B, say) is named instead of half-applied."""
    fitting, unmatched, wrong = {}, [], []
    layers = lora_layers(lora_shapes)
    for prefix, keys in sorted(layers.items()):
        target = key_map.get(prefix)
        if target is None or target not in model_shapes:
            unmatched.append(prefix)
            continue
        size = _up_down_size(prefix, lora_shapes)
        weight = tuple(model_shapes[target])
        if size is not None and weight and size != (weight[0], math.prod(weight[1:])):
            wrong.append(f"{prefix}: {size} vs {(weight[0], math.prod(weight[1:]))}")
            continue
        fitting[prefix] = target
    return LoraMatch(fitting, tuple(unmatched), tuple(wrong), len(layers))


def _up_down_size(prefix: str, shapes: Mapping[str, tuple[int, ...]]) -> Optional[tuple[int, int]]:
    for up, down in UP_DOWN:
        if prefix + up in shapes and prefix + down in shapes:
            return tuple(shapes[prefix + up])[0], math.prod(tuple(shapes[prefix + down])[1:])
    return None


def _listing(items: Iterable[str], limit: int) -> str:
    items = list(items)
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
