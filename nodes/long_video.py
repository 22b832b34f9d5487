"""*Ingredients Long Video*: the MODEL set up to sample a video longer than the checkpoint's own length
in ComfyUI's context windows (windows of the checkpoint's length along the frames, the canvas latent
in every window's first frame). The windows' maths is ``native_windows``; the handler is ComfyUI's
(``host.with_context_windows``)."""

from __future__ import annotations

import logging

from comfy_api.latest import io, ui

from ..ingredients_core import InputError
from . import host, native_windows
from .schema import MAX_LONG_FRAMES, node_schema

logger = logging.getLogger(__name__)

FUSE_METHODS = ["pyramid", "relative", "flat", "overlap-linear"]  # ComfyUI's ContextFuseMethods.LIST_STATIC


class LongVideo(io.ComfyNode):
    """Samples videos longer than the checkpoint's own length (49 frames for the official model) in ComfyUI's
    context windows: windows of exactly the checkpoint's length slide over the frames and their results are
    blended where they overlap. Every window sees the face canvas and the routed IDs, so each person stays
    themselves in every window. Put it on the MODEL before KSampler / SamplerCustomAdvanced (or the Ingredients
    Sampler's patched_model), and connect its frames output to Ingredients Image to Video's frames (or the
    Sampler's). Each step costs one model run per window. Long-video quality has not been measured with the
    released weights: judge it with Ingredients Identity Check."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(cls, "IngredientsLongVideo", "Ingredients Long Video", inputs=[
            io.Model.Input("model", tooltip="The Ingredients MODEL (after Apply IDs, LoRAs, TeaCache...): the "
                                            "result is a copy that samples in windows."),
            io.Int.Input("frames", default=97, min=1, max=MAX_LONG_FRAMES, step=4,
                         tooltip=("The long video's length in frames, 4k+1 (97 = two windows' worth of the "
                                  "official checkpoint, 193 = four). Shown with its windows below, and given "
                                  "out as the frames output for Image to Video's (or the Sampler's) frames.")),
            io.Int.Input("overlap", default=16, min=0, max=192, step=4,
                         tooltip=("Frames shared by neighbouring windows (4 per latent frame); more blends the "
                                  "windows more smoothly and costs more windows. 16 (4 of the 13 latent "
                                  "frames) for the official checkpoint; at most the window's length minus 4.")),
            io.Combo.Input("fuse_method", options=FUSE_METHODS, default="pyramid",
                           tooltip=("How overlapping windows are blended (ComfyUI's fuse methods): pyramid "
                                    "weighs each window's middle frames most (its edges least); overlap-linear "
                                    "ramps only across the overlap; flat averages; relative is a running "
                                    "distance-weighted average.")),
        ], outputs=[io.Model.Output("MODEL", display_name="MODEL",
                                    tooltip="The MODEL sampling in context windows."),
                    io.Int.Output("video_frames", display_name="frames",
                                  tooltip="The video's frames: connect to Ingredients Image to Video's frames "
                                          "(or the Ingredients Sampler's).")])

    @classmethod
    def execute(cls, model, frames: int, overlap: int, fuse_method: str) -> io.NodeOutput:
        config = host.transformer_of(model).config
        if fuse_method not in FUSE_METHODS:
            raise InputError(f"fuse_method: {fuse_method!r}; take one of {FUSE_METHODS}.")
        plan = native_windows.plan(config, frames, overlap)
        patched = host.with_context_windows(model, plan.window, plan.overlap, fuse_method)
        text = native_windows.describe(plan)
        logger.info("Ingredients Long Video: %s", text)
        return io.NodeOutput(patched, plan.frames, ui=ui.PreviewText(text))
