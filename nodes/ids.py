"""ID nodes: project the people into ID tokens once, then say how they are routed.

Project IDs is its own node so ComfyUI's cache keeps the ID tokens while only the prompt, seed or
sampler settings change: the q-former runs once per set of faces, not once per step or per run.
"""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..ingredients_core import InputError
from . import host, qformer_lora
from .payloads import (
    MASK_MODES,
    MAX_IDS,
    ROUTING_MODES,
    IDsType,
    IDTokensType,
    IngredientsIDs,
    IngredientsIDTokens,
    IngredientsModel,
    IngredientsRoutedIDs,
    ModelType,
    RoutedIDsType,
)
from .schema import node_schema

logger = logging.getLogger(__name__)

MODEL_DEFAULT = "from model"


class ProjectIDs(io.ComfyNode):
    """Turns the people into ID tokens with the model's q-former (32 tokens per person), once."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(cls, "IngredientsProjectIDs", "Ingredients Project IDs", inputs=[
            ModelType.Input("model", tooltip="From Load Ingredients Model."),
            IDsType.Input("ids", tooltip="From Ingredients IDs (order = canvas slot order)."),
            io.Model.Input("patched_model", optional=True,
                           tooltip=("Optional: the MODEL after Ingredients LoRA (or another LoRA loader) of the "
                                    "same Load Ingredients Model. Its q-former LoRA layers "
                                    "(local_facial_extractor) act here, where the IDs are projected: connect it "
                                    "when the LoRA has any.")),
        ], outputs=[IDTokensType.Output("id_tokens", display_name="id_tokens",
                                        tooltip="ID tokens (people x 32 x 2048), for Route IDs.")])

    @classmethod
    def execute(cls, model: IngredientsModel, ids: IngredientsIDs, patched_model=None) -> io.NodeOutput:
        # the q-former alone, not the whole transformer; with q-former LoRA patches on patched_model that
        # MODEL (ComfyUI applies its patches as it loads it); under DynamicVRAM the MODEL's patcher, which
        # ComfyUI streams per layer (only the q-former's weights are then read)
        if patched_model is not None and host.transformer_of(patched_model) is not model.transformer:
            raise InputError("patched_model: this MODEL holds another transformer than model: connect the MODEL of "
                             "the same Load Ingredients Model (after Ingredients LoRA).")
        patcher = qformer_lora.projecting_patcher(model, patched_model)
        host.load_part(patcher)
        with torch.no_grad():
            tokens = model.transformer.project_ids(list(ids.faces), host.load_device(patcher),
                                                   model.transformer.placement()[1])
        patches = qformer_lora.qformer_patches(patcher) if patcher is patched_model else ()
        return io.NodeOutput(IngredientsIDTokens(tokens.to(host.output_device()), ids, model.folder,
                                                 model.weights, patches))


def _person_inputs(n: int) -> list:
    """The optional mask, strength and step range of person ``n`` (1-based)."""
    return [
        io.Mask.Input(f"mask_{n}", optional=True,
                      tooltip=(f"Optional region of person {n} (ComfyUI MASK, white = this person): one mask for the "
                               "whole video, or one per video frame. Any size; it is scaled to the video.")),
        io.Float.Input(f"strength_{n}", default=1.0, min=0.0, max=4.0, step=0.05, optional=True,
                       tooltip=f"Strength of person {n}, times the overall strength. 0 = person {n} is not injected."),
        io.Float.Input(f"start_{n}", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                       tooltip=f"Person {n} is injected from this fraction of the steps on (0 = from the first step)."),
        io.Float.Input(f"end_{n}", default=1.0, min=0.0, max=1.0, step=0.01, optional=True,
                       tooltip=f"Person {n} is injected until this fraction of the steps (1 = to the last step)."),
    ]


def _mask(mask, name: str) -> torch.Tensor:
    """A ComfyUI MASK (H, W) or (B, H, W) -> float (H, W) (static) or (frames, H, W) on the CPU."""
    if not isinstance(mask, torch.Tensor) or mask.dim() not in (2, 3) or 0 in mask.shape:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise InputError(f"{name}: expected a ComfyUI MASK of shape (height, width) or (frames, height, width), "
                         f"got {shape}")
    mask = mask.detach().float().cpu()
    return mask[0] if mask.dim() == 3 and mask.shape[0] == 1 else mask


def routing_options(people: int, mode: str, strength: float, mask_mode: str, mask_strength: float,
                    values: dict):
    """``RoutingOptions`` for ``people`` IDs from the node's inputs (``values``: mask_N, strength_N, ...)."""
    from ..ingredients_core.routing.plan import RoutingOptions

    extra = [n for n in range(people + 1, MAX_IDS + 1) if values.get(f"mask_{n}") is not None]
    if extra:
        raise InputError(f"mask_{extra[0]} is connected but there are only {people} IDs: disconnect it, or add "
                         f"person {extra[0]} on Ingredients IDs.")
    strengths, ranges, masks = [], [], []
    for n in range(1, people + 1):
        start, end = float(values.get(f"start_{n}", 0.0)), float(values.get(f"end_{n}", 1.0))
        if not 0.0 <= start <= end <= 1.0:
            raise InputError(f"start_{n}/end_{n}: {start}/{end}; person {n} needs 0 <= start <= end <= 1.")
        strengths.append(float(strength) * float(values.get(f"strength_{n}", 1.0)))
        ranges.append((start, end))
        mask = values.get(f"mask_{n}")
        masks.append(None if mask is None else _mask(mask, f"mask_{n}"))
    return RoutingOptions(mode=mode, strengths=strengths,
                          step_ranges=None if all(r == (0.0, 1.0) for r in ranges) else ranges,
                          masks=None if all(m is None for m in masks) else masks,
                          mask_mode=mask_mode, mask_strength=float(mask_strength))


