"""TeaCache as a MODEL patch (*Ingredients TeaCache*, ``host.with_teacache``; issue 19 item 3):
the same skipped steps and the same latents as the pack sampler's TeaCache, through
SamplerCustomAdvanced (the official SAMPLER and sigmas) and KSampler, on the stand-ins.

The plain tiny model's timestep embedding moves far beyond the published CogVideoX-5B fit between
steps (rel-L1 0.5-1.9, where the fit ends at 0.33), so nothing is ever skipped there. The tests run
on VARIANTS whose time embedding's first layer is scaled down (:func:`variant`): rel-L1 between
steps 0.011-0.016 on the tiny model, 0.05-0.06 on the golden one, inside the fit."""

from __future__ import annotations

import copy
import json
import logging
import tempfile
from pathlib import Path

import pytest
import torch
from test_native_samplers import (SCALE, SEED, case, comfy, ksampler,  # noqa: F401  (case: a fixture)
                                  official, official_sigmas, relative, sampler_custom_advanced)

from tests.support import golden_ids, harness  # noqa: E402


logger = logging.getLogger(__name__)
STEPS = 6
TOLERANCE = 1e-5  # native vs pack, relative to the largest latent: as the uncached native-vs-pack tests


def host_room():
    return harness.pack_module("nodes.host")


def step_cache():
    return harness.pack_module("ingredients_core.sampling.step_cache")


def variant(transformer, scale: float):
    """A copy of ``transformer`` whose time embedding's first layer is scaled by ``scale`` (so the
    embedding moves little between steps), as a MODEL: (transformer, MODEL)."""
    transformer = copy.deepcopy(transformer)
    with torch.no_grad():
        transformer.time_embedding.linear_1.weight.mul_(scale)
    model = host_room().model_patcher(transformer, torch.float32, torch.float32, "official", None)
    return transformer, model


@pytest.fixture(scope="module")
def tiny(loaded, case):
    case["scheduler_config"] = loaded["payload"].scheduler_config
    return variant(loaded["payload"].transformer, 1e-3)


def pack_run(transformer, case, scheduler, threshold, steps=STEPS, tokens=None, routing=None):
    """The pack's sampler (ingredients_core.sampling.official.denoise) with today's TeaCache, from the same
    noise and seed as :func:`custom_advanced`: (latents in ComfyUI's LATENT layout, the cache)."""
    from comfyui_ingredients_under_test.ingredients_core.sampling.official import denoise, make_scheduler

    cache = step_cache().TeaCache(threshold, steps) if threshold > 0 else None
    noise = comfy("comfy.sample").prepare_noise(case["latent"], SEED).transpose(1, 2)
    latents = denoise(transformer, make_scheduler(scheduler, case["scheduler_config"]), noise, case["image"],
                      case["positive_embeds"], case["negative_embeds"], tokens, steps=steps, cfg=6.0,
                      generator=torch.Generator().manual_seed(SEED), routing=routing, cache=cache)
    return latents.transpose(1, 2) / SCALE, cache


def block_runs(transformer):
    """A list that grows by one per run of the first block, and the hook's handle."""
    runs = []
    return runs, transformer.transformer_blocks[0].register_forward_hook(lambda *_: runs.append(1))


def custom_advanced(model, case, nodes, scheduler="ddim", threshold=None, steps=STEPS):  # noqa: F811
    cached = model if threshold is None else host_room().with_teacache(model, threshold)
    out = sampler_custom_advanced(cached, case, official(nodes, scheduler), official_sigmas(nodes, model, steps))
    return out, host_room().teacache_report(cached)


# -- today's path, and the same through the MODEL ----------------------------------------------------
def test_the_pack_sampler_skips_4_of_6_steps_on_the_tiny_variant(tiny, case):
    transformer, _ = tiny
    runs, handle = block_runs(transformer)
    try:
        cached, cache = pack_run(transformer, case, "ddim", 0.3)
    finally:
        handle.remove()
    assert cache.skipped_steps == [1, 2, 3, 4] and cache.evaluations == 2 and len(runs) == 2
    assert "4 of 6 transformer evaluations skipped" in cache.summary()
    plain, _ = pack_run(transformer, case, "ddim", 0.0)
    assert relative(cached, plain) > 1e-3  # the skipped steps changed the run: the cache acted


