"""Stand-in for ``comfy.sample``: the initial noise (a CPU generator seeded with the seed, one
``randn`` over the latent's shape) and the two sampling entry points the core nodes call."""

from __future__ import annotations

import torch

import comfy.model_management
import comfy.samplers


def prepare_noise(latent_image, seed, noise_inds=None):
    """ComfyUI seeds the global CPU generator (``torch.manual_seed``); a CPU generator of the same
    seed gives the same numbers without touching the tests' global state."""
    if noise_inds is not None:
        raise NotImplementedError("the stand-in draws no per-index noise (batch_index)")
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(latent_image.size(), dtype=torch.float32, layout=latent_image.layout, generator=generator,
                       device="cpu").to(dtype=latent_image.dtype)


def sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise=1.0,
           disable_noise=False, start_step=None, last_step=None, force_full_denoise=False, noise_mask=None,
           sigmas=None, callback=None, disable_pbar=False, seed=None):
    sampler = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler_name,
                                      scheduler=scheduler, denoise=denoise, model_options=model.model_options)
    samples = sampler.sample(noise, positive, negative, cfg=cfg, latent_image=latent_image, start_step=start_step,
                             last_step=last_step, force_full_denoise=force_full_denoise, denoise_mask=noise_mask,
                             sigmas=sigmas, callback=callback, disable_pbar=disable_pbar, seed=seed)
    return samples.to(comfy.model_management.intermediate_device())


def sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent_image, noise_mask=None,
                  callback=None, disable_pbar=False, seed=None):
    samples = comfy.samplers.sample(model, noise, positive, negative, cfg, model.load_device, sampler, sigmas,
                                    model_options=model.model_options, latent_image=latent_image,
                                    denoise_mask=noise_mask, callback=callback, disable_pbar=disable_pbar, seed=seed)
    return samples.to(comfy.model_management.intermediate_device())
