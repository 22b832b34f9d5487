"""ComfyUI's progress bar, latent previews and Cancel, and the CogVideoX latent format that the
MODEL and the Sampler's previews share (:class:`IngredientsLatentFormat`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import comfy.latent_formats
import comfy.model_management
import comfy.utils
import latent_preview
import torch


def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception when the user pressed Cancel."""
    comfy.model_management.throw_exception_if_processing_interrupted()


#: Linear CogVideoX latent-to-RGB coefficients (16 x 3) that kijai's CogVideoXWrapper publishes for its
#: sampler previews, for model-space latents (as ComfyUI's previewer receives them).
COGVIDEOX_RGB_FACTORS = (
    (0.11946, 0.09919, -0.00483), (-0.00120, 0.05497, 0.02132), (-0.01409, -0.00870, -0.02099),
    (0.03064, 0.12186, 0.01396), (0.09274, 0.03029, 0.05083), (0.03791, 0.04935, 0.05856),
    (0.01775, 0.00884, 0.03601), (0.10610, 0.02340, 0.05715), (0.12736, -0.01096, 0.04327),
    (-0.01874, 0.08221, 0.10613), (0.00843, 0.07624, 0.09296), (0.12938, 0.12360, 0.04479),
    (0.04566, 0.04106, -0.01770), (0.00019, -0.01397, 0.05330), (0.08082, 0.11548, -0.02146),
    (-0.01518, -0.00580, 0.07217),
)


class IngredientsLatentFormat(comfy.latent_formats.LatentFormat):
    """CogVideoX latents as ComfyUI's samplers see them (the MODEL's latent format, and the Sampler's
    previews): 16 channels, 3-D, 8x spatial and 4x temporal compression, scaled by the VAE's
    ``scaling_factor`` (0.7 for the 5B VAE). Preview colours: :data:`COGVIDEOX_RGB_FACTORS` by default
    (ComfyUI 0.33 ships none for CogVideoX; a rough sketch of the denoised frame, as every Latent2RGB
    preview); the Sampler passes factors fitted to its run's face canvas instead."""

    latent_channels = 16
    latent_dimensions = 3
    spacial_downscale_ratio = 8
    temporal_downscale_ratio = 4

    def __init__(self, rgb_factors: Sequence[Sequence[float]] | None = COGVIDEOX_RGB_FACTORS,
                 rgb_bias: Sequence[float] | None = None, scale_factor: float = 0.7):
        self.scale_factor = scale_factor
        self.latent_rgb_factors = [list(row) for row in rgb_factors] if rgb_factors is not None else None
        self.latent_rgb_factors_bias = list(rgb_bias) if rgb_bias is not None else None


def step_reporter(total: int, device: torch.device, rgb_factors=None, rgb_bias=None,
                  scale_factor: float = 0.7) -> Callable[[int, torch.Tensor], None]:
    """A per-step callback: checks for interrupts, moves the progress bar, sends a preview.

    The returned function takes (finished step count, latents (B, F, C, h, w)).
    """
    bar = comfy.utils.ProgressBar(total)
    latent_format = IngredientsLatentFormat(rgb_factors, rgb_bias, scale_factor)
    previewer = latent_preview.get_previewer(device, latent_format) if rgb_factors is not None else None

    def report(done: int, latents: torch.Tensor) -> None:
        check_interrupt()
        preview = None
        if previewer is not None:
            preview = previewer.decode_latent_to_preview_image("JPEG", latents.permute(0, 2, 1, 3, 4))
        bar.update_absolute(done, total, preview)

    return report
