"""The CogVideoX VAE: face-canvas encoding and latent decoding as the official pipeline does them.

``encode_canvas`` reproduces the official image-latent arithmetic (diffusers ``VideoProcessor``
preprocessing into [-1, 1], one-frame encode, a latent *sample* drawn with the run's generator,
``scaling_factor``, zero latent frames up to the video length). ``encode_first_frame`` gives the
canvas latent in raw VAE units (sampled or the mean), as ComfyUI's LATENT and conditioning carry
it. ``decode`` undoes the scaling (``decode_raw`` takes raw latents in ComfyUI's (B, C, F, h, w)
layout) and maps the VAE output from [-1, 1] to [0, 1] frames.

Tiling and slicing are per-call arguments: the VAE may be shared (ComfyUI caches models), so each
call sets both modes explicitly and restores the VAE's previous modes afterwards.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

logger = logging.getLogger(__name__)

VAE_SUBFOLDER = "vae"
LATENT_CHANNELS = 16


def load_vae(model_dir: str | Path, dtype: torch.dtype, device: torch.device | str):
    """Load ``AutoencoderKLCogVideoX`` from ``model_dir/vae`` (local files only), in eval mode."""
    from diffusers import AutoencoderKLCogVideoX

    from ..weights.checkpoint_files import checked_weight_files, loading_error

    path = Path(model_dir) / VAE_SUBFOLDER
    if not path.is_dir():
        raise FileNotFoundError(
            f"Missing folder {path}: expected the CogVideoX VAE (config.json and *.safetensors)."
        )
    checked_weight_files(path)  # a cut file: the pack's message, not diffusers' "Unable to load weights"
    try:
        vae = AutoencoderKLCogVideoX.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as err:  # diffusers' load errors (EnvironmentError is OSError)
        raise loading_error(path, "the CogVideoX VAE", err) from err
    vae.requires_grad_(False)
    return vae.to(device).eval()


def spatial_factor(vae) -> int:
    """Pixels per latent cell along height and width (8 for CogVideoX)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def temporal_factor(vae) -> int:
    """Video frames per latent frame (4 for CogVideoX)."""
    return int(vae.config.temporal_compression_ratio)


def latent_frame_count(num_frames: int, temporal: int = 4) -> int:
    """Latent frames for a video of ``num_frames`` frames: (num_frames - 1) // temporal + 1."""
    return (num_frames - 1) // temporal + 1


@contextlib.contextmanager
def vae_modes(vae, tiling: bool, slicing: bool) -> Iterator[None]:
    """Set the VAE's tiling and slicing for the duration of the block, then restore them."""
    previous = (bool(vae.use_tiling), bool(vae.use_slicing))

    def apply(tile: bool, slice_: bool) -> None:
        vae.enable_tiling() if tile else vae.disable_tiling()
        vae.enable_slicing() if slice_ else vae.disable_slicing()

    apply(tiling, slicing)
    try:
        yield
    finally:
        apply(*previous)


def canvas_pixels(canvas: np.ndarray, height: int, width: int, spatial: int = 8) -> torch.Tensor:
    """(1, 3, H, W) float in [-1, 1]: the official ``VideoProcessor.preprocess`` of the canvas
    (``spatial``: the VAE's pixels per latent cell, :func:`spatial_factor`)."""
    import numpy as np
    from diffusers.video_processor import VideoProcessor
    from PIL import Image

    array = np.asarray(canvas)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(
            f"canvas: expected an (H, W, 3) uint8 RGB array, found shape {array.shape} "
            f"dtype {array.dtype}."
        )
    processor = VideoProcessor(vae_scale_factor=spatial)
    return processor.preprocess(Image.fromarray(array), height=height, width=width)


