"""The official DDIM and DPM as a k-diffusion-style sampler (ComfyUI's SAMPLER protocol): the one
official loop (:func:`ingredients_core.sampling.official.run_official`) seen from a host's sigmas.

A host sampler loop (ComfyUI's ``KSAMPLER``) hands us ``x`` in k-diffusion space (``x = x0 + sigma *
noise``, the initial noise scaled by ``sqrt(1 + sigma^2)``) and a ``denoise(x, sigma)`` that returns
the guided clean latent ``x0``. With ``a = 1 / (1 + sigma^2)`` (the host's alpha_cumprod):

1. the DDPM-space sample the official scheduler steps is ``x_t = sqrt(a) * x``;
2. the raw v-prediction, recovered exactly from the host's own alphas, is
   ``v = (sqrt(a) * x_t - x0) / sqrt(1 - a)``, written as ComfyUI writes its denoised output;
3. the scheduler's own alphas (diffusers' zero-terminal-SNR schedule: alpha 0 at timestep 999, where
   ComfyUI keeps 4.9e-8) step ``x_t`` with ``v`` in the same loop and steps as the CLI's
   (:func:`ingredients_core.sampling.official.denoise`), so both agree to float precision.

The sigmas decide the steps: each must be one of the model's discrete noise levels (timestep =
``model_sampling.timestep(sigma)``); a step lands on the next sigma's timestep, or on the clean
sample for a final sigma of 0. When the sigmas are exactly the official trailing schedule for their
step count, the official landing rule is kept (``t - 1000 // steps``, diffusers' own; it differs from
the next timestep when the step count does not divide 1000). The DPM scheduler draws its noise from
the run's generator (the Ingredients Sampler passes the one its canvas and noise came from) or one
seeded with the run's seed on the latents' device, in the official order (one draw at the first and
last step, two in between), in the pack's latent layout (B, F, C, H, W).

No host imports here: ``model_sampling`` is duck-typed (``sigmas``, ``timestep(sigma)``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .official import StepCallback, StepInfo, StepPlan, dynamic_guidance, make_scheduler, trailing_plan

logger = logging.getLogger(__name__)

#: CogVideoX-5B-I2V's scheduler configuration (scheduler/scheduler_config.json of the release).
OFFICIAL_SCHEDULER_CONFIG = {
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "num_train_timesteps": 1000, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
    "set_alpha_to_one": True, "snr_shift_scale": 1.0, "steps_offset": 0, "timestep_spacing": "trailing",
}
#: How far a sigma may sit from the model's nearest discrete level (relative) and still be that level.
SIGMA_TOLERANCE = 1e-4
#: How far the model's schedule may sit from the scheduler's (relative, the terminal level left out).
SCHEDULE_TOLERANCE = 1e-3

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x in k-space, sigma) -> x0


@dataclass(frozen=True)
class SigmaPlan(StepPlan):
    """The core's step plan for a host's sigmas, and whether they are the official trailing
    schedule for their step count (then the official landing rule is kept)."""

    official: bool = False


# -- 1. schedules --------------------------------------------------------------------------------
def official_timesteps(steps: int, scheduler=None) -> list[int]:
    """The official trailing timesteps for ``steps`` steps (999, 979, ... for 50)."""
    scheduler = scheduler or make_scheduler("ddim", OFFICIAL_SCHEDULER_CONFIG)
    scheduler.set_timesteps(steps)
    return [int(t) for t in scheduler.timesteps]


def official_sigmas(model_sampling, steps: int) -> torch.Tensor:
    """The official timesteps as the model's sigmas, followed by 0 (a SIGMAS schedule)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1; got {steps}")
    levels = model_sampling.sigmas.float().cpu()
    return torch.cat([levels[official_timesteps(steps)], torch.zeros(1)])


def check_model_schedule(model_sampling, scheduler) -> None:
    """Raise if the model's noise levels are not the scheduler's (another ModelSampling applied)."""
    levels = model_sampling.sigmas.detach().double().cpu()
    alphas = scheduler.alphas_cumprod.double()
    if levels.shape != alphas.shape:
        raise ValueError(f"model: its noise schedule has {levels.numel()} levels where the official "
                         f"samplers need {alphas.numel()}; feed the MODEL of Load Ingredients Model without "
                         "a ModelSampling node in between")
    expected = ((1 - alphas[:-1]) / alphas[:-1]).sqrt()
    error = ((levels[:-1] - expected).abs() / expected).max().item()
    if error > SCHEDULE_TOLERANCE:
        raise ValueError(f"model: its noise schedule is not CogVideoX's (v-prediction, zero terminal SNR; "
                         f"{error:.2e} relative apart); the official samplers step only that schedule: remove "
                         "the ModelSampling node between the loader and the sampler, or use KSampler's samplers")


def plan_steps(model_sampling, sigmas: torch.Tensor, scheduler) -> SigmaPlan:
    """Timesteps of ``sigmas`` on the model's discrete schedule, checked, and where each step lands."""
    sigmas = sigmas.detach().float().cpu().flatten()
    values = sigmas.tolist()
    if len(values) < 2:
        raise ValueError("sigmas: at least two values are needed (a start and an end)")
    if any(b >= a for a, b in zip(values, values[1:])):
        raise ValueError(f"sigmas must decrease strictly; got {[round(s, 4) for s in values]}")
    if values[-1] < 0:
        raise ValueError("sigmas: the last value must be 0 or more")
    positive = sigmas[sigmas > 0]
    timesteps = [int(t) for t in model_sampling.timestep(positive.to(model_sampling.sigmas.device)).cpu()]
    levels = model_sampling.sigmas.float().cpu()
    for i, (sigma, t) in enumerate(zip(positive.tolist(), timesteps)):
        if abs(levels[t].item() - sigma) > SIGMA_TOLERANCE * sigma:
            raise ValueError(
                f"sigmas: {sigma:.6g} (position {i}) is not one of the model's {levels.numel()} discrete noise "
                "levels; the official DDIM/DPM step between the model's timesteps: use Ingredients Scheduler "
                "or BasicScheduler (simple, ddim_uniform, normal, sgm_uniform)")
    final_zero = values[-1] == 0
    steps = timesteps if final_zero else timesteps[:-1]
    trailing = trailing_plan(scheduler, len(steps)) if final_zero else None
    official = trailing is not None and list(trailing.timesteps) == steps
    if official:
        targets = list(trailing.targets)
    else:
        targets = steps[1:] + ([-1] if final_zero else [timesteps[-1]])
    return SigmaPlan(tuple(steps), tuple(targets), official)


