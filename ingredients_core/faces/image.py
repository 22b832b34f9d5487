"""Photo input checks and conversion to the official working image.

Accepted photos: numpy ``(H, W, 3)`` uint8 RGB; numpy float ``(H, W, 3)`` in ``[0, 1]`` (ComfyUI
``IMAGE`` frames); a torch tensor of either kind, optionally with a leading batch of 1; a PIL
image (EXIF orientation applied, as the official ``load_image`` does). Grayscale (``(H, W)`` or
``(H, W, 1)``) is repeated to RGB, RGBA loses its alpha channel (as PIL's ``convert("RGB")`` and
facexlib do). Anything else raises :class:`FaceError` naming the photo.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .errors import FaceError

#: The official code limits the long edge of each photo to this many pixels before detection.
WORKING_LONG_EDGE = 1024


def _from_pil(image: Image.Image) -> np.ndarray:
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image)
    return np.asarray(image.convert("RGB"))


def _float_to_uint8(array: np.ndarray, source: str) -> np.ndarray:
    if not np.isfinite(array).all():
        raise FaceError(source, "the image contains NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if low < -0.01 or high > 1.01:
        raise FaceError(
            source,
            f"a float image must hold values in [0, 1] (ComfyUI IMAGE); got [{low:.3g}, {high:.3g}]",
        )
    # Rounding inverts ComfyUI's LoadImage (uint8 / 255) exactly.
    return np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_rgb_uint8(image: Any, source: str = "photo") -> np.ndarray:
    """Validate a photo and return it as a contiguous ``(H, W, 3)`` uint8 RGB array."""
    if isinstance(image, Image.Image):
        array = _from_pil(image)
    elif hasattr(image, "detach") and hasattr(image, "is_floating_point"):  # torch.Tensor
        tensor = image.detach().cpu()
        array = (tensor.float() if tensor.is_floating_point() else tensor).numpy()
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise FaceError(source, f"expected an image (numpy array, tensor or PIL image), got {type(image).__name__}")

    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    elif array.ndim == 4:
        raise FaceError(
            source,
            f"got a batch of {array.shape[0]} images; pass one image here "
            "(several photos of one person go to encode_person)",
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise FaceError(
            source,
            f"expected an (H, W, 3) RGB image (or grayscale/RGBA), got shape {tuple(array.shape)}",
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise FaceError(source, f"the image is empty (shape {tuple(array.shape)})")
    array = array[:, :, :3]

    if array.dtype == np.uint8:
        pass
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        array = _float_to_uint8(array.astype(np.float32), source)
    else:
        raise FaceError(source, f"unsupported pixel type {array.dtype}; use uint8 (0..255) or float (0..1)")
    return np.ascontiguousarray(array)


@dataclass(frozen=True)
class WorkingImage:
    """The photo as the official code sees it: long edge at most 1024, BGR.

    Attributes:
        rgb: the resized RGB image (``(h, w, 3)`` uint8).
        bgr: the same in BGR order (what facexlib works on).
        scale_x, scale_y: working pixels per source pixel along x and y (1.0 when not resized).
    """

    rgb: np.ndarray
    bgr: np.ndarray
    scale_x: float
    scale_y: float

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the working image."""
        return self.rgb.shape[1], self.rgb.shape[0]


def resize_long_edge(rgb: np.ndarray, long_edge: int = WORKING_LONG_EDGE) -> np.ndarray:
    """Shrink so the long edge is at most ``long_edge`` (cv2 Lanczos-4, sizes truncated), as the
    official ``resize_numpy_image_long`` does. Smaller images are returned unchanged."""
    import cv2

    height, width = rgb.shape[:2]
    if max(height, width) <= long_edge:
        return rgb
    factor = long_edge / max(height, width)
    new_size = (int(width * factor), int(height * factor))
    return cv2.resize(rgb, new_size, interpolation=cv2.INTER_LANCZOS4)


def working_image(rgb: np.ndarray, long_edge: int = WORKING_LONG_EDGE) -> WorkingImage:
    """Build the :class:`WorkingImage` of a validated RGB photo."""
    import cv2

    resized = resize_long_edge(rgb, long_edge)
    return WorkingImage(
        rgb=resized,
        bgr=cv2.cvtColor(resized, cv2.COLOR_RGB2BGR),
        scale_x=resized.shape[1] / rgb.shape[1],
        scale_y=resized.shape[0] / rgb.shape[0],
    )
