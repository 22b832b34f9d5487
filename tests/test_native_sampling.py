"""The official DDIM/DPM as a k-diffusion sampler loop (ingredients_core.sampling.host_sampler), against the
pack's sampler, with a ComfyUI-style discrete schedule and denoiser (no ComfyUI, no stand-ins)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ingredients_core.sampling.host_sampler import (
    OFFICIAL_SCHEDULER_CONFIG,
    dynamic_cfg_scale,
    official_sigmas,
    official_timesteps,
    plan_steps,
    sample_official,
)
from ingredients_core.sampling.official import ddim_step, denoise, dpm_step, dynamic_guidance, make_scheduler, rotary_embeddings
from ingredients_core.testing.make_tiny import COGVIDEOX_I2V_SCHEDULER_CONFIG

TERMINAL = 4.8973451890853435e-08  # ComfyUI's last alpha_cumprod under zsnr


class DiscreteVSchedule:
    """ComfyUI's ModelSamplingDiscrete (scaled-linear betas, zero terminal SNR) as the sampler sees it."""

    def __init__(self, zsnr: bool = True):
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        alphas = torch.cumprod(1 - betas, 0)
        if zsnr:
            root = alphas.sqrt()
            first, last = root[0].clone(), root[-1].clone()
            root = (root - last) * first / (first - last)
            alphas = root ** 2
            alphas[-1] = TERMINAL
        self.sigmas = ((1 - alphas) / alphas).sqrt().float()
        self.log_sigmas = self.sigmas.log()

    def timestep(self, sigma):
        return (sigma.log() - self.log_sigmas[:, None]).abs().argmin(dim=0).view(sigma.shape)


class GuidedDenoiser:
    """What ComfyUI's CFGGuider + a V_PREDICTION model give the sampler: x0 per row from the pack's
    transformer (rows [uncond, cond]), guided in x0 space. Latents (B, C, F, h, w)."""

    def __init__(self, transformer, schedule, image, positive, negative, cfg, rotary):
        self.transformer, self.schedule, self.cfg, self.rotary = transformer, schedule, cfg, rotary
        self.image = torch.cat([image] * 2)  # (2, F, C, h, w), the pack's layout
        self.text = torch.cat([negative, positive])

    def __call__(self, x, sigma):
        s = sigma[0]
        x_in = torch.cat([x / (s ** 2 + 1) ** 0.5] * 2).transpose(1, 2)
        t = self.schedule.timestep(sigma[:1]).float().expand(2)
        v = self.transformer(torch.cat([x_in, self.image], dim=2), self.text, t, self.rotary).float().transpose(1, 2)
        x0 = x / (s ** 2 + 1) - v * s / (s ** 2 + 1) ** 0.5
        uncond, cond = x0.chunk(2)
        return uncond + (cond - uncond) * self.cfg


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _inputs(config, frames=3, h=8, w=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, frames, 16, h, w, generator=g)
    image = torch.randn(1, frames, 16, h, w, generator=g)
    text = torch.randn(2, 226, config.text_embed_dim, generator=g)
    return noise, image, text[1:], text[:1]


def _native(transformer, noise, image, positive, negative, *, scheduler, steps, cfg, seed, sigmas=None):
    schedule = DiscreteVSchedule()
    config = transformer.config
    frames, h, w = noise.shape[1], noise.shape[3], noise.shape[4]
    rotary = rotary_embeddings(config, h * 8, w * 8, frames, "cpu") if config.use_rotary_positional_embeddings else None
    model = GuidedDenoiser(transformer, schedule, image, positive, negative, cfg, rotary)
    sigmas = official_sigmas(schedule, steps) if sigmas is None else sigmas
    x = noise.transpose(1, 2) * (1 + sigmas[0] ** 2) ** 0.5   # ComfyUI's noise_scaling at max denoise
    steps_seen = []
    out = sample_official(model, x, sigmas, schedule, scheduler, seed, lambda info: steps_seen.append(info.step))
    return out.transpose(1, 2), steps_seen