@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
@pytest.mark.parametrize("threshold, skipped", [(0.3, [1, 2, 3, 4]), (0.1, [1, 2, 4]), (0.05, [1, 3])])
def test_the_model_patch_skips_the_pack_sampler_steps_with_the_same_latents(tiny, case, nodes, scheduler,  # noqa: F811
                                                                           threshold, skipped):
    transformer, model = tiny
    want, cache = pack_run(transformer, case, scheduler, threshold)
    ours, report = custom_advanced(model, case, nodes, scheduler, threshold)
    assert cache.skipped_steps == skipped          # the accumulator restarts after a computed step
    assert report.skipped_steps == skipped and report.evaluations == STEPS - len(skipped)
    assert report.summary() == cache.summary()
    logger.info("tiny variant, %s at %g: skipped steps %s, MODEL path vs pack sampler %.3g", scheduler, threshold,
                report.skipped_steps, relative(ours, want))
    assert relative(ours, want) <= TOLERANCE


def test_threshold_0_is_exactly_uncached_and_removes_an_earlier_teacache(tiny, case, nodes):  # noqa: F811
    _, model = tiny
    plain, _ = custom_advanced(model, case, nodes)
    off, report = custom_advanced(model, case, nodes, threshold=0.0)
    assert torch.equal(off, plain) and report is None
    cached = host_room().with_teacache(model, 0.3)
    removed = nodes["IngredientsTeaCache"].execute(model=cached, threshold=0.0).args[0]
    assert torch.equal(custom_advanced(removed, case, nodes)[0], plain)
    assert host_room().teacache_report(removed) is None
    assert "ingredients_teacache" not in model.model_options.get("transformer_options", {})  # input untouched
    with pytest.raises(ValueError, match="threshold"):
        host_room().with_teacache(model, -0.1)


def test_split_cond_and_uncond_calls_take_the_batched_decisions(tiny, case, nodes, monkeypatch):  # noqa: F811
    transformer, model = tiny
    batched, batched_report = custom_advanced(model, case, nodes, threshold=0.1)
    monkeypatch.setattr(type(model.model), "memory_required", lambda self, shape, cond_shapes={}: 1e30)
    runs, handle = block_runs(transformer)
    try:
        split, report = custom_advanced(model, case, nodes, threshold=0.1)
    finally:
        handle.remove()
    assert report.skipped_steps == batched_report.skipped_steps == [1, 2, 4]
    assert len(runs) == 2 * report.evaluations  # uncond and cond calls of a computed step both ran
    assert relative(split, batched) <= 1e-5      # as the uncached split vs batched runs


def test_the_model_patch_with_ksampler(tiny, case):
    _, model = tiny
    cached = host_room().with_teacache(model, 0.3)
    out = ksampler(cached, case, STEPS)
    report = host_room().teacache_report(cached)
    assert report.skipped_steps == [1, 2, 3, 4] and report.evaluations == 2
    assert torch.isfinite(out).all() and relative(out, ksampler(model, case, STEPS)) > 1e-3


