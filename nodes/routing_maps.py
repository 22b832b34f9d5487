"""Routing maps: which person the router gave each video region, as frames for ComfyUI's savers."""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..ingredients_core import InputError
from . import host
from .payloads import IngredientsRouting, RoutingType
from .schema import node_schema

logger = logging.getLogger(__name__)

STEPS = ["last", "mean"]


def _frames(frames, routing: IngredientsRouting):
    """The IMAGE to draw over as (T, H, W, 3) float, or None; refuses anything else with the fix."""
    if frames is None:
        return None
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[-1] < 3:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise InputError(f"frames: expected an IMAGE batch (frames, height, width, 3), got {shape}; connect "
                         "Ingredients Decode's frames.")
    if frames.shape[0] != routing.frames:
        logger.warning("frames: %d images for a %d-frame routing; the maps are spread over them",
                       frames.shape[0], routing.frames)
    return frames[..., :3]


class RoutingMaps(io.ComfyNode):
    """Shows which person the router gave each video region (one colour per person, in ID order: red, blue, green,
    yellow; grey = nobody), over the decoded video or on a grey grid of the video's size. Feed the result to a
    video or image saver or a preview."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(cls, "IngredientsRoutingMaps", "Ingredients Routing Maps", inputs=[
            RoutingType.Input("routing", tooltip="From Ingredients Sampler (its second output)."),
            io.Image.Input("frames", optional=True,
                           tooltip=("Optional: the decoded video (Ingredients Decode) to draw the maps over. "
                                    "Without it: a grey grid (one cell per video token) at the video size.")),
            io.Combo.Input("steps", options=STEPS, default="last",
                           tooltip="last = the routing of the final step; mean = averaged over all steps."),
            io.Int.Input("layer", default=-1, min=-1, max=63,
                         tooltip=("-1 = mean over all routed layers; 0, 1, ... = one routed layer "
                                  "(the released model has 21).")),
            io.Float.Input("opacity", default=0.55, min=0.0, max=1.0, step=0.05,
                           tooltip="How strongly the colours cover the frames (only with frames connected)."),
        ], outputs=[io.Image.Output("maps", display_name="maps",
                                    tooltip="The routing maps as IMAGE frames (frames, height, width, 3).")])

    @classmethod
    def execute(cls, routing: IngredientsRouting, steps: str, layer: int, opacity: float,
                frames=None) -> io.NodeOutput:
        from ..ingredients_core.routing.maps import render

        maps = routing.maps(steps, layer)
        images = render(maps, frames=_frames(frames, routing), size=(routing.height, routing.width),
                        num_frames=routing.frames, alpha=float(opacity))
        return io.NodeOutput(images.clamp(0, 1).to(host.output_device()))