def _pack(transformer, noise, image, positive, negative, *, scheduler, steps, cfg, seed):
    return denoise(transformer, make_scheduler(scheduler, COGVIDEOX_I2V_SCHEDULER_CONFIG), noise, image, positive,
                   negative, None, steps=steps, cfg=cfg, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny():
    from ingredients_core.weights.checkpoint import load_transformer
    from ingredients_core.testing.tiny_transformer import write_tiny_transformer

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_transformer(Path(tmp))
        return load_transformer(Path(tmp) / "transformer", dtype=torch.float32, device="cpu")


def test_official_config_is_the_release_one():
    assert OFFICIAL_SCHEDULER_CONFIG == {k: v for k, v in COGVIDEOX_I2V_SCHEDULER_CONFIG.items()
                                         if not k.startswith("_")}


def test_official_sigmas_are_the_trailing_timesteps():
    schedule = DiscreteVSchedule()
    sigmas = official_sigmas(schedule, 50)
    assert official_timesteps(50)[:3] == [999, 979, 959] and official_timesteps(50)[-1] == 19
    assert sigmas[-1] == 0 and len(sigmas) == 51
    assert schedule.timestep(sigmas[:-1]).tolist() == official_timesteps(50)


@pytest.mark.parametrize("steps", [1, 3, 4, 6, 30, 50])
def test_plan_follows_the_official_landing_rule(steps):
    schedule = DiscreteVSchedule()
    scheduler = make_scheduler("ddim", OFFICIAL_SCHEDULER_CONFIG)
    plan = plan_steps(schedule, official_sigmas(schedule, steps), scheduler)
    gap = 1000 // steps
    assert plan.official and list(plan.timesteps) == official_timesteps(steps)
    assert list(plan.targets) == [max(t - gap, -1) for t in plan.timesteps]


def test_plan_of_other_discrete_sigmas_lands_on_the_next_sigma():
    schedule = DiscreteVSchedule()
    sigmas = torch.cat([schedule.sigmas[[999, 900, 500]], schedule.sigmas[[100]]])  # a split: ends above 0
    plan = plan_steps(schedule, sigmas, make_scheduler("ddim", OFFICIAL_SCHEDULER_CONFIG))
    assert not plan.official and plan.timesteps == (999, 900, 500) and plan.targets == (900, 500, 100)


@pytest.mark.parametrize("sigmas,message", [
    ([14.6, 5.0, 0.0], "not one of the model's 1000 discrete noise levels"),
    ([1.0, 2.0, 0.0], "decrease strictly"),
    ([1.0], "at least two"),
])
def test_plan_refuses_sigmas_off_the_schedule(sigmas, message):
    schedule = DiscreteVSchedule()
    values = torch.tensor(sigmas)
    if message.startswith("not"):
        values[0] = schedule.sigmas[999]
    with pytest.raises(ValueError, match=message):
        plan_steps(schedule, values, make_scheduler("ddim", OFFICIAL_SCHEDULER_CONFIG))


def test_model_schedule_other_than_cogvideox_is_refused():
    with pytest.raises(ValueError, match="noise schedule is not CogVideoX"):
        sample_official(lambda x, s: x, torch.zeros(1, 16, 1, 2, 2), torch.tensor([1.0, 0.0]),
                        DiscreteVSchedule(zsnr=False), "ddim")


@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
def test_explicit_steps_equal_diffusers_steps(scheduler):
    """One step with explicit timesteps is diffusers' own step (same draws for the DPM)."""
    sched = make_scheduler(scheduler, OFFICIAL_SCHEDULER_CONFIG)
    sched.set_timesteps(4)
    g = torch.Generator().manual_seed(1)
    sample, v, old = (torch.randn(1, 2, 16, 4, 6, generator=g) for _ in range(3))
    for t, back in ((999, None), (499, 749)):
        prior = None if back is None else old
        if scheduler == "ddim":
            ours = ddim_step(sched, v, t, t - 250, sample)
            theirs = sched.step(v, t, sample, return_dict=False)
        else:
            ours = dpm_step(sched, v, prior, t, t - 250, back, sample, torch.Generator().manual_seed(5))
            theirs = sched.step(v, prior, t, back, sample, generator=torch.Generator().manual_seed(5),
                                return_dict=False)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
@pytest.mark.parametrize("steps", [4, 3])
def test_native_loop_equals_pack_sampler_tiny(tiny, scheduler, steps):
    noise, image, positive, negative = _inputs(tiny.config)
    ours, seen = _native(tiny, noise, image, positive, negative, scheduler=scheduler, steps=steps, cfg=6.0, seed=11)
    theirs = _pack(tiny, noise, image, positive, negative, scheduler=scheduler, steps=steps, cfg=6.0, seed=11)
    assert seen == list(range(steps))
    assert relative(ours, theirs) < 1e-5


def test_native_dpm_depends_on_the_seed(tiny):
    noise, image, positive, negative = _inputs(tiny.config)
    a, _ = _native(tiny, noise, image, positive, negative, scheduler="dpm", steps=3, cfg=6.0, seed=1)
    b, _ = _native(tiny, noise, image, positive, negative, scheduler="dpm", steps=3, cfg=6.0, seed=2)
    assert relative(a, b) > 1e-3
    with pytest.raises(ValueError, match="needs the run's seed"):
        _native(tiny, noise, image, positive, negative, scheduler="dpm", steps=3, cfg=6.0, seed=None)


def test_native_loop_equals_pack_sampler_golden(golden_dir):
    """Golden weights and inputs, the stochastic DPM over 3 steps (first, second-order and last step;
    3 does not divide 1000: the official landing rule). The golden DDIM run itself is test_sampling's."""
    from safetensors.torch import load_file

    from ingredients_core.weights.checkpoint import load_transformer
    from ingredients_core.testing.parity import write_golden_checkpoint

    import tempfile
    from pathlib import Path

    case = json.loads((golden_dir / "case.json").read_text())
    inputs = load_file(str(golden_dir / "inputs.safetensors"))
    with tempfile.TemporaryDirectory() as tmp:
        model = load_transformer(write_golden_checkpoint(golden_dir, Path(tmp)), dtype=torch.float32, device="cpu")
    noise, image = inputs["latents"], inputs["image_latents"]
    positive, negative = inputs["prompt_embeds"], inputs["negative_prompt_embeds"]
    kwargs = dict(scheduler="dpm", steps=3, cfg=case["cfg"], seed=case["step_generator_seed"])
    theirs = _pack(model, noise, image, positive, negative, **kwargs)
    ours, _ = _native(model, noise, image, positive, negative, **kwargs)
    assert relative(ours, theirs) < 1e-5


def test_dynamic_cfg_scale_uses_the_timestep_of_sigma():
    schedule = DiscreteVSchedule()
    for t in (999, 500, 19):
        scale = dynamic_cfg_scale(6.0, 50, schedule, schedule.sigmas[t:t + 1])
        assert scale == pytest.approx(dynamic_guidance(6.0, 50, t))
    assert dynamic_guidance(6.0, 50, 50) == pytest.approx(1.0) and not math.isnan(dynamic_guidance(6.0, 50, 999))
