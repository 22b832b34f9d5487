"""Sampling the MODEL with ComfyUI's own sampling: the official DDIM/DPM as a ``KSAMPLER`` (what
*Ingredients Official Sampler* gives and the Ingredients Sampler runs), ComfyUI's ``sample_custom``
(what SamplerCustomAdvanced runs), the MODEL's ``model_sampling``, and the official dynamic CFG as a
``sampler_post_cfg_function`` (the maths in ``ingredients_core.sampling.host_sampler``).
"""

from __future__ import annotations

import logging
import math
from typing import Optional

import comfy.samplers
import torch

from .model import SPACE_KEY

logger = logging.getLogger(__name__)


def _official_sampler_function(model, x, sigmas, extra_args=None, callback=None, disable=None,
                               scheduler: str = "dpm", generator: Optional[torch.Generator] = None,
                               result: Optional[list] = None):
    """A k-diffusion sampler function (ComfyUI's protocol): ``model`` is ComfyUI's
    ``KSamplerX0Inpaint`` around the guider, ``model(x, sigma * s_in, **extra_args)`` -> guided output;
    the guider's base model carries ``model_sampling`` and the compute dtype (the loop keeps its state
    in it, as the official pipeline); ``extra_args["seed"]`` seeds the DPM unless ``generator`` (the
    Ingredients Sampler's, which drew the canvas latent and the noise) is given; ``result`` (a list)
    receives the sampled latents in model space, before ComfyUI rescales them. Where ComfyUI's
    guidance is linear (``_v_space_fits``) the model runs in the official loop's own space (x_t in,
    v out: the command line's loop to the bit); else in k-diffusion space, to float rounding."""
    from ...ingredients_core.sampling.host_sampler import sample_official

    extra_args = {} if extra_args is None else extra_args
    base = model.inner_model.inner_model
    v_space = _v_space_fits(extra_args)
    logger.debug("official %s SAMPLER: %s space", scheduler, "the official loop's (v)" if v_space else "k-diffusion")
    call_args = extra_args
    if v_space:
        options = dict(extra_args.get("model_options") or {})
        options["transformer_options"] = dict(options.get("transformer_options") or {}, **{SPACE_KEY: "ddpm"})
        call_args = dict(extra_args, model_options=options)

    def denoise(x_in: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return model(x_in, sigma, **call_args)

    def report(info) -> None:  # the core's StepInfo -> ComfyUI's callback dict (x at the next sigma, x0)
        i, sigma = info.step, sigmas[info.step]
        x_next = info.latents.transpose(1, 2).float() * (1 + sigmas[i + 1].float() ** 2) ** 0.5
        callback({"x": x_next, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": info.denoised.transpose(1, 2)})

    dtype = base.get_dtype_inference() if hasattr(base, "get_dtype_inference") else x.dtype
    out = sample_official(denoise, x, sigmas, base.model_sampling, scheduler, extra_args.get("seed"),
                          report if callback is not None else None, disable=disable, generator=generator,
                          dtype=dtype, v_space=v_space, start=_exact_start(model, x, sigmas) if v_space else None)
    if result is not None:
        result.append(out)
    return out


def _v_space_fits(extra_args: dict) -> bool:
    """Whether ComfyUI's guidance gives the same result on v as on x0 (it is affine in the model's
    output): no sampler_cfg_function or pre-CFG function (RescaleCFG, ...), no post-CFG function but
    the pack's Dynamic CFG (APG, CFGNorm and SLG's act on x0), no inpainting mask."""
    options = extra_args.get("model_options") or {}
    if extra_args.get("denoise_mask") is not None or "sampler_cfg_function" in options \
            or options.get("sampler_pre_cfg_function"):
        return False
    return all(isinstance(fn, DynamicCFG) for fn in options.get("sampler_post_cfg_function", []))


def _exact_start(model, x: torch.Tensor, sigmas: torch.Tensor) -> Optional[torch.Tensor]:
    """The unscaled noise ComfyUI's KSAMPLER kept (``model.noise``): x_t itself when x is that noise
    scaled to the model's largest sigma on an empty latent (x_t = x / sqrt(1 + sigma^2) would round)."""
    noise, latent = getattr(model, "noise", None), getattr(model, "latent_image", None)
    if noise is None or noise.shape != x.shape or (latent is not None and bool(torch.count_nonzero(latent))):
        return None
    sigma_max, first = float(model.inner_model.inner_model.model_sampling.sigma_max), float(sigmas[0])
    if not (math.isclose(sigma_max, first, rel_tol=1e-5) or first > sigma_max):
        return None
    return noise.to(device=x.device, dtype=x.dtype)


def official_sampler(scheduler: str, generator: Optional[torch.Generator] = None, result: Optional[list] = None):
    """A ComfyUI ``SAMPLER`` running the pack's official ``scheduler`` (``dpm`` or ``ddim``); the DPM
    draws from ``generator`` when given, else from one seeded with the run's seed; ``result`` (a
    list) receives the sampled latents in model space (the Ingredients Sampler's output)."""
    options = {"scheduler": scheduler}
    if generator is not None:
        options["generator"] = generator
    if result is not None:
        options["result"] = result
    return comfy.samplers.KSAMPLER(_official_sampler_function, extra_options=options)


def sample(model, noise: torch.Tensor, cfg: float, sampler, sigmas: torch.Tensor, positive: list, negative: list,
           callback, seed: int) -> torch.Tensor:
    """ComfyUI's own sampling of a MODEL (``comfy.sample.sample_custom``, what SamplerCustomAdvanced runs)
    from ``noise`` (B, 16, F, h, w) on an empty latent: raw VAE latents on the intermediate device.
    ``callback(step, x0, x, total)`` after every step (ComfyUI's protocol)."""
    import comfy.sample
    import comfy.utils

    latent = torch.zeros_like(noise)
    return comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent,
                                      callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)


def model_sampling(model):
    """The MODEL's ``model_sampling`` with its object patches applied (as BasicScheduler reads it)."""
    return model.get_model_object("model_sampling")


class DynamicCFG:
    """ComfyUI ``sampler_post_cfg_function``: the official dynamic guidance. The scale at each step
    comes from the step's timestep (its sigma on the model's schedule) and the number of steps of
    the sigmas being sampled; without an unconditional pass (cfg 1) the result is left as it is."""

    def __call__(self, args: dict) -> torch.Tensor:
        from ...ingredients_core.sampling.host_sampler import dynamic_cfg_scale

        cfg, uncond = args["cond_scale"], args["uncond_denoised"]
        if args.get("uncond") is None or cfg <= 1.0:
            return args["denoised"]
        sample_sigmas = args["model_options"].get("transformer_options", {}).get("sample_sigmas")
        if sample_sigmas is None:
            raise RuntimeError("Ingredients Dynamic CFG: the sampler gave no sample_sigmas (ComfyUI sets them in "
                               "CFGGuider); use KSampler or SamplerCustomAdvanced with CFGGuider")
        scale = dynamic_cfg_scale(cfg, len(sample_sigmas) - 1, args["model"].model_sampling, args["sigma"])
        return uncond + scale * (args["cond_denoised"] - uncond)


def with_dynamic_cfg(model):
    """A clone of the MODEL whose guidance follows the official dynamic CFG."""
    patched = model.clone()
    patched.set_model_sampler_post_cfg_function(DynamicCFG())
    return patched
