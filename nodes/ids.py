"""ID nodes: project the people into ID tokens once, then say how they are routed.

Project IDs is its own node so ComfyUI's cache keeps the ID tokens while only the prompt, seed or
sampler settings change: the q-former runs once per set of faces, not once per step or per run.
"""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from . import host
from .payloads import (
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

logger = logging.getLogger(__name__)

CATEGORY = "Ingredients"
MODEL_DEFAULT = "from model"


class ProjectIDs(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IngredientsProjectIDs",
            display_name="Ingredients Project IDs",
            category=CATEGORY,
            description="Turns the people into ID tokens with the model's q-former (32 tokens per person), once.",
            inputs=[
                ModelType.Input("model", tooltip="From Load Ingredients Model."),
                IDsType.Input("ids", tooltip="From Ingredients IDs (order = canvas slot order)."),
            ],
            outputs=[IDTokensType.Output("id_tokens", display_name="id_tokens",
                                         tooltip="ID tokens (people x 32 x 2048), for Route IDs.")],
        )

    @classmethod
    def execute(cls, model: IngredientsModel, ids: IngredientsIDs) -> io.NodeOutput:
        host.load(model.patcher)
        with torch.no_grad():
            tokens = model.transformer.project_ids(list(ids.faces))
        return io.NodeOutput(IngredientsIDTokens(tokens.to(host.output_device()), ids, model.folder))


class RouteIDs(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IngredientsRouteIDs",
            display_name="Ingredients Route IDs",
            category=CATEGORY,
            description=("How the ID features are routed into the video: routing mode and overall strength. "
                         "The router decides, per video region, which person it shows."),
            inputs=[
                IDTokensType.Input("id_tokens", tooltip="From Ingredients Project IDs."),
                io.Combo.Input("routing_mode", options=[MODEL_DEFAULT, *ROUTING_MODES], default=MODEL_DEFAULT,
                               tooltip=("from model = the loader's choice; official = the paper's code (router of "
                                        "the negative-prompt half for the whole batch); per_sample = each half on "
                                        "its own.")),
                io.Float.Input("strength", default=1.0, min=0.0, max=4.0, step=0.05,
                               tooltip=("Multiplies the checkpoint's ID strength (local_face_scale). 1.0 = as trained; "
                                        "lower = looser likeness, 0 = no identity features.")),
            ],
            outputs=[RoutedIDsType.Output("routed_ids", display_name="routed_ids",
                                          tooltip="ID tokens with their routing, for the sampler.")],
        )

    @classmethod
    def execute(cls, id_tokens: IngredientsIDTokens, routing_mode: str, strength: float) -> io.NodeOutput:
        from ..ingredients_core.routing import RoutingOptions

        follow_model = routing_mode == MODEL_DEFAULT
        options = RoutingOptions(mode=ROUTING_MODES[0] if follow_model else routing_mode,
                                 strengths=[float(strength)] * len(id_tokens.ids))
        options.check(len(id_tokens.ids))
        return io.NodeOutput(IngredientsRoutedIDs(id_tokens, options, follow_model))
