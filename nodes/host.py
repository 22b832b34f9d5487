"""Every contact with ComfyUI itself, in one place.

The node files import ``comfy_api`` schema classes and this module; nothing else in the pack
touches ComfyUI. What lives here:

- model folders: ``models/ingredients`` (registered here), ``models/insightface`` and
  ``models/text_encoders``, with every path ``extra_model_paths.yaml`` adds;
- memory: each ``nn.Module`` is wrapped in a ``ModelPatcher`` and loaded with
  ``load_models_gpu(..., force_full_load=True)`` before use; nothing is moved by hand;
- devices and dtypes as ComfyUI chooses them (``--cpu`` gives the CPU and float32);
- the progress bar, latent previews (a CogVideoX latent format) and interrupts.

Heavy work never happens at import: ComfyUI has already imported these modules when the pack loads.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import comfy.latent_formats
import comfy.model_management
import comfy.model_patcher
import comfy.utils
import folder_paths
import latent_preview
import torch

logger = logging.getLogger(__name__)

INGREDIENTS_FOLDER = "ingredients"
INSIGHTFACE_FOLDER = "insightface"
TEXT_ENCODERS_FOLDER = "text_encoders"
ROLES = ("diffusion", "text", "vae", "face")


# -- model folders -------------------------------------------------------------------------------
def register_model_folders() -> None:
    """Add ``models/ingredients`` and ``models/insightface`` to ComfyUI's model folders.

    Paths from ``extra_model_paths.yaml`` (loaded by ComfyUI before custom nodes) are kept; the
    default folder is appended after them.
    """
    for name in (INGREDIENTS_FOLDER, INSIGHTFACE_FOLDER):
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))


def model_roots(kind: str) -> list[Path]:
    """The search folders ComfyUI knows for ``kind`` (``ingredients``, ``insightface``, ...)."""
    try:
        return [Path(p) for p in folder_paths.get_folder_paths(kind)]
    except KeyError:
        return []


# -- memory management ---------------------------------------------------------------------------
class HostedModule(torch.nn.Module):
    """Holds one or more modules for a ``ModelPatcher``.

    ComfyUI writes ``model.device`` on the modules it manages; diffusers, transformers and the
    Ingredients transformer expose ``device`` as a read-only property, so they are held as
    children of this plain module instead of being handed over directly.
    """

    def __init__(self, **modules: torch.nn.Module):
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)
        self.device = None


def devices(role: str) -> tuple[torch.device, torch.device]:
    """(load device, offload device) ComfyUI picks for a model of ``role``."""
    mm = comfy.model_management
    if role == "text":
        return mm.text_encoder_device(), mm.text_encoder_offload_device()
    if role == "vae":
        return mm.vae_device(), mm.vae_offload_device()
    if role in ("diffusion", "face"):
        return mm.get_torch_device(), mm.unet_offload_device()
    raise ValueError(f"unknown model role {role!r}; expected one of {ROLES}")


def pick_dtype(role: str, name: str) -> torch.dtype:
    """``auto`` -> what ComfyUI would use on the load device (bfloat16 on capable GPUs, float32
    under ``--cpu``); otherwise the named dtype."""
    if name != "auto":
        return getattr(torch, name)
    load_device, _ = devices(role)
    return comfy.model_management.unet_dtype(load_device, supported_dtypes=[torch.bfloat16, torch.float32])


# One holder class per role, named so that ComfyUI's log ("Requested to load ...") says what loads.
_HOLDERS = {role: type(name, (HostedModule,), {"__module__": __name__}) for role, name in (
    ("diffusion", "IngredientsTransformer"), ("text", "IngredientsT5"), ("vae", "IngredientsVAE"),
    ("face", "IngredientsFaceModels"))}


def manage(role: str, **modules: torch.nn.Module):
    """A ``ModelPatcher`` for the modules (kept on the offload device until :func:`load`)."""
    load_device, offload_device = devices(role)
    holder = _HOLDERS[role](**modules)
    return comfy.model_patcher.ModelPatcher(holder, load_device=load_device, offload_device=offload_device)


def load(*patchers) -> None:
    """Let ComfyUI put the models on their load device (freeing others as it sees fit)."""
    comfy.model_management.load_models_gpu(list(patchers), force_full_load=True)


def load_device(patcher) -> torch.device:
    return patcher.load_device


def output_device() -> torch.device:
    """Where node outputs (IMAGE, cached tensors) live: ComfyUI's intermediate device."""
    return comfy.model_management.intermediate_device()


# -- interrupts, progress, previews --------------------------------------------------------------
def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception when the user pressed Cancel."""
    comfy.model_management.throw_exception_if_processing_interrupted()


class IngredientsLatentFormat(comfy.latent_formats.LatentFormat):
    """CogVideoX latents as the sampler sees them: 16 channels, 3-D, 8x spatial and 4x temporal
    compression, scaled by the VAE's ``scaling_factor`` (0.7 for the 5B VAE)."""

    latent_channels = 16
    latent_dimensions = 3
    spacial_downscale_ratio = 8
    temporal_downscale_ratio = 4

    def __init__(self, rgb_factors: Sequence[Sequence[float]] | None, rgb_bias: Sequence[float] | None,
                 scale_factor: float = 0.7):
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
