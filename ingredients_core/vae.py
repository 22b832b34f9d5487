"""The CogVideoX VAE: face-canvas encoding and latent decoding as the official pipeline does them.

``encode_canvas`` reproduces the official image-latent arithmetic (diffusers ``VideoProcessor``
preprocessing into [-1, 1], one-frame encode, a latent *sample* drawn with the run's generator,
``scaling_factor``, zero latent frames up to the video length). ``decode`` undoes the scaling and
maps the VAE output from [-1, 1] to [0, 1] frames.

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

    from .checkpoint import checked_weight_files, loading_error

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


def _canvas_pixels(vae, canvas: np.ndarray, height: int, width: int) -> torch.Tensor:
    """(1, 3, H, W) float in [-1, 1]: the official ``VideoProcessor.preprocess`` of the canvas."""
    import numpy as np
    from diffusers.video_processor import VideoProcessor
    from PIL import Image

    array = np.asarray(canvas)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(
            f"canvas: expected an (H, W, 3) uint8 RGB array, found shape {array.shape} "
            f"dtype {array.dtype}."
        )
    processor = VideoProcessor(vae_scale_factor=spatial_factor(vae))
    return processor.preprocess(Image.fromarray(array), height=height, width=width)


def encode_canvas(
    vae,
    canvas: np.ndarray,
    height: int,
    width: int,
    num_frames: int,
    generator: torch.Generator | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Image latents (1, F_lat, 16, h, w): the encoded canvas as frame 0, zeros after it.

    Draws one latent sample from ``generator`` (the first use of the run's generator in the
    official pipeline). Encoding never tiles, as in the official pipeline.
    """
    import torch

    device = vae.device
    pixels = _canvas_pixels(vae, canvas, height, width).to(device=device, dtype=dtype)
    with torch.no_grad(), vae_modes(vae, tiling=False, slicing=False):
        posterior = vae.encode(pixels.unsqueeze(2).to(vae.dtype)).latent_dist
    first = posterior.sample(generator)  # (1, C, 1, h, w)
    first = first.to(dtype).permute(0, 2, 1, 3, 4) * vae.config.scaling_factor
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
    """Decode latents (B, F, C, h, w) to frames (B*T, H, W, 3), float32 in [0, 1] on the CPU."""
    import torch

    if latents.ndim != 5 or latents.shape[2] != vae.config.latent_channels:
        raise ValueError(
            f"latents: expected shape (B, F, {vae.config.latent_channels}, h, w), "
            f"found {tuple(latents.shape)}."
        )
    scaled = (1 / vae.config.scaling_factor) * latents.permute(0, 2, 1, 3, 4)  # (B, C, F, h, w)
    with torch.no_grad(), vae_modes(vae, tiling=tiling, slicing=slicing):
        video = vae.decode(scaled.to(device=vae.device, dtype=vae.dtype)).sample
    video = (video.float() / 2 + 0.5).clamp(0, 1)  # (B, 3, T, H, W)
    return video.permute(0, 2, 3, 4, 1).flatten(0, 1).cpu()
