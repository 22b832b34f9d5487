"""Stand-in for ``comfy.lora``: the LoRA key map of a generic model, reading LoRA files, patching.

As ComfyUI 0.3.64 / 0.33.0 behave for the pieces the pack meets:

- ``model_lora_keys_unet`` maps, for every ``diffusion_model.<key>.weight``, the kohya name
  ``lora_unet_<key with dots as underscores>`` and ``diffusion_model.<key>``, and every other
  ``diffusion_model.`` key to itself (the model-class branches of the real one, SD3, Flux, ..., do
  not apply to the pack's model);
- ``load_lora`` reads ``lora_up``/``lora_down`` and ``lora_B``/``lora_A`` pairs with an optional
  ``.alpha`` (scale alpha / rank, else 1) and ``.diff`` / ``.diff_b`` full differences;
- ``calculate_weight`` adds ``strength * scale * up @ down`` to a float32 copy of the weight.
LoHa, LoKr, DoRA and the other adapters of the real module are left out.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

PAIRS = ((".lora_up.weight", ".lora_down.weight"), (".lora_B.weight", ".lora_A.weight"))


class LoRAPatch:
    """One layer's low-rank difference (the real module's ``weight_adapter.LoRAAdapter``)."""

    def __init__(self, up: torch.Tensor, down: torch.Tensor, alpha):
        self.up, self.down, self.alpha = up, down, alpha

    def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                         intermediate_dtype=torch.float32, original_weight=None):
        up = self.up.to(weight.device, intermediate_dtype)
        down = self.down.to(weight.device, intermediate_dtype)
        scale = self.alpha / down.shape[0] if self.alpha is not None else 1.0
        diff = torch.mm(up.flatten(start_dim=1), down.flatten(start_dim=1)).reshape(weight.shape)
        weight += function(((strength * scale) * diff).type(weight.dtype))
        return weight


def model_lora_keys_unet(model, key_map={}):  # noqa: B006 (the real signature)
    for k in model.state_dict():
        if k.startswith("diffusion_model."):
            if k.endswith(".weight"):
                key_map["lora_unet_{}".format(k[len("diffusion_model."):-len(".weight")].replace(".", "_"))] = k
                key_map[k[:-len(".weight")]] = k
            else:
                key_map[k] = k
    return key_map


def load_lora(lora, to_load, log_missing=True):
    patch_dict, loaded_keys = {}, set()
    for x, target in to_load.items():
        alpha = None
        if f"{x}.alpha" in lora:
            alpha = lora[f"{x}.alpha"].item()
            loaded_keys.add(f"{x}.alpha")
        for up, down in PAIRS:
            if x + up in lora:
                patch_dict[target] = LoRAPatch(lora[x + up], lora[x + down], alpha)
                loaded_keys.update((x + up, x + down))
                break
        if f"{x}.diff" in lora:
            patch_dict[target] = ("diff", (lora[f"{x}.diff"],))
            loaded_keys.add(f"{x}.diff")
        if f"{x}.diff_b" in lora:
            patch_dict[f"{target[:-len('.weight')]}.bias"] = ("diff", (lora[f"{x}.diff_b"],))
            loaded_keys.add(f"{x}.diff_b")
    if log_missing:
        for x in lora:
            if x not in loaded_keys:
                logger.warning("lora key not loaded: %s", x)
    return patch_dict


def calculate_weight(patches, weight, key, intermediate_dtype=torch.float32, original_weights=None):
    for strength, v, strength_model, offset, function in patches:
        function = function or (lambda a: a)
        if strength_model != 1.0:
            weight *= strength_model
        if isinstance(v, LoRAPatch):
            weight = v.calculate_weight(weight, key, strength, strength_model, offset, function, intermediate_dtype)
        elif v[0] == "diff":
            weight += function(strength * v[1][0].to(weight.device, weight.dtype))
        else:
            logger.warning("patch type %s not in the stand-in", v[0])
    return weight
