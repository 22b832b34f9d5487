"""The denoising loop of Ingredients (the official pipeline's loop, with callbacks and routing).

Per step: latents doubled for classifier-free guidance in the order [negative, positive],
``scale_model_input``, image latents concatenated on channels, transformer (rotary embeddings,
routed ID features), v-prediction guided as ``uncond + g * (cond - uncond)``, scheduler step.
``CogVideoXDPMScheduler.step`` is stochastic and draws from the generator given here, exactly as the
official pipeline passes its generator.

Progress, previews and interruption go through one callback, called after every step with a
:class:`StepInfo`; raising from it (for example :class:`Interrupted`) stops the loop.
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from .routing import RoutingOptions, RoutingPlan, RoutingRecorder
from .step_cache import TeaCache

logger = logging.getLogger(__name__)

SCHEDULERS = ("dpm", "ddim")
BASE_HEIGHT, BASE_WIDTH = 480, 720   # the rotary grid is cropped against this size, as upstream


class Interrupted(RuntimeError):
    """Sampling was stopped by the caller."""


@dataclass(frozen=True)
class StepInfo:
    """What the callback sees after each step."""

    step: int            # 0-based index of the finished step
    total: int
    timestep: int
    latents: torch.Tensor  # (B, F, C, H, W), after the step
    denoised: torch.Tensor  # (B, F, C, H, W), the scheduler's estimate of the clean latents (x0): for previews


StepCallback = Callable[[StepInfo], None]


def make_scheduler(name: str, config: dict[str, Any]):
    """``dpm`` -> CogVideoXDPMScheduler, ``ddim`` -> CogVideoXDDIMScheduler, from a scheduler config dict."""
    from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

    classes = {"dpm": CogVideoXDPMScheduler, "ddim": CogVideoXDDIMScheduler}
    if name not in classes:
        raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}; got {name!r}")
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    return classes[name].from_config(config)


def _crop_region(grid_h: int, grid_w: int, base_h: int, base_w: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Where a grid_h x grid_w grid sits when fitted (aspect kept) and centred in base_h x base_w."""
    if grid_h / grid_w > base_h / base_w:
        height, width = base_h, int(round(base_h / grid_h * grid_w))
    else:
        height, width = int(round(base_w / grid_w * grid_h)), base_w
    top, left = int(round((base_h - height) / 2.0)), int(round((base_w - width) / 2.0))
    return (top, left), (top + height, left + width)


