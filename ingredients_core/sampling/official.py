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

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from .. import ERROR_NAMESPACE
from ..routing.plan import RoutingOptions, RoutingPlan, RoutingRecorder
from .step_cache import TeaCache

logger = logging.getLogger(__name__)

SCHEDULERS = ("dpm", "ddim")
BASE_HEIGHT, BASE_WIDTH = 480, 720   # the rotary grid is cropped against this size, as upstream


class Interrupted(RuntimeError):
    """Sampling was stopped by the caller."""

    __module__ = ERROR_NAMESPACE


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


# -- the official steps and loop (the one loop: the CLI, the Ingredients Sampler and the SAMPLER) --
@dataclass(frozen=True)
class StepPlan:
    """Per step: the model timestep and where the step lands (-1: the clean sample)."""

    timesteps: tuple[int, ...]
    targets: tuple[int, ...]


def trailing_plan(scheduler, steps: int) -> StepPlan:
    """The official plan: the scheduler's (trailing) timesteps, each step landing ``1000 // steps``
    lower (diffusers' own rule; below 0 is the clean sample)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1; got {steps}")
    scheduler.set_timesteps(steps)
    timesteps = tuple(int(t) for t in scheduler.timesteps)
    gap = scheduler.config.num_train_timesteps // steps
    return StepPlan(timesteps, tuple(max(t - gap, -1) for t in timesteps))


def _alpha(scheduler, t: Optional[int]):
    if t is None:
        return None
    return scheduler.alphas_cumprod[t] if t >= 0 else scheduler.final_alpha_cumprod


def ddim_step(scheduler, v: torch.Tensor, t: int, target: int, sample: torch.Tensor):
    """CogVideoXDDIMScheduler's step (eta 0) from timestep ``t`` to ``target`` -> (next sample, x0)."""
    a, a_next = _alpha(scheduler, t), _alpha(scheduler, target)
    x0 = a ** 0.5 * sample - (1 - a) ** 0.5 * v
    keep = ((1 - a_next) / (1 - a)) ** 0.5
    return keep * sample + (a_next ** 0.5 - a ** 0.5 * keep) * x0, x0


def dpm_step(scheduler, v: torch.Tensor, old_x0: Optional[torch.Tensor], t: int, target: int,
             back: Optional[int], sample: torch.Tensor, generator: Optional[torch.Generator]):
    """CogVideoXDPMScheduler's step (DPM-Solver++ 2M, stochastic) from ``t`` to ``target``, ``back``
    the previous step's timestep -> (next sample, x0). Draws as diffusers does, in the sample's
    dtype: once, and a second time for the second-order update (not at the first step nor onto the
    clean sample)."""
    from diffusers.utils.torch_utils import randn_tensor

    a, a_next, a_back = _alpha(scheduler, t), _alpha(scheduler, target), _alpha(scheduler, back)
    x0 = a ** 0.5 * sample - (1 - a) ** 0.5 * v
    h, r, _, _ = scheduler.get_variables(a, a_next, a_back)
    mult = scheduler.get_mult(h, r, a, a_next, a_back)
    noise_scale = (1 - a_next) ** 0.5 * (1 - (-2 * h).exp()) ** 0.5

    def draw():
        return randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)

    first = mult[0] * sample - mult[1] * x0 + noise_scale * draw()
    if old_x0 is None or target < 0:
        return first, x0
    second_order = mult[2] * x0 - mult[3] * old_x0
    return mult[0] * sample - mult[1] * second_order + noise_scale * draw(), x0


VPredictor = Callable[[int, torch.Tensor], torch.Tensor]      # (step index, x_t (B, F, C, h, w)) -> guided v
LoopCallback = Callable[[int, torch.Tensor, torch.Tensor], None]  # (step index, next x_t, x0 estimate)