def _two_calls_per_step(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """A sampler evaluating the model twice per step (at the step's sigma and between it and the
    next, as DPM-2 does), then an euler step from the second."""
    extra_args = extra_args or {}
    for i in range(len(sigmas) - 1):
        model(x, sigmas[i] * x.new_ones([x.shape[0]]), **extra_args)
        middle = (sigmas[i] * sigmas[i + 1]).sqrt() if sigmas[i + 1] > 0 else sigmas[i] / 2
        denoised = model(x, middle * x.new_ones([x.shape[0]]), **extra_args)
        x = denoised + (x - denoised) / sigmas[i] * sigmas[i + 1]
    return x


def test_two_calls_per_step_count_as_one_step(tiny, case, nodes):  # noqa: F811
    transformer, model = tiny
    sampler = comfy("comfy.samplers").KSAMPLER(_two_calls_per_step)
    cached = host_room().with_teacache(model, 0.3)
    runs, handle = block_runs(transformer)
    try:
        sampler_custom_advanced(cached, case, sampler, official_sigmas(nodes, model, STEPS))
    finally:
        handle.remove()
    report = host_room().teacache_report(cached)
    assert report.skipped + report.evaluations == STEPS and report.skipped_steps == [1, 2, 3, 4]
    assert len(runs) == 2 * report.evaluations  # both calls of a computed step ran, none of a skipped one


def test_a_run_keeps_nothing_and_calls_outside_a_run_compute(tiny, case, nodes):  # noqa: F811
    transformer, model = tiny
    cached = host_room().with_teacache(model, 0.3)
    patch = cached.model_options["transformer_options"]["ingredients_teacache"]
    custom_advanced(cached, case, nodes)
    assert patch._run is None and patch.last._residuals == {} and patch.last._previous is None
    first = patch.last
    custom_advanced(cached, case, nodes)
    second = patch.last
    assert second is not first and second.skipped_steps == first.skipped_steps == [1, 2, 3, 4]  # a fresh cache
    x, t = torch.randn(2, 16, 3, 8, 12), torch.full((2,), 5.0)
    runs, handle = block_runs(transformer)
    try:
        for _ in range(3):  # no OUTER_SAMPLE bounds: every call computes and nothing is kept
            cached.model.apply_model(x, t, c_concat=torch.zeros_like(x),
                                     c_crossattn=case["positive_embeds"].expand(2, -1, -1),
                                     transformer_options=cached.model_options["transformer_options"])
    finally:
        handle.remove()
    assert len(runs) == 3 and patch._run is None and patch.last is second


def test_without_a_schedule_every_step_is_computed_and_named_once(tiny, case, nodes, caplog,  # noqa: F811
                                                                  monkeypatch):
    transformer, model = tiny
    cached = host_room().with_teacache(model, 0.3)
    guider = comfy("comfy.samplers").CFGGuider
    monkeypatch.setattr(guider, "inner_sample", _drop_schedule(guider.inner_sample))
    runs, handle = block_runs(transformer)
    try:
        with caplog.at_level(logging.WARNING):
            custom_advanced(cached, case, nodes)
    finally:
        handle.remove()
    assert len(runs) == STEPS  # every step computed (cond and uncond in one call)
    assert caplog.text.count("gave no schedule") == 1


def _drop_schedule(inner_sample):
    """CFGGuider.inner_sample whose sampler sees no ``sample_sigmas`` (as a sampler outside CFGGuider)."""

    def drop(executor, model_wrap, sigmas, extra_args, *rest, **kwargs):
        extra_args["model_options"]["transformer_options"].pop("sample_sigmas", None)
        return executor(model_wrap, sigmas, extra_args, *rest, **kwargs)

    def wrapped(self, *args, **kwargs):
        patcher_extension = comfy("comfy.patcher_extension")
        patcher_extension.add_wrapper_with_key(patcher_extension.WrappersMP.SAMPLER_SAMPLE, "drop", drop,
                                               self.model_options, is_model_options=True)
        return inner_sample(self, *args, **kwargs)

    return wrapped


def test_node_schema_and_registration(nodes):  # noqa: F811
    schema = nodes["IngredientsTeaCache"].GET_SCHEMA()
    assert [i.id for i in schema.inputs] == ["model", "threshold"] and all(i.tooltip for i in schema.inputs)
    assert [o.io_type for o in schema.outputs] == ["MODEL"]
    threshold = schema.inputs[1]
    assert threshold.min == 0.0 and "0 = off" in threshold.tooltip and "0.10-0.20" in threshold.tooltip


# -- golden weights ------------------------------------------------------------------------------------
def test_golden_variant_with_two_ids_skips_the_pack_sampler_steps(nodes, golden_dir):  # noqa: F811
    """Golden weights (time embedding scaled by 0.003: rel-L1 0.05 per step), the golden image latent,
    prompts and two people's faces (the noise from the seed, the same for both paths), the stochastic
    DPM over 6 steps at 0.3: the MODEL path skips the pack sampler's steps and gives its latents."""
    from comfyui_ingredients_under_test.ingredients_core.weights.checkpoint import load_transformer
    from comfyui_ingredients_under_test.ingredients_core.testing.parity import write_golden_checkpoint
    from safetensors.torch import load_file

    host = harness.pack_module("nodes.host")
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_golden_checkpoint(golden_dir, Path(tmp))
        plain = load_transformer(folder, dtype=torch.float32, device="cpu",
                                 **host.transformer_layers(torch.float32, torch.float32))
    transformer, model = variant(plain, 3e-3)
    inputs = load_file(str(golden_dir / "inputs.safetensors"))
    tokens, routed = golden_ids.routed_golden_ids(transformer, inputs, folder)
    patched = nodes["IngredientsApplyIDs"].execute(model=model, routed_ids=routed).args[0]
    image = inputs["image_latents"]
    raw = image.transpose(1, 2) / SCALE
    golden = dict(image=image, positive_embeds=inputs["prompt_embeds"],
                  negative_embeds=inputs["negative_prompt_embeds"],
                  positive=[[inputs["prompt_embeds"], {"concat_latent_image": raw}]],
                  negative=[[inputs["negative_prompt_embeds"], {"concat_latent_image": raw}]],
                  latent=torch.zeros_like(raw),
                  scheduler_config=json.loads((golden_dir / "scheduler_config.json").read_text()))
    want, cache = pack_run(transformer, golden, "dpm", 0.3, tokens=tokens, routing=routed.routing)
    ours, report = custom_advanced(patched, golden, nodes, "dpm", 0.3)
    assert cache.skipped_steps == report.skipped_steps == [1, 2, 4]
    logger.info("golden variant: skipped steps %s, MODEL path vs pack sampler %.3g", report.skipped_steps,
                relative(ours, want))
    assert relative(ours, want) <= TOLERANCE
