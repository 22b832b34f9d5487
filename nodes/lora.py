"""Ingredients LoRA: a LoRA file onto the Ingredients MODEL, in any of the formats CogVideoX LoRAs
come in (kohya, PEFT/diffusers, ComfyUI-native; :mod:`ingredients_core.weights.lora_keys`).

ComfyUI's *LoraLoaderModelOnly* already applies kohya files and ``diffusion_model.``-prefixed ones
to the MODEL; its key map has no hook a model can extend, so PEFT/diffusers and native names need
this node. It merges ComfyUI's key map with the pack's and applies the LoRA through ComfyUI's own
``load_lora`` and ``add_patches`` on a clone, so the patches behave as every other LoRA's (loaded
with the weights, stacked with other LoRA nodes, removed when the clone is gone).
"""

from __future__ import annotations

import logging

from comfy_api.latest import io, ui

from ..ingredients_core import InputError
from ..ingredients_core.weights import lora_keys
from . import host, qformer_lora
from .schema import node_schema

logger = logging.getLogger(__name__)


class LoraLoader(io.ComfyNode):
    """Applies a CogVideoX LoRA to the Ingredients MODEL: kohya (lora_unet_...), PEFT/diffusers
    (transformer.transformer_blocks.N...lora_A/lora_B, the format CogVideoX LoRAs are trained in) or
    ComfyUI-native (blocks.N.q, attn_out, ff_proj, ...). Shows how many LoRA layers matched and names those that
    did not."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(cls, "IngredientsLoraLoader", "Ingredients LoRA", inputs=[
            io.Model.Input("model", tooltip="The Ingredients MODEL (Load Ingredients Model's MODEL output, or "
                                            "after Apply IDs or another LoRA)."),
            io.Combo.Input("lora_name", options=host.lora_names(),
                           tooltip="A LoRA file in ComfyUI's models/loras folder, trained for CogVideoX-5B "
                                   "(I2V or T2V: the blocks are the same)."),
            io.Float.Input("strength_model", default=1.0, min=-100.0, max=100.0, step=0.01,
                           tooltip="How strongly the LoRA changes the weights: W + strength x alpha/rank x "
                                   "up @ down; 0 leaves the MODEL unchanged, negative values subtract it."),
        ], outputs=[io.Model.Output("patched_model", display_name="model",
                                    tooltip="A copy of the MODEL with the LoRA.")])

    @classmethod
    def execute(cls, model, lora_name: str, strength_model: float) -> io.NodeOutput:
        host.transformer_of(model)  # another model family's MODEL is refused, naming the fix
        if strength_model == 0:
            return io.NodeOutput(model, ui=ui.PreviewText(f"LoRA {lora_name}: strength 0, not applied"))
        lora = host.load_lora_file(lora_name, "lora_name")
        model_shapes = host.model_weight_shapes(model)
        key_map = host.host_lora_key_map(model)
        key_map.update(lora_keys.lora_key_map(model_shapes))
        fit = lora_keys.match({k: tuple(v.shape) for k, v in lora.items()}, model_shapes, key_map)
        if not fit.matched:
            raise InputError(f"lora_name: none of the {fit.total} layers of {lora_name} fit the Ingredients "
                             f"transformer ({fit.summary(lora_name)}). Understood: {lora_keys.FORMATS}. Is it a "
                             "LoRA for CogVideoX-5B?")
        patched, weights = host.apply_lora(model, lora, fit.key_map, strength_model)
        text = f"{_summary(fit, lora_name)} ({weights} weights patched, strength {strength_model:g})"
        if fit.unmatched or fit.wrong_shape:
            logger.warning("Ingredients LoRA: %s", text)
        else:
            logger.info("Ingredients LoRA: %s", text)
        return io.NodeOutput(patched, ui=ui.PreviewText(text))


def _summary(fit, lora_name: str) -> str:
    """The match summary, the q-former layers counted apart: they change the ID tokens (Project IDs'
    patched_model input), not the output of the MODEL this node returns."""
    text = fit.summary(lora_name)
    qformer = sum(qformer_lora.is_qformer_key(key) for key in fit.key_map.values())
    if not qformer:
        return text
    head = f"LoRA {lora_name}: {fit.matched} of {fit.total} layers applied"
    return (f"LoRA {lora_name}: {fit.matched - qformer} of {fit.total} layers applied to the MODEL, {qformer} "
            "q-former layers (local_facial_extractor) for Project IDs: connect this MODEL to its patched_model "
            "input" + text[len(head):])