def rotary_embeddings(config, height: int, width: int, latent_frames: int,
                      device: torch.device, vae_scale: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """3-D rotary embeddings (cos, sin), each (F * h * w, head_dim), for a pixel size of ``height x width``."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    unit = vae_scale * config.patch_size
    grid_h, grid_w = height // unit, width // unit
    crops = _crop_region(grid_h, grid_w, BASE_HEIGHT // unit, BASE_WIDTH // unit)
    cos, sin = get_3d_rotary_pos_embed(embed_dim=config.attention_head_dim, crops_coords=crops,
                                       grid_size=(grid_h, grid_w), temporal_size=latent_frames)
    return cos.to(device), sin.to(device)


def dynamic_guidance(cfg: float, steps: int, timestep: int) -> float:
    """The official dynamic CFG (note: it uses the timestep value, not the step index)."""
    return 1 + cfg * (1 - math.cos(math.pi * ((steps - timestep) / steps) ** 5.0)) / 2


def _step_kwargs(scheduler, generator: Optional[torch.Generator], eta: float) -> dict[str, Any]:
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs


@torch.no_grad()
def denoise(transformer, scheduler, latents: torch.Tensor, image_latents: torch.Tensor,
            prompt_embeds: torch.Tensor, negative_embeds: Optional[torch.Tensor],
            id_tokens: Optional[torch.Tensor], *, steps: int, cfg: float, dynamic_cfg: bool = False,
            generator: Optional[torch.Generator] = None, callback: Optional[StepCallback] = None,
            routing: Optional[RoutingOptions] = None, recorder: Optional[RoutingRecorder] = None,
            height: Optional[int] = None, width: Optional[int] = None, eta: float = 0.0,
            device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None,
            cache: Optional[TeaCache] = None, ff_chunk: Optional[int] = None) -> torch.Tensor:
    """Run the sampling loop; returns the denoised latents (B, F, C, H, W) in ``dtype``.

    latents: initial noise, already scaled by ``scheduler.init_noise_sigma``; image_latents: the scaled
    face-canvas latent followed by zero frames, same shape; prompt/negative embeds (B, S, D);
    id_tokens (P, T, token_dim) from ``transformer.project_ids`` or None for no identities;
    recorder: receives the router's assignment at every routed layer and step (routing maps);
    height/width: pixel size for the rotary grid (latent size x 8 when None);
    device/dtype: where and in what the transformer computes (default: where its weights are);
    cache: a :class:`~ingredients_core.step_cache.TeaCache` for this run (None: every step computed);
    ff_chunk: feed-forward token chunk (less activation memory, same result).
    """
    default_device, default_dtype = _placement(transformer)
    device, dtype = device or default_device, dtype or default_dtype
    config = transformer.config
    guided = cfg > 1.0
    if guided and negative_embeds is None:
        raise ValueError("classifier-free guidance (cfg > 1) needs negative prompt embeddings")
    text = torch.cat([negative_embeds, prompt_embeds]) if guided else prompt_embeds
    text = text.to(device, dtype)
    latents, image_latents = latents.to(device, dtype), image_latents.to(device, dtype)
    frames, h, w = latents.shape[1], latents.shape[3], latents.shape[4]
    rotary = (rotary_embeddings(config, height or h * 8, width or w * 8, frames, device)
              if config.use_rotary_positional_embeddings else None)
    scheduler.set_timesteps(steps, device=device)
    timesteps = scheduler.timesteps
    ids = plan = None
    if id_tokens is not None:
        ids = transformer.prepare_ids(id_tokens, device, dtype)
        grid = (frames, h // config.patch_size, w // config.patch_size)
        plan = RoutingPlan(routing or RoutingOptions(), ids.num_ids, grid, config.local_face_scale, device,
                           recorder)
    step_kwargs = _step_kwargs(scheduler, generator, eta)
    dpm = _is_dpm(scheduler)
    image_input = torch.cat([image_latents] * 2) if guided else image_latents
    old_x0 = None
    for i, t in enumerate(timesteps):
        model_input = torch.cat([latents] * 2) if guided else latents
        model_input = torch.cat([scheduler.scale_model_input(model_input, t), image_input], dim=2)
        pred = transformer(model_input, text, t.expand(model_input.shape[0]), rotary, ids=ids,
                           routing=plan.step(i, len(timesteps)) if plan is not None else None,
                           cache=cache, ff_chunk=ff_chunk).float()
        if guided:
            scale = dynamic_guidance(cfg, steps, t.item()) if dynamic_cfg else cfg
            uncond, cond = pred.chunk(2)
            pred = uncond + scale * (cond - uncond)
        latents, x0 = _scheduler_step(scheduler, dpm, pred, old_x0, timesteps, i, latents, step_kwargs)
        old_x0 = x0 if dpm else None
        latents = latents.to(dtype)
        if callback is not None:
            callback(StepInfo(step=i, total=len(timesteps), timestep=int(t), latents=latents, denoised=x0))
    return latents


def _placement(transformer) -> tuple[torch.device, torch.dtype]:
    placement = getattr(transformer, "placement", None)
    if placement is not None:
        return placement()
    return transformer.device, transformer.dtype


def _is_dpm(scheduler) -> bool:
    from diffusers import CogVideoXDPMScheduler

    return isinstance(scheduler, CogVideoXDPMScheduler)


def _scheduler_step(scheduler, dpm: bool, pred, old_x0, timesteps, i, latents, kwargs):
    """One scheduler step -> (next latents, predicted clean latents x0)."""
    if dpm:
        back = timesteps[i - 1] if i > 0 else None
        return scheduler.step(pred, old_x0, timesteps[i], back, latents, **kwargs, return_dict=False)
    return scheduler.step(pred, timesteps[i], latents, **kwargs, return_dict=False)
