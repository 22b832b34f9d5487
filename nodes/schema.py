"""What the node schemas share: the pack's category and the schema call (:func:`node_schema`, the
node's description being its class docstring), and the video size inputs of the Ingredients Sampler
and Ingredients Image to Video with their one validation (:func:`size_inputs`, :func:`video_settings`).
"""

from __future__ import annotations

from comfy_api.latest import io

CATEGORY = "Ingredients"
MAX_LONG_FRAMES = 1025  # 4k + 1: the longest video (Long Video's frames; the official checkpoint: 21 windows)
MAX_SEED = 0xFFFFFFFFFFFFFFFF


def describe(node: type) -> str:
    """A node's description: its class docstring on one line (words joined by single spaces)."""
    return " ".join((node.__doc__ or "").split())


def node_schema(node: type, node_id: str, display_name: str, inputs: list, outputs: list,
                description: str | None = None, **more) -> io.Schema:
    """The ``io.Schema`` of a pack node in the pack's category; the description is the class
    docstring unless given; ``more``: ``is_output_node`` and the like."""
    return io.Schema(node_id=node_id, display_name=display_name, category=CATEGORY,
                     description=describe(node) if description is None else description,
                     inputs=inputs, outputs=outputs, **more)


def size_inputs() -> list:
    """The video's width, height and frames (official: 720 x 480, 49 frames)."""
    return [
        io.Int.Input("width", default=720, min=16, max=2048, step=16,
                     tooltip="Video width in pixels (multiple of 16). The released model needs 720."),
        io.Int.Input("height", default=480, min=16, max=2048, step=16,
                     tooltip="Video height in pixels (multiple of 16). The released model needs 480."),
        io.Int.Input("frames", default=49, min=1, max=MAX_LONG_FRAMES, step=4,
                     tooltip=("Number of frames, 4k+1 (1, 5, ..., 49). The released model makes 49; more "
                              "(97, 145, 193, ...) with Ingredients Long Video on the MODEL (its frames "
                              "output connects here), else refused.")),
    ]


def video_settings(**values):
    """The core's ``GenerationSettings`` of the node's values (width, height, frames, ...), validated:
    a value out of range raises an error naming the input at fault."""
    from ..ingredients_core.sampling.settings import GenerationSettings

    settings = GenerationSettings(**values)
    settings.validate()
    return settings
