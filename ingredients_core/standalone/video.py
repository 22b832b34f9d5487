"""Writing generated frames to an MP4 file (PyAV, H.264 yuv420p), for the command line.

The file is written under a temporary name in the target folder and moved onto the target only
when complete, so a failed or interrupted write never leaves a truncated video behind and never
destroys an existing file of the same name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

logger = logging.getLogger(__name__)


def frames_to_uint8(frames: torch.Tensor):
    """(T, H, W, 3) float in [0, 1] -> numpy uint8 (rounded)."""
    return (frames.detach().float().clamp(0, 1) * 255).round().to("cpu").byte().numpy()


def write_mp4(frames: torch.Tensor, path: str | Path, fps: int, crf: int = 17) -> Path:
    """Write frames (T, H, W, 3) float in [0, 1] as an MP4 (libx264 when available, else MPEG-4).

    Height and width must be even (yuv420p); Ingredients sizes are multiples of 16. The video is
    encoded to a temporary file next to ``path`` and renamed onto it when complete; on any failure
    (codec error, full disk, Ctrl-C) the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    pixels = frames_to_uint8(frames)
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"frames: expected (T, H, W, 3), found {tuple(pixels.shape)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh unique name (not mkstemp: its 0600 mode would become the video's mode).
    temp_name = str(path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.partial.mp4"))
    try:
        _encode(pixels, temp_name, fps, crf)
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    logger.debug("wrote %s (%d frames)", path, len(pixels))
    return path


def _encode(pixels: np.ndarray, filename: str, fps: int, crf: int) -> None:
    import av

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(filename, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = pixels.shape[1], pixels.shape[2]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(crf)}
        for image in pixels:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