# -- 2. the loop: the one official loop (``sampling.run_official``) seen from k-diffusion space ----
def _wide(tensor: torch.Tensor) -> torch.Tensor:
    """float64 where the device has it (not MPS): the k-space scalings by sqrt(1 + sigma^2), up to
    4519, then round once, at the end, and the official loop's x_t comes back as it went out."""
    return tensor.double() if tensor.device.type != "mps" else tensor.float()


def _to_pack(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).contiguous()  # (B, C, F, h, w) <-> (B, F, C, h, w)


@torch.no_grad()
def sample_official(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, model_sampling, scheduler_name: str,
                    seed: Optional[int] = None, callback: Optional[StepCallback] = None,
                    disable: Optional[bool] = True, generator: Optional[torch.Generator] = None,
                    dtype: Optional[torch.dtype] = None, v_space: bool = False,
                    start: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sample ``x`` (B, 16, F, h, w), k-diffusion space at ``sigmas[0]``, down ``sigmas`` with the
    official ``scheduler_name`` (``ddim`` or ``dpm``); returns x in k-diffusion space at ``sigmas[-1]``.

    ``denoise(x, sigma)``: the host's guided model call, x0 for k-space x; with ``v_space`` it takes
    the DDPM sample x_t itself and gives the guided v-prediction (the host's model in the official
    loop's own space: no rescaling of x by sqrt(1 + sigma^2) and back, so the run is the CLI's loop to
    the bit); ``start``: x_t at ``sigmas[0]`` when the host has it exactly (its unscaled noise), else
    x / sqrt(1 + sigma^2). The DPM draws from ``generator``, or from one seeded with ``seed`` on the
    latents' device; ``dtype``: the state's dtype between steps (the model's compute dtype, as the
    official pipeline keeps its latents; default x's); ``callback(StepInfo)`` after every step, as
    the CLI's loop calls it (DDPM-space latents after the step and the scheduler's x0 estimate, in the
    pack's layout (B, F, C, h, w)); ``disable``: no console progress bar (tqdm).
    """
    from functools import partial

    from tqdm.auto import trange

    from .official import run_official

    scheduler = make_scheduler(scheduler_name, OFFICIAL_SCHEDULER_CONFIG)
    check_model_schedule(model_sampling, scheduler)
    plan = plan_steps(model_sampling, sigmas, scheduler)
    if not plan.official:
        logger.info("official %s sampler: %d steps on timesteps %s (not the official trailing schedule)",
                    scheduler_name, len(plan.timesteps), list(plan.timesteps))
    if scheduler_name == "dpm" and generator is None:
        if seed is None:
            raise ValueError("the official DPM sampler needs the run's seed (SamplerCustomAdvanced and KSampler "
                             "give it)")
        generator = torch.Generator(x.device).manual_seed(int(seed))
    sigmas = sigmas.to(x.device)
    s_in = x.new_ones([x.shape[0]])

    def predict_v(i: int, sample: torch.Tensor) -> torch.Tensor:
        if v_space:
            return _to_pack(denoise(_to_pack(sample).to(x.dtype), sigmas[i] * s_in).float())
        sigma = _wide(sigmas[i])
        x_k = x if i == 0 else (_to_pack(_wide(sample)) * (1 + sigma ** 2) ** 0.5).to(x.dtype)
        x0 = denoise(x_k, sigmas[i] * s_in)
        # ComfyUI's V_PREDICTION: x0 = x_k / (s^2 + 1) - v * s / sqrt(s^2 + 1); solved for v
        v = (_wide(x_k) / (sigma ** 2 + 1) - _wide(x0)) / (sigma / (sigma ** 2 + 1) ** 0.5)
        return _to_pack(v.float())

    def report(i: int, sample: torch.Tensor, x0: torch.Tensor) -> None:
        callback(StepInfo(step=i, total=len(plan.timesteps), timestep=plan.timesteps[i], latents=sample, denoised=x0))

    if start is None:
        start = _wide(x) / (1 + _wide(sigmas[0]) ** 2) ** 0.5
    sample = run_official(predict_v, _to_pack(start), plan, scheduler, generator, dtype or x.dtype,
                          report if callback is not None else None, partial(trange, disable=disable))
    if float(sigmas[-1]) == 0:
        return _to_pack(sample).to(x.dtype)
    return (_to_pack(_wide(sample)) * (1 + _wide(sigmas[-1]) ** 2) ** 0.5).to(x.dtype)


# -- 4. dynamic CFG ------------------------------------------------------------------------------
def dynamic_cfg_scale(cfg: float, steps: int, model_sampling, sigma: torch.Tensor) -> float:
    """The official dynamic guidance scale at ``sigma`` (its timestep on the model's schedule) for a
    run of ``steps`` steps (the formula uses the timestep value, as the official pipeline does)."""
    t = int(model_sampling.timestep(sigma.flatten()[:1].to(model_sampling.sigmas.device)).item())
    return dynamic_guidance(cfg, steps, t)