class RouteIDs(io.ComfyNode):
    """How the ID features are routed into the video. The router decides, per video region, which person it shows;
    optional masks steer it (soft) or decide it (hard). Per person: a strength and the part of the steps it is
    injected in. Inputs of person N only count when there are N IDs."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        persons = [item for n in range(1, MAX_IDS + 1) for item in _person_inputs(n)]
        return node_schema(cls, "IngredientsRouteIDs", "Ingredients Route IDs", inputs=[
            IDTokensType.Input("id_tokens", tooltip="From Ingredients Project IDs."),
            io.Combo.Input("routing_mode", options=[MODEL_DEFAULT, *ROUTING_MODES], default=MODEL_DEFAULT,
                           tooltip=("from model = the loader's choice; official = the paper's code (router of "
                                    "the negative-prompt half for the whole batch); per_sample = each half on "
                                    "its own.")),
            io.Float.Input("strength", default=1.0, min=0.0, max=4.0, step=0.05,
                           tooltip=("Multiplies the checkpoint's ID strength (local_face_scale). 1.0 = as trained; "
                                    "lower = looser likeness, 0 = no identity features.")),
            io.Combo.Input("mask_mode", options=list(MASK_MODES), default="soft", optional=True,
                           tooltip=("soft = the masks push the router towards each person's region (by "
                                    "mask_strength); hard = inside a mask that person only, outside all masks "
                                    "nobody. Without masks this does nothing.")),
            io.Float.Input("mask_strength", default=5.0, min=0.0, max=50.0, step=0.5, optional=True,
                           tooltip=("Soft mode: how hard the masks push (added to the router's logits inside "
                                    "each mask). 0 = masks ignored; 5 = strong hint; 20+ = nearly hard.")),
            *persons,
        ], outputs=[RoutedIDsType.Output("routed_ids", display_name="routed_ids",
                                         tooltip="ID tokens with their routing, for the sampler.")])

    @classmethod
    def execute(cls, id_tokens: IngredientsIDTokens, routing_mode: str, strength: float, mask_mode: str = "soft",
                mask_strength: float = 5.0, **persons) -> io.NodeOutput:
        from ..ingredients_core.routing.plan import RoutingError

        follow_model = routing_mode == MODEL_DEFAULT
        people = len(id_tokens.ids)
        options = routing_options(people, ROUTING_MODES[0] if follow_model else routing_mode, strength, mask_mode,
                                  mask_strength, persons)
        try:
            options.check(people)
        except RoutingError as error:
            raise InputError(f"Route IDs: {error}") from error
        logger.debug("routing for %d IDs: masks %s, mode %s", people, options.masks is not None, options.mask_mode)
        return io.NodeOutput(IngredientsRoutedIDs(id_tokens, options, follow_model))
