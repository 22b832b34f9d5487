"""CONDITIONING and ComfyUI's own VAE, for Ingredients Image to Video and the Sampler: the canvas
latent put on a conditioning as ComfyUI's nodes put values there (``node_helpers``), and the face
canvas encoded with a CogVideoX VAE from ComfyUI's VAELoader.
"""

from __future__ import annotations

import torch

from .memory import output_device


def conditioning_with(conditioning: list, values: dict) -> list:
    """A copy of a CONDITIONING with ``values`` set in every entry's dict (ComfyUI's own
    ``node_helpers.conditioning_set_values``: the input, cached by ComfyUI, stays unchanged)."""
    import node_helpers

    return node_helpers.conditioning_set_values(conditioning, values)


def is_cogvideox_vae(vae) -> bool:
    """Whether a ComfyUI ``VAE`` (VAELoader) holds ComfyUI's CogVideoX VAE (0.21 and later)."""
    model = getattr(vae, "first_stage_model", None)
    return type(model).__name__ == "AutoencoderKLCogVideoX" and getattr(vae, "latent_channels", None) == 16


def comfy_vae_encode(vae, image: torch.Tensor) -> torch.Tensor:
    """ComfyUI's VAE encode of an IMAGE (frames, H, W, 3) in [0, 1]: the raw latent mean
    (1, 16, latent frames, h, w) on the output device; ComfyUI loads the VAE and tiles on OOM."""
    return vae.encode(image).float().to(output_device())