def encode_first_frame(vae, canvas: np.ndarray, height: int, width: int, dtype: torch.dtype,
                       generator: torch.Generator | None = None, sample: bool = True,
                       count: int = 1) -> torch.Tensor:
    """The canvas latent in raw VAE units (unscaled), (count, C, 1, h, w) in ``dtype``.

    ``sample``: ``count`` latent samples drawn in turn from ``generator`` (the first is the official
    pipeline's first draw); otherwise the latent mean (what ComfyUI's VAE encode gives), repeated.
    Encoding never tiles, as in the official pipeline.
    """
    import torch

    pixels = canvas_pixels(canvas, height, width, spatial_factor(vae)).to(device=vae.device, dtype=dtype)
    with torch.no_grad(), vae_modes(vae, tiling=False, slicing=False):
        posterior = vae.encode(pixels.unsqueeze(2).to(vae.dtype)).latent_dist
    if not sample:
        return posterior.mode().to(dtype).expand(count, -1, -1, -1, -1).contiguous()
    return torch.cat([posterior.sample(generator) for _ in range(count)]).to(dtype)  # (count, C, 1, h, w)


def encode_canvas(
    vae,
    canvas: np.ndarray,
    height: int,
    width: int,
    num_frames: int,
    generator: torch.Generator | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Image latents (1, F_lat, 16, h, w), scaled: the encoded canvas as frame 0, zeros after it.

    Draws one latent sample from ``generator`` (the first use of the run's generator in the
    official pipeline).
    """
    import torch

    first = encode_first_frame(vae, canvas, height, width, dtype, generator, sample=True)
    first = first.permute(0, 2, 1, 3, 4) * vae.config.scaling_factor
    frames = latent_frame_count(num_frames, temporal_factor(vae))
    padding = torch.zeros(
        (first.shape[0], frames - 1, *first.shape[2:]), device=first.device, dtype=dtype
    )
    return torch.cat([first, padding], dim=1)


def start_latents(vae, canvas: np.ndarray, height: int, width: int, num_frames: int,
                  generator: torch.Generator, dtype: torch.dtype,
                  init_noise_sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(image_latents, initial noisy latents), each (1, F_lat, 16, h, w), in the official draw order.

    One generator serves the whole run: first the canvas latent sample (:func:`encode_canvas`), then
    the initial noise (diffusers ``randn_tensor`` on the generator's device), which is scaled by the
    scheduler's ``init_noise_sigma``; the scheduler's own draws follow during sampling.
    """
    from diffusers.utils.torch_utils import randn_tensor

    image_latents = encode_canvas(vae, canvas, height, width, num_frames, generator, dtype)
    noise = randn_tensor(tuple(image_latents.shape), generator=generator, device=generator.device, dtype=dtype)
    return image_latents, noise * init_noise_sigma


def decode(vae, latents: torch.Tensor, tiling: bool, slicing: bool) -> torch.Tensor:
    """Decode scaled latents (B, F, C, h, w) (the pack's sampler's) to frames (B*T, H, W, 3),
    float32 in [0, 1] on the CPU."""
    if latents.ndim != 5 or latents.shape[2] != vae.config.latent_channels:
        raise ValueError(
            f"latents: expected shape (B, F, {vae.config.latent_channels}, h, w), "
            f"found {tuple(latents.shape)}."
        )
    raw = (1 / vae.config.scaling_factor) * latents.permute(0, 2, 1, 3, 4)  # (B, C, F, h, w)
    return decode_raw(vae, raw, tiling, slicing)


def decode_raw(vae, latents: torch.Tensor, tiling: bool, slicing: bool) -> torch.Tensor:
    """Decode raw (unscaled) latents (B, C, F, h, w), ComfyUI's LATENT layout, to frames
    (B*T, H, W, 3), float32 in [0, 1] on the CPU."""
    import torch

    if latents.ndim != 5 or latents.shape[1] != vae.config.latent_channels:
        raise ValueError(
            f"latents: expected shape (B, {vae.config.latent_channels}, F, h, w), "
            f"found {tuple(latents.shape)}."
        )
    with torch.no_grad(), vae_modes(vae, tiling=tiling, slicing=slicing):
        video = vae.decode(latents.to(device=vae.device, dtype=vae.dtype)).sample.cpu()
    # float32 on the CPU, never on the GPU: at 1025 frames of 480 x 720 that copy alone is 4 GB
    video = (video.float() / 2 + 0.5).clamp(0, 1)  # (B, 3, T, H, W)
    return video.permute(0, 2, 3, 4, 1).flatten(0, 1)
