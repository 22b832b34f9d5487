"""The face canvas: the first frame the image-to-video model starts from.

Official geometry (1 or 2 IDs): a white 720 x 480 RGB image; ID ``i``'s aligned crop is resized
to 360 x 360 with PIL's bicubic filter (``Image.resize``'s default for RGB) and pasted with its
top-left corner at ``(360 * i, 60)``.

The official pipeline then turns the canvas into a float32 tensor divided by 255 and back with
``(t * 255).astype(uint8)``, which truncates. In float32 that round trip returns every value
0..255 unchanged (the tests check all 256 and compare the canvas with the official arithmetic
end to end), so the canvas here is the plain paste. The official crop also passes through two
BGR/RGB swaps; their net effect is none: the canvas is RGB.

3 and 4 IDs (beyond the official code, which supports 2): the slots shrink so they fit the
720 px width side by side, and are centred vertically: 3 IDs get 240 x 240 slots at
``(240 * i, 120)``, 4 IDs get 180 x 180 slots at ``(180 * i, 150)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from ..routing.plan import MAX_IDS

CANVAS_WIDTH = 720
CANVAS_HEIGHT = 480


def canvas_slots(count: int) -> list[tuple[int, int, int]]:
    """``(x, y, size)`` of each square slot for ``count`` IDs (1 to 4), left to right."""
    if not 1 <= count <= MAX_IDS:
        raise ValueError(f"the face canvas holds 1 to {MAX_IDS} faces, got {count}")
    if count <= 2:
        return [(360 * i, 60, 360) for i in range(count)]
    size = CANVAS_WIDTH // count
    top = (CANVAS_HEIGHT - size) // 2
    return [(size * i, top, size) for i in range(count)]


def make_canvas(crops: Sequence[np.ndarray]) -> np.ndarray:
    """Paste 1 to 4 aligned face crops (RGB uint8, any square size, usually 512) on the canvas.

    Returns a new, writable ``(480, 720, 3)`` uint8 RGB array (``torch.from_numpy`` takes it
    without a warning). Raises ``ValueError`` for no crops, more than 4,
    or a crop that is not ``(H, W, 3)`` uint8.
    """
    if len(crops) == 0:
        raise ValueError("the face canvas needs at least one face crop")
    if len(crops) > MAX_IDS:
        raise ValueError(f"the face canvas holds at most {MAX_IDS} faces, got {len(crops)}")
    canvas = Image.new("RGB", (CANVAS_WIDTH, CANVAS_HEIGHT), color=(255, 255, 255))
    for number, (crop, (x, y, size)) in enumerate(zip(crops, canvas_slots(len(crops))), start=1):
        crop = np.asarray(crop)
        if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
            raise ValueError(f"face crop {number} must be (H, W, 3) uint8 RGB, got {crop.shape} {crop.dtype}")
        tile = Image.fromarray(np.ascontiguousarray(crop), "RGB").resize((size, size), Image.Resampling.BICUBIC)
        canvas.paste(tile, (x, y))
    return np.array(canvas)
