"""Writing generated frames to an MP4 file (PyAV, H.264 yuv420p), for the command line."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def frames_to_uint8(frames: torch.Tensor):
    """(T, H, W, 3) float in [0, 1] -> numpy uint8 (rounded)."""
    return (frames.detach().float().clamp(0, 1) * 255).round().to("cpu").byte().numpy()


def write_mp4(frames: torch.Tensor, path: str | Path, fps: int, crf: int = 17) -> Path:
    """Write frames (T, H, W, 3) float in [0, 1] as an MP4 (libx264 when available, else MPEG-4).

    Height and width must be even (yuv420p); Ingredients sizes are multiples of 16.
    """
    import av

    path = Path(path)
    pixels = frames_to_uint8(frames)
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"frames: expected (T, H, W, 3), found {tuple(pixels.shape)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = pixels.shape[1], pixels.shape[2]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(crf)}
        for image in pixels:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return path
