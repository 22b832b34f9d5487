"""The generation path of :func:`ingredients_core.sampling.pipeline.generate` (CLI, scripts): face canvas latent,
initial noise, the one official sampling loop and the step cache. (The ComfyUI Sampler node draws
its start the same way and samples through ComfyUI with the same loop: ``nodes/sampling.py``.)

Order of work and of random draws (the official ``IngredientsPipeline``): one generator seeded
with the run's seed on the device where the noise is made; the face canvas is VAE-encoded and its
latent *sampled* with that generator; the initial noise is drawn next from it and scaled by the
scheduler's ``init_noise_sigma``; the scheduler's own draws follow during sampling. The caller says
where each model computes (:class:`RunPlacement`) and is told, through :class:`RunHooks`, before
each model is used, so a caller can move it there first (CLI offloading).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch

if TYPE_CHECKING:
    import numpy as np

    from ..routing.plan import RoutingOptions, RoutingRecorder
    from .official import StepInfo
    from .step_cache import TeaCache

logger = logging.getLogger(__name__)

VAE_STAGE, TRANSFORMER_STAGE = "vae", "transformer"


@dataclass(frozen=True)
class RunPlacement:
    """Where a run computes: the transformer's compute device and dtype, and the device of the
    run's random generator (the official pipeline draws on its own device)."""

    device: torch.device
    dtype: torch.dtype
    noise_device: torch.device


def _no_load(stage: str) -> None:
    return None


@dataclass
class RunHooks:
    """Calls out of a run: ``load(stage)`` before the VAE (``"vae"``) and the transformer
    (``"transformer"``) are used; ``step(info)`` after every sampling step (raise from it to stop)."""

    load: Callable[[str], None] = _no_load
    step: Optional[Callable[[StepInfo], None]] = None


@dataclass
class SampleResult:
    """latents (1, F, 16, h, w) in the compute dtype; canvas (480, 720, 3) uint8 RGB; cache: the
    run's TeaCache (None when off), with its counts of computed and skipped evaluations."""

    latents: torch.Tensor
    canvas: np.ndarray
    cache: Optional[TeaCache] = None


def sample_video(transformer, vae, scheduler_config: dict, crops: Sequence, prompt_embeds: torch.Tensor,
                 negative_embeds: Optional[torch.Tensor], id_tokens: Optional[torch.Tensor], settings,
                 placement: RunPlacement, hooks: Optional[RunHooks] = None,
                 routing: Optional[RoutingOptions] = None, recorder: Optional[RoutingRecorder] = None,
                 ) -> SampleResult:
    """Denoised latents for one video of the people whose aligned ``crops`` (RGB uint8, canvas
    order) and ``id_tokens`` (P, T, token_dim) are given, with ``settings``
    (:class:`~ingredients_core.sampling.pipeline.GenerationSettings`: size, steps, cfg, seed, scheduler,
    dynamic CFG, TeaCache threshold, feed-forward chunk)."""
    from ..faces.canvas import make_canvas
    from .official import denoise, make_scheduler
    from .step_cache import TeaCache
    from ..encoders.vae import start_latents

    hooks = hooks or RunHooks()
    scheduler = make_scheduler(settings.scheduler, scheduler_config)
    canvas = make_canvas(list(crops))
    hooks.load(VAE_STAGE)
    generator = torch.Generator(placement.noise_device).manual_seed(settings.seed)
    image_latents, latents = start_latents(vae, canvas, settings.height, settings.width, settings.frames,
                                           generator, placement.dtype, scheduler.init_noise_sigma)
    cache = TeaCache(settings.teacache, settings.steps) if settings.teacache > 0 else None
    hooks.load(TRANSFORMER_STAGE)
    guided = settings.cfg > 1.0
    latents = denoise(
        transformer, scheduler, latents, image_latents, prompt_embeds, negative_embeds if guided else None,
        id_tokens, steps=settings.steps, cfg=settings.cfg, dynamic_cfg=settings.dynamic_cfg, generator=generator,
        callback=hooks.step, routing=routing, recorder=recorder, height=settings.height, width=settings.width,
        device=placement.device, dtype=placement.dtype, cache=cache, ff_chunk=settings.ff_chunk)
    if cache is not None:
        logger.info("%s", cache.summary())
    return SampleResult(latents=latents, canvas=canvas, cache=cache)
