"""The pack's DDIM and DPM (diffusers' CogVideoX schedulers) as a k-diffusion-style sampler loop.

A host sampler loop (ComfyUI's ``KSAMPLER``) hands us ``x`` in k-diffusion space (``x = x0 + sigma *
noise``, the initial noise scaled by ``sqrt(1 + sigma^2)``) and a ``denoise(x, sigma)`` that returns
the guided clean latent ``x0``. With ``a = 1 / (1 + sigma^2)`` (the host's alpha_cumprod):

1. the DDPM-space sample the official scheduler steps is ``x_t = sqrt(a) * x``;
2. the raw v-prediction, recovered exactly from the host's own alphas, is
   ``v = (sqrt(a) * x_t - x0) / sqrt(1 - a)``, written as ComfyUI writes its denoised output;
3. the scheduler's own alphas (diffusers' zero-terminal-SNR schedule: alpha 0 at timestep 999, where
   ComfyUI keeps 4.9e-8) step ``x_t`` with ``v``, so the run equals the pack's sampler
   (:func:`ingredients_core.sampling.denoise`) to float precision.

The sigmas decide the steps: each must be one of the model's discrete noise levels (timestep =
``model_sampling.timestep(sigma)``); a step lands on the next sigma's timestep, or on the clean
sample for a final sigma of 0. When the sigmas are exactly the official trailing schedule for their
step count, the official landing rule is kept (``t - 1000 // steps``, diffusers' own; it differs from
the next timestep when the step count does not divide 1000). The DPM scheduler draws its noise from
one ``torch.Generator`` seeded with the run's seed on the latents' device, in the official order
(one draw at the first and last step, two in between), in the pack's latent layout (B, F, C, H, W).

No host imports here: ``model_sampling`` is duck-typed (``sigmas``, ``timestep(sigma)``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .sampling import dynamic_guidance, make_scheduler

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
StepCallback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]  # (i, x0, x, sigma)


@dataclass(frozen=True)
class StepPlan:
    """Per step: the model timestep, where the step lands (-1: the clean sample) and the timestep of
    the step before (DPM's second-order term; None at the first step)."""

    timesteps: tuple[int, ...]
    targets: tuple[int, ...]
    official: bool  # the sigmas are the official trailing schedule for their step count


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


def plan_steps(model_sampling, sigmas: torch.Tensor, scheduler) -> StepPlan:
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
    official = final_zero and steps == official_timesteps(len(steps), scheduler)
    if official:
        gap = scheduler.config.num_train_timesteps // len(steps)
        targets = [max(t - gap, -1) for t in steps]
    else:
        targets = steps[1:] + ([-1] if final_zero else [timesteps[-1]])
    return StepPlan(tuple(steps), tuple(targets), official)


# -- 2. one scheduler step with explicit timesteps -------------------------------------------------
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
             back: Optional[int], sample: torch.Tensor, generator: torch.Generator):
    """CogVideoXDPMScheduler's step (DPM-Solver++ 2M, stochastic) from ``t`` to ``target``, ``back``
    the previous step's timestep -> (next sample, x0). Draws as diffusers does: once, and a second
    time for the second-order update (not at the first step nor onto the clean sample)."""
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


# -- 3. the loop ---------------------------------------------------------------------------------
def _to_pack(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).contiguous()  # (B, C, F, h, w) <-> (B, F, C, h, w)


@torch.no_grad()
def sample_official(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, model_sampling, scheduler_name: str,
                    seed: Optional[int] = None, callback: Optional[StepCallback] = None) -> torch.Tensor:
    """Sample ``x`` (B, 16, F, h, w), k-diffusion space at ``sigmas[0]``, down ``sigmas`` with the
    official ``scheduler_name`` (``ddim`` or ``dpm``); returns x in k-diffusion space at ``sigmas[-1]``.

    ``denoise(x, sigma)`` -> guided x0 (the host's model call); ``seed``: the DPM's generator seed;
    ``callback(i, x0, x, sigma)`` after every model call (x0: the scheduler's estimate, for previews).
    """
    scheduler = make_scheduler(scheduler_name, OFFICIAL_SCHEDULER_CONFIG)
    check_model_schedule(model_sampling, scheduler)
    plan = plan_steps(model_sampling, sigmas, scheduler)
    if not plan.official:
        logger.info("official %s sampler: %d steps on timesteps %s (not the official trailing schedule)",
                    scheduler_name, len(plan.timesteps), list(plan.timesteps))
    dpm = scheduler_name == "dpm"
    if dpm and seed is None:
        raise ValueError("the official DPM sampler needs the run's seed (SamplerCustomAdvanced and KSampler give it)")
    generator = torch.Generator(x.device).manual_seed(int(seed)) if dpm else None
    sigmas = sigmas.to(x.device)
    s_in = x.new_ones([x.shape[0]])
    sample = _to_pack(x / (1 + sigmas[0] ** 2) ** 0.5)   # x_t, DDPM space, (B, F, C, h, w)
    old_x0 = None
    for i, t in enumerate(plan.timesteps):
        sigma = sigmas[i]
        x_k = x if i == 0 else _to_pack(sample) * (1 + sigma ** 2) ** 0.5
        x0 = denoise(x_k, sigma * s_in)
        # ComfyUI's V_PREDICTION: x0 = x_k / (s^2 + 1) - v * s / sqrt(s^2 + 1); solved for v
        v = _to_pack((x_k / (sigma ** 2 + 1) - x0.float()) / (sigma / (sigma ** 2 + 1) ** 0.5))
        if dpm:
            back = plan.timesteps[i - 1] if i > 0 else None
            sample, x0_step = dpm_step(scheduler, v, old_x0, t, plan.targets[i], back, sample, generator)
            old_x0 = x0_step
        else:
            sample, x0_step = ddim_step(scheduler, v, t, plan.targets[i], sample)
        if callback is not None:
            callback(i, _to_pack(x0_step), x_k, sigma)
    return _to_pack(sample) * (1 + sigmas[-1] ** 2) ** 0.5


# -- 4. dynamic CFG ------------------------------------------------------------------------------
def dynamic_cfg_scale(cfg: float, steps: int, model_sampling, sigma: torch.Tensor) -> float:
    """The official dynamic guidance scale at ``sigma`` (its timestep on the model's schedule) for a
    run of ``steps`` steps (the formula uses the timestep value, as the official pipeline does)."""
    t = int(model_sampling.timestep(sigma.flatten()[:1].to(model_sampling.sigmas.device)).item())
    return dynamic_guidance(cfg, steps, t)
