"""Identity check: per-person face similarity of a generated video, beside the paper's Face Similarity."""

from __future__ import annotations

import dataclasses
import logging

import torch
from comfy_api.latest import io, ui

from ..ingredients_core import InputError
from . import host
from .payloads import (
    MAX_IDS,
    FaceEncoderType,
    IDsType,
    IngredientsFaceEncoder,
    IngredientsIDs,
    IngredientsRouting,
    RoutingType,
)
from .schema import node_schema

logger = logging.getLogger(__name__)

DEFAULT_FRAMES = 24  # ingredients_core.identity.check.OFFICIAL_FRAMES (a test ties them)
DEFAULT_THRESHOLD = 0.35  # ingredients_core.identity.scores.DEFAULT_THRESHOLD (a test ties them)


def check_frames(frames) -> torch.Tensor:
    """The IMAGE batch (T, H, W, 3+), or a ValueError naming the input and the fix."""
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[-1] not in (3, 4):
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise InputError(f"frames: expected an IMAGE batch (frames, height, width, 3), got {shape}; connect "
                         "Ingredients Decode's frames or a video loader's IMAGE output.")
    return frames


def check_ids(ids) -> IngredientsIDs:
    if not isinstance(ids, IngredientsIDs) or len(ids) == 0:
        raise InputError(f"ids: expected the people from Ingredients IDs (1 to {MAX_IDS}), got "
                         f"{type(ids).__name__}; connect the same Ingredients IDs node the sampler's "
                         "Project IDs uses.")
    return ids


def routing_grid(routing: IngredientsRouting | None):
    """The sampler's routing as the core's grid (mean over steps and routed layers), or None."""
    from ..ingredients_core.identity.scores import RoutingGrid

    if routing is None:
        return None
    if not routing.layers:
        logger.warning("routing: nothing was recorded in that run (every person off); swaps are not checked")
        return None
    return RoutingGrid(routing.maps("mean", -1).float().cpu().numpy(), routing.frames)


class IdentityCheck(io.ComfyNode):
    """Did every person keep their face? Finds the faces in frames sampled from the video, matches them to the
    people one to one (ArcFace, as the face features), and reports per person the mean and lowest similarity and
    how often they were found, swaps (a person in the region the router gave someone else; needs the routing)
    and merges (a face equally close to two people), beside the paper's Face Similarity."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        persons = [io.Float.Output(f"person_{i}", display_name=f"person_{i}",
                                   tooltip=(f"Person {i}'s mean ArcFace similarity over the sampled frames (0 in "
                                            "frames where they were not found; 0 when there is no such person)."))
                   for i in range(1, MAX_IDS + 1)]
        return node_schema(cls, "IngredientsIdentityCheck", "Ingredients Identity Check", inputs=[
            FaceEncoderType.Input("face_encoder", tooltip=("From Load Ingredients Face Encoder (its detector "
                                                           "and ArcFace are used).")),
            IDsType.Input("ids", tooltip="The people of the video: the Ingredients IDs node used to make it."),
            io.Image.Input("frames", tooltip="The video's frames: Ingredients Decode's output or a video loader."),
            RoutingType.Input("routing", optional=True,
                              tooltip=("Optional: the sampler's routing output. With it, a person found in the "
                                       "region the router gave another person is listed as a swap.")),
            io.Int.Input("frames_to_sample", default=DEFAULT_FRAMES, min=1, max=4096,
                         tooltip=("Frames checked, spread evenly over the video (24, as the paper's metric; the "
                                  "whole video when it is shorter).")),
            io.Float.Input("threshold", default=DEFAULT_THRESHOLD, min=0.0, max=1.0, step=0.01,
                           tooltip=("Similarity at which a person counts as found in a frame (ArcFace cosine; "
                                    "different people rarely reach 0.35).")),
        ], outputs=[
            io.String.Output("report", display_name="report",
                             tooltip="The results as text: a table per person, the official score, swaps, merges."),
            io.Float.Output("official", display_name="official",
                            tooltip=("The paper's Face Similarity (Table 1): best match of any person in each "
                                     "frame, averaged; blind to who is who.")),
            *persons,
            io.Image.Output("plot", display_name="plot",
                            tooltip="Each person's similarity per frame in their colour, beside their face."),
        ], is_output_node=True)

    @classmethod
    def execute(cls, face_encoder: IngredientsFaceEncoder, ids: IngredientsIDs, frames: torch.Tensor,
                frames_to_sample: int, threshold: float, routing: IngredientsRouting | None = None) -> io.NodeOutput:
        from ..ingredients_core.identity.check import IdentityModels, Reference, evaluate_identity
        from ..ingredients_core.identity.plot import render_identity_plot

        frames, ids = check_frames(frames), check_ids(ids)
        people = [dataclasses.replace(Reference.from_features(face), name="") for face in ids.faces]
        models = IdentityModels(face_encoder.encoder, face_encoder.curricularface, face_encoder.curricularface_note)
        extra = [face_encoder.curricularface_patcher] if face_encoder.curricularface_patcher is not None else []
        host.load(face_encoder.patcher, *extra)
        report = evaluate_identity(frames[..., :3], people, models, num_frames=int(frames_to_sample),
                                   threshold=float(threshold), routing=routing_grid(routing),
                                   progress=lambda done, total: host.check_interrupt())
        text = report.table()
        plot = render_identity_plot(report, [face.crop for face in ids.faces])
        image = torch.from_numpy(plot).float().div(255.0).unsqueeze(0).to(host.output_device())
        means = list(report.means) + [0.0] * (MAX_IDS - len(report.means))
        shown = ui.PreviewImage(image, cls=cls).as_dict()
        shown["text"] = (text,)
        return io.NodeOutput(text, float(report.arcface.official), *[float(m) for m in means], image, ui=shown)
