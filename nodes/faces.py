"""Face nodes: encode one person, build the ordered ID list, show the face canvas.

The ID list's order is the canvas slot order: person 1 is pasted leftmost on the canvas the video
starts from, and the order decides which ID tokens go with which slot.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from comfy_api.latest import io, ui

from ..ingredients_core import InputError
from . import host
from .payloads import MAX_IDS, FaceEncoderType, FaceType, IDsType, IngredientsFaceEncoder, IngredientsIDs
from .schema import node_schema

logger = logging.getLogger(__name__)

FACE_CHOICES = ["best", "largest", "index"]


def to_image(array: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> ComfyUI IMAGE (1, H, W, 3) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(array)).float().div(255.0).unsqueeze(0).to(host.output_device())


def photos(image: torch.Tensor) -> list[torch.Tensor]:
    """The photos of an IMAGE batch, each (H, W, 3), with a clear error for anything else."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (3, 4) or image.shape[0] < 1:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InputError(f"image: expected a ComfyUI IMAGE batch (B, H, W, 3), got {shape}")
    return [frame[..., :3].cpu() for frame in image]


class EncodeFace(io.ComfyNode):
    """Finds, aligns and embeds one person's face (ArcFace + EVA-CLIP). Several photos of the same person in one
    IMAGE batch are combined into one ID."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(cls, "IngredientsEncodeFace", "Ingredients Encode Face", inputs=[
            FaceEncoderType.Input("face_encoder", tooltip="From Load Ingredients Face Encoder."),
            io.Image.Input("image", tooltip=("One or more photos of ONE person (an IMAGE batch); a "
                                             "head-and-shoulders photo with a clear frontal face works best.")),
            io.Combo.Input("face_choice", options=FACE_CHOICES, default="best",
                           tooltip=("Which face when a photo shows several: best = highest detector score "
                                    "(official), largest = biggest box, index = face_index-th from the left.")),
            io.Int.Input("face_index", default=0, min=0, max=63,
                         tooltip="With face_choice = index: 0 = leftmost face, 1 = next, ... Ignored otherwise."),
            io.Int.Input("min_face_size", default=64, min=0, max=1024,
                         tooltip="Smallest accepted face (short side of the box, pixels). 0 accepts any size."),
        ], outputs=[
            FaceType.Output("face", display_name="face",
                            tooltip="This person's face features, for Ingredients IDs."),
            io.Image.Output("aligned_crop", display_name="aligned_crop",
                            tooltip="The aligned 512 x 512 face crop (what goes on the canvas)."),
        ])

    @classmethod
    def execute(cls, face_encoder: IngredientsFaceEncoder, image: torch.Tensor, face_choice: str,
                face_index: int, min_face_size: int) -> io.NodeOutput:
        images = photos(image)
        host.load(face_encoder.patcher)
        features = face_encoder.encoder.encode_person(images, choice=face_choice, index=face_index, source="image",
                                         min_face_size=float(min_face_size))
        crop = to_image(features.crop)
        return io.NodeOutput(features, crop, ui=ui.PreviewImage(crop, cls=cls))


class IDList(io.ComfyNode):
    """Puts 1 to 4 people in order. The order is the canvas slot order (person 1 leftmost) and the order of the ID
    tokens."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        optional = [FaceType.Input(f"face_{i}", optional=True,
                                   tooltip=f"Person {i} (canvas slot {i}, counted from the left). Optional.")
                    for i in range(2, MAX_IDS + 1)]
        first = FaceType.Input("face_1", tooltip="Person 1 (canvas slot 1, leftmost).")
        return node_schema(cls, "IngredientsIDList", "Ingredients IDs", inputs=[first, *optional], outputs=[
            IDsType.Output("ids", display_name="ids", tooltip="The ordered people, for Project IDs and the canvas.")])

    @classmethod
    def execute(cls, face_1, face_2=None, face_3=None, face_4=None) -> io.NodeOutput:
        given = [face_1, face_2, face_3, face_4]
        last = max(i for i, face in enumerate(given) if face is not None)
        gaps = [f"face_{i + 1}" for i in range(last) if given[i] is None]
        if gaps:
            raise InputError(f"{', '.join(gaps)} not connected while face_{last + 1} is: connect the faces in "
                             "order without gaps (the order is the canvas slot order).")
        return io.NodeOutput(IngredientsIDs(tuple(given[: last + 1])))


class FaceCanvas(io.ComfyNode):
    """The 720 x 480 white canvas with the aligned faces in slot order: the image the video starts from (the
    sampler builds the same canvas itself)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(cls, "IngredientsFaceCanvas", "Ingredients Face Canvas",
                           inputs=[IDsType.Input("ids", tooltip="From Ingredients IDs.")],
                           outputs=[io.Image.Output("canvas", display_name="canvas",
                                                    tooltip="The face canvas as an IMAGE (1, 480, 720, 3).")])

    @classmethod
    def execute(cls, ids: IngredientsIDs) -> io.NodeOutput:
        from ..ingredients_core.faces import make_canvas

        canvas = to_image(make_canvas([face.crop for face in ids.faces]))
        return io.NodeOutput(canvas, ui=ui.PreviewImage(canvas, cls=cls))