def run_official(predict_v: VPredictor, sample: torch.Tensor, plan: StepPlan, scheduler,
                 generator: Optional[torch.Generator], dtype: torch.dtype,
                 callback: Optional[LoopCallback] = None, progress=range) -> torch.Tensor:
    """The official DDIM/DPM loop in DDPM space: ``sample`` x_t (B, F, C, h, w) at ``plan.timesteps[0]``
    stepped down the plan; the state is kept in ``dtype`` after every step (the official pipeline's
    latents dtype) and the DPM draws from ``generator`` in it. ``progress``: a ``range``-like
    iterator (a console bar). Returns x_t at the plan's end."""
    from diffusers import CogVideoXDPMScheduler

    dpm = isinstance(scheduler, CogVideoXDPMScheduler)
    if dpm and generator is None:
        raise ValueError("the official DPM scheduler is stochastic: it needs the run's random generator")
    sample = sample.to(dtype)
    old_x0 = None
    for i in progress(len(plan.timesteps)):
        t, target = plan.timesteps[i], plan.targets[i]
        v = predict_v(i, sample)
        if dpm:
            back = plan.timesteps[i - 1] if i > 0 else None
            step, old_x0 = dpm_step(scheduler, v, old_x0, t, target, back, sample, generator)
            x0 = old_x0
        else:
            step, x0 = ddim_step(scheduler, v, t, target, sample)
        sample = step.to(dtype)
        if callback is not None:
            callback(i, sample, x0)
    return sample


@torch.no_grad()
def denoise(transformer, scheduler, latents: torch.Tensor, image_latents: torch.Tensor,
            prompt_embeds: torch.Tensor, negative_embeds: Optional[torch.Tensor],
            id_tokens: Optional[torch.Tensor], *, steps: int, cfg: float, dynamic_cfg: bool = False,
            generator: Optional[torch.Generator] = None, callback: Optional[StepCallback] = None,
            routing: Optional[RoutingOptions] = None, recorder: Optional[RoutingRecorder] = None,
            height: Optional[int] = None, width: Optional[int] = None,
            device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None,
            cache: Optional[TeaCache] = None, ff_chunk: Optional[int] = None) -> torch.Tensor:
    """Run the sampling loop; returns the denoised latents (B, F, C, H, W) in ``dtype``.

    latents: initial noise, already scaled by ``scheduler.init_noise_sigma``; image_latents: the scaled
    face-canvas latent followed by zero frames, same shape; prompt/negative embeds (B, S, D);
    id_tokens (P, T, token_dim) from ``transformer.project_ids`` or None for no identities;
    recorder: receives the router's assignment at every routed layer and step (routing maps);
    height/width: pixel size for the rotary grid (latent size x 8 when None);
    device/dtype: where and in what the transformer computes (default: where its weights are);
    cache: a :class:`~ingredients_core.sampling.step_cache.TeaCache` for this run (None: every step computed);
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
    ids = route = None
    if id_tokens is not None:
        ids = transformer.prepare_ids(id_tokens, device, dtype)
        grid = (frames, h // config.patch_size, w // config.patch_size)
        route = RoutingPlan(routing or RoutingOptions(), ids.num_ids, grid, config.local_face_scale, device,
                            recorder)
    plan = trailing_plan(scheduler, steps)
    timesteps = scheduler.timesteps.to(device)
    image_input = torch.cat([image_latents] * 2) if guided else image_latents

    def predict_v(i: int, sample: torch.Tensor) -> torch.Tensor:
        t = timesteps[i]
        model_input = torch.cat([sample] * 2) if guided else sample
        model_input = torch.cat([scheduler.scale_model_input(model_input, t), image_input], dim=2)
        pred = transformer(model_input, text, t.expand(model_input.shape[0]), rotary, ids=ids,
                           routing=route.step(i, len(plan.timesteps)) if route is not None else None,
                           cache=cache, ff_chunk=ff_chunk).float()
        if not guided:
            return pred
        scale = dynamic_guidance(cfg, steps, int(t)) if dynamic_cfg else cfg
        uncond, cond = pred.chunk(2)
        return uncond + scale * (cond - uncond)

    def report(i: int, sample: torch.Tensor, x0: torch.Tensor) -> None:
        if callback is not None:
            callback(StepInfo(step=i, total=len(plan.timesteps), timestep=plan.timesteps[i], latents=sample,
                              denoised=x0))

    return run_official(predict_v, latents, plan, scheduler, generator, dtype, report)


def _placement(transformer) -> tuple[torch.device, torch.dtype]:
    placement = getattr(transformer, "placement", None)
    if placement is not None:
        return placement()
    return transformer.device, transformer.dtype
