"""Sampling the native MODEL with ComfyUI's sampling (issue 15, tests b, c and dynamic CFG) on the
stand-ins and the tiny model: SamplerCustomAdvanced (CFGGuider + the pack's SAMPLER + sigmas) equals
the pack's sampler within 1e-5, KSampler euler/simple equals the pack's DDIM within 5e-4, dynamic CFG
equals the pack's; the SAMPLER, SIGMAS and MODEL nodes; ComfyUI's batching of cond and uncond."""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

import pytest
import torch

from tests.support import golden_ids, harness  # noqa: E402


SCALE = 0.7  # the latent format's scale factor: LATENT / concat_latent_image are raw VAE latents
SEED = 123


@pytest.fixture(scope="module")
def case(loaded):
    """Text, the scaled image latent (pack layout) and ComfyUI's conditioning and empty LATENT."""
    config = loaded["payload"].transformer.config
    g = torch.Generator().manual_seed(9)
    frames, h, w = 3, config.sample_height, config.sample_width
    image = torch.randn(1, frames, 16, h, w, generator=g)           # scaled, (B, F, C, h, w)
    text = torch.randn(2, 226, config.text_embed_dim, generator=g)
    raw = image.transpose(1, 2) / SCALE                              # LATENT-style raw latent (B, C, F, h, w)
    positive = [[text[1:], {"concat_latent_image": raw}]]
    negative = [[text[:1], {"concat_latent_image": raw}]]
    latent = torch.zeros(1, 16, frames, h, w)
    return dict(image=image, positive_embeds=text[1:], negative_embeds=text[:1], positive=positive,
                negative=negative, latent=latent)


def comfy(name: str):
    """A ComfyUI module (the stand-in while the pack is loaded on them)."""
    return importlib.import_module(name)


def sampler_custom_advanced(model, case, sampler, sigmas, cfg=6.0, seed=SEED):
    """SamplerCustomAdvanced with CFGGuider and RandomNoise, as the core nodes run them."""
    guider = comfy("comfy.samplers").CFGGuider(model)
    guider.set_conds(case["positive"], case["negative"])
    guider.set_cfg(cfg)
    noise = comfy("comfy.sample").prepare_noise(case["latent"], seed)
    return guider.sample(noise, case["latent"], sampler, sigmas, seed=seed)


def ksampler(model, case, steps, cfg=6.0, seed=SEED, sampler_name="euler", scheduler="simple"):
    """KSampler (core nodes' common_ksampler)."""
    noise = comfy("comfy.sample").prepare_noise(case["latent"], seed)
    return comfy("comfy.sample").sample(model, noise, steps, cfg, sampler_name, scheduler, case["positive"],
                                        case["negative"], case["latent"], seed=seed)


def pack_run(loaded, case, scheduler, steps, cfg=6.0, seed=SEED, dynamic_cfg=False, routed=None):
    """The pack's sampler with the same initial noise, image latent, embeddings and generator seed."""
    from comfyui_ingredients_under_test.ingredients_core.sampling.official import denoise, make_scheduler

    payload = loaded["payload"]
    noise = comfy("comfy.sample").prepare_noise(case["latent"], seed).transpose(1, 2)
    tokens = routing = None
    if routed is not None:
        tokens, routing = routed.tokens.tokens, routed.routing_for(payload.routing_mode)
    latents = denoise(payload.transformer, make_scheduler(scheduler, payload.scheduler_config), noise, case["image"],
                      case["positive_embeds"], case["negative_embeds"], tokens, steps=steps, cfg=cfg,
                      dynamic_cfg=dynamic_cfg, generator=torch.Generator().manual_seed(seed), routing=routing)
    return latents.transpose(1, 2) / SCALE    # as ComfyUI's LATENT (process_latent_out)


def relative(a, b) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def official(nodes, scheduler):
    return nodes["IngredientsOfficialSampler"].execute(scheduler=scheduler).args[0]


def official_sigmas(nodes, model, steps):
    return nodes["IngredientsScheduler"].execute(model=model, steps=steps).args[0]


def _routed(payload, people: int, mode: str):
    payloads = harness.pack_module("nodes.payloads")
    config = payload.transformer.config
    g = torch.Generator().manual_seed(people)
    tokens = torch.randn(people, config.ids.num_tokens, config.ids.token_dim, generator=g)
    id_tokens = payloads.IngredientsIDTokens(tokens, payloads.IngredientsIDs(tuple(range(people))), payload.folder)
    return harness.pack_module("nodes.ids").RouteIDs.execute(id_tokens=id_tokens, routing_mode=mode,
                                                             strength=1.0).args[0]


# -- (b) SamplerCustomAdvanced with the pack's DDIM / DPM ------------------------------------------
@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
@pytest.mark.parametrize("steps", [4, 3])
def test_sampler_custom_advanced_equals_the_pack_sampler(nodes, loaded, case, scheduler, steps):
    model = loaded["model"]
    ours = sampler_custom_advanced(model, case, official(nodes, scheduler), official_sigmas(nodes, model, steps))
    assert relative(ours, pack_run(loaded, case, scheduler, steps)) <= 1e-5


def test_sampler_custom_advanced_with_ids_equals_the_pack_sampler(nodes, loaded, case):
    payload, model = loaded["payload"], loaded["model"]
    routed = _routed(payload, 2, "official")
    patched = nodes["IngredientsApplyIDs"].execute(model=model, routed_ids=routed).args[0]
    ours = sampler_custom_advanced(patched, case, official(nodes, "dpm"), official_sigmas(nodes, model, 3))
    want = pack_run(loaded, case, "dpm", 3, routed=routed)
    assert relative(ours, want) <= 1e-5
    assert relative(pack_run(loaded, case, "dpm", 3), want) > 1e-3  # the IDs matter: not a vacuous check


def test_the_dpm_sampler_draws_from_the_noise_seed(nodes, loaded, case):
    model, sampler = loaded["model"], official(nodes, "dpm")
    sigmas = official_sigmas(nodes, model, 3)
    a = sampler_custom_advanced(model, case, sampler, sigmas, seed=1)
    b = sampler_custom_advanced(model, case, sampler, sigmas, seed=1)
    assert torch.equal(a, b)
    noise = comfy("comfy.sample").prepare_noise(case["latent"], 1)
    guider = comfy("comfy.samplers").CFGGuider(model)
    guider.set_conds(case["positive"], case["negative"])
    guider.set_cfg(6.0)
    other_draws = guider.sample(noise, case["latent"], sampler, sigmas, seed=2)  # same noise, other seed
    assert relative(other_draws, a) > 1e-3


def test_simple_gives_the_official_timesteps_when_the_steps_divide_1000(loaded, nodes):
    model = loaded["model"]
    sampling = model.model.model_sampling
    simple = comfy("comfy.samplers").calculate_sigmas
    for steps in (50, 25, 4):
        assert torch.equal(simple(sampling, "simple", steps), official_sigmas(nodes, model, steps))
    ours, theirs = official_sigmas(nodes, model, 30), simple(sampling, "simple", 30)
    assert sampling.timestep(ours[2:3]).item() == 932 and sampling.timestep(theirs[2:3]).item() == 933


def test_sigmas_off_the_discrete_schedule_are_refused(nodes, loaded, case):
    model = loaded["model"]
    sigmas = official_sigmas(nodes, model, 3)
    sigmas[1] *= 1.01
    with pytest.raises(ValueError, match="not one of the model's 1000 discrete noise levels"):
        sampler_custom_advanced(model, case, official(nodes, "ddim"), sigmas)


def test_callback_reports_every_step(nodes, loaded, case):
    model = loaded["model"]
    seen = []
    guider = comfy("comfy.samplers").CFGGuider(model)
    guider.set_conds(case["positive"], case["negative"])
    guider.set_cfg(6.0)
    noise = comfy("comfy.sample").prepare_noise(case["latent"], SEED)
    guider.sample(noise, case["latent"], official(nodes, "dpm"), official_sigmas(nodes, model, 3),
                  callback=lambda i, x0, x, total: seen.append((i, total, x0.shape, bool(torch.isfinite(x0).all()))),
                  seed=SEED)
    assert seen == [(i, 3, case["latent"].shape, True) for i in range(3)]


# -- (c) KSampler euler / simple is the pack's DDIM -------------------------------------------------
@pytest.mark.parametrize("steps", [4, 10])
def test_ksampler_euler_simple_equals_the_pack_ddim(loaded, case, steps):
    ours = ksampler(loaded["model"], case, steps)
    assert relative(ours, pack_run(loaded, case, "ddim", steps)) <= 5e-4


# -- dynamic CFG -----------------------------------------------------------------------------------
def test_dynamic_cfg_equals_the_pack_dynamic_cfg(nodes, loaded, case):
    model = nodes["IngredientsDynamicCFG"].execute(model=loaded["model"]).args[0]
    assert "sampler_post_cfg_function" not in loaded["model"].model_options  # the input MODEL is untouched
    want = pack_run(loaded, case, "ddim", 4, dynamic_cfg=True)
    ours = sampler_custom_advanced(model, case, official(nodes, "ddim"), official_sigmas(nodes, model, 4))
    assert relative(ours, want) <= 1e-5
    assert relative(ksampler(model, case, 4), want) <= 5e-4
    assert relative(pack_run(loaded, case, "ddim", 4), want) > 1e-3  # dynamic CFG changes the result


def test_dynamic_cfg_leaves_cfg_1_unguided(nodes, loaded, case):
    model = nodes["IngredientsDynamicCFG"].execute(model=loaded["model"]).args[0]
    sigmas = official_sigmas(nodes, model, 2)
    plain = sampler_custom_advanced(loaded["model"], case, official(nodes, "ddim"), sigmas, cfg=1.0)
    assert torch.equal(sampler_custom_advanced(model, case, official(nodes, "ddim"), sigmas, cfg=1.0), plain)


# -- ComfyUI's batching (the stand-in) and the node schemas -----------------------------------------
def test_cond_and_uncond_split_under_low_memory_give_the_batched_result(nodes, loaded, case, monkeypatch):
    model = loaded["model"]
    sampler, sigmas = official(nodes, "ddim"), official_sigmas(nodes, model, 2)
    calls = []
    original = type(model.model).apply_model

    def recording(self, x, t, **kwargs):
        calls.append(list(kwargs["transformer_options"]["cond_or_uncond"]))
        return original(self, x, t, **kwargs)

    monkeypatch.setattr(type(model.model), "apply_model", recording)
    batched = sampler_custom_advanced(model, case, sampler, sigmas)
    assert calls == [[1, 0]] * 2  # one call per step, rows [uncond, cond]
    calls.clear()
    monkeypatch.setattr(type(model.model), "memory_required", lambda self, shape, cond_shapes={}: 1e30)
    split = sampler_custom_advanced(model, case, sampler, sigmas)
    assert calls == [[1], [0]] * 2  # uncond first, then cond
    assert relative(split, batched) <= 1e-5


@pytest.mark.parametrize("mode", ["official", "per_sample"])
def test_a_split_run_in_official_routing_is_named_in_the_log(nodes, loaded, case, monkeypatch, caplog, mode):
    """Split cond/uncond calls route the cond half on itself in official mode: the run says so once."""
    patched = nodes["IngredientsApplyIDs"].execute(model=loaded["model"],
                                                   routed_ids=_routed(loaded["payload"], 2, mode)).args[0]
    sampler, sigmas = official(nodes, "ddim"), official_sigmas(nodes, patched, 2)
    with caplog.at_level(logging.WARNING):
        sampler_custom_advanced(patched, case, sampler, sigmas)
    assert "separate calls" not in caplog.text  # batched: nothing to say
    monkeypatch.setattr(type(patched.model), "memory_required", lambda self, shape, cond_shapes={}: 1e30)
    with caplog.at_level(logging.WARNING):
        sampler_custom_advanced(patched, case, sampler, sigmas)
    named = caplog.text.count("ran the cond and uncond halves as separate calls")
    assert named == (1 if mode == "official" else 0)  # once per run; per_sample is exact when split


def test_node_schemas(nodes):
    for node_id, output in (("IngredientsOfficialSampler", "SAMPLER"), ("IngredientsScheduler", "SIGMAS"),
                            ("IngredientsDynamicCFG", "MODEL")):
        schema = nodes[node_id].GET_SCHEMA()
        assert [o.io_type for o in schema.outputs] == [output]
        assert all(i.tooltip for i in schema.inputs)
    with pytest.raises(ValueError, match="dpm, ddim"):
        nodes["IngredientsOfficialSampler"].execute(scheduler="euler")


# -- (e) a step cache with Apply IDs -----------------------------------------------------------------
class StepCacheStandIn:
    """A stand-in for comfy_extras' EasyCache *mechanics*, not its heuristic (the real EasyCache and
    LazyCache run in test_comfyui_real): registered as EasyCache registers (a clone with its state in
    ``transformer_options["easycache"]`` and OUTER_SAMPLE, CALC_COND_BATCH and DIFFUSION_MODEL wrappers
    under the key "easycache"); its DIFFUSION_MODEL wrapper reads x as ``args[0][:, :16]`` and the
    options as ``args[-1]``, and on a skipped step returns x plus the (output - x) cached per uuid at the
    last computed step without calling the model, as EasyCache's ``apply_cache_diff`` does. It skips
    every second step after the first."""

    def __init__(self):
        self.step = -1
        self.diffs = {}
        self.skipped = 0

    @staticmethod
    def apply(model):
        patcher_extension = comfy("comfy.patcher_extension")
        cached = model.clone()
        cached.model_options["transformer_options"]["easycache"] = StepCacheStandIn()
        cached.add_wrapper_with_key(patcher_extension.WrappersMP.OUTER_SAMPLE, "easycache", StepCacheStandIn.outer)
        cached.add_wrapper_with_key(patcher_extension.WrappersMP.CALC_COND_BATCH, "easycache", StepCacheStandIn.step_start)
        cached.add_wrapper_with_key(patcher_extension.WrappersMP.DIFFUSION_MODEL, "easycache", StepCacheStandIn.forward)
        return cached

    @staticmethod
    def outer(executor, *args, **kwargs):
        executor.class_obj.model_options["transformer_options"]["easycache"].__init__()  # fresh per run
        return executor(*args, **kwargs)

    @staticmethod
    def step_start(executor, *args, **kwargs):
        args[-1]["transformer_options"]["easycache"].step += 1
        return executor(*args, **kwargs)

    @staticmethod
    def forward(executor, *args, **kwargs):
        options = args[-1]
        cache, x, key = options["easycache"], args[0][:, :16], tuple(options["uuids"])
        if cache.step % 2 == 1 and key in cache.diffs:
            cache.skipped += 1
            return x + cache.diffs[key]
        out = executor(*args, **kwargs)
        cache.diffs[key] = out - x
        return out


def test_step_cache_with_ids_skips_steps_and_applies_ids_at_every_computed_step(nodes, loaded, case):
    payload, model = loaded["payload"], loaded["model"]
    with_ids = nodes["IngredientsApplyIDs"].execute(model=model, routed_ids=_routed(payload, 2, "official")).args[0]
    calls = []

    def count(executor, *args, **kwargs):
        calls.append("ingredients_ids" in args[-1])
        return executor(*args, **kwargs)

    results = []
    for base in (with_ids, model):
        cached = StepCacheStandIn.apply(base)
        cached.add_wrapper_with_key(comfy("comfy.patcher_extension").WrappersMP.DIFFUSION_MODEL, "count", count)
        calls.clear()
        results.append((ksampler(cached, case, 6), list(calls)))
    (ours, seen), (plain, _) = results
    assert seen == [True] * 3  # steps 0, 2, 4 computed (cond + uncond in one call), each with the IDs
    assert torch.isfinite(ours).all() and relative(plain, ours) > 1e-3
    uncached = ksampler(with_ids, case, 6)
    assert relative(ours, uncached) > 1e-6  # the skipped steps changed the run: the cache acted


# -- (b) on the golden weights ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def golden(nodes, golden_dir):
    """The golden transformer as the loader's MODEL, the golden inputs and the two golden people routed."""
    import tempfile

    from comfyui_ingredients_under_test.ingredients_core.weights.checkpoint import load_transformer
    from comfyui_ingredients_under_test.ingredients_core.testing.parity import write_golden_checkpoint
    from safetensors.torch import load_file

    host = harness.pack_module("nodes.host")
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_golden_checkpoint(golden_dir, Path(tmp))
        transformer = load_transformer(folder, dtype=torch.float32, device="cpu",
                                       **host.transformer_layers(torch.float32, torch.float32))
    model = harness.pack_module("nodes.host").model_patcher(transformer, torch.float32, torch.float32,
                                                                    "official", folder)
    inputs = load_file(str(golden_dir / "inputs.safetensors"))
    tokens, routed = golden_ids.routed_golden_ids(transformer, inputs, folder)
    case = json.loads((golden_dir / "case.json").read_text())
    scheduler_config = json.loads((golden_dir / "scheduler_config.json").read_text())
    return dict(transformer=transformer, model=model, inputs=inputs, tokens=tokens, routed=routed, case=case,
                scheduler_config=scheduler_config, outputs=load_file(str(golden_dir / "outputs.safetensors")))


def _golden_cli(golden, scheduler, steps, seed):
    """The CLI's loop (``sampling.denoise``) on the golden inputs: raw latents as ComfyUI's LATENT."""
    from comfyui_ingredients_under_test.ingredients_core.sampling.official import denoise, make_scheduler

    inputs = golden["inputs"]
    # the image latent as the MODEL reads its conditioning (raw VAE units scaled back by the latent format)
    image = (inputs["image_latents"].transpose(1, 2) / SCALE * SCALE).transpose(1, 2)
    latents = denoise(golden["transformer"], make_scheduler(scheduler, golden["scheduler_config"]), inputs["latents"],
                      image, inputs["prompt_embeds"], inputs["negative_prompt_embeds"],
                      golden["tokens"], steps=steps, cfg=6.0, generator=torch.Generator().manual_seed(seed),
                      routing=golden["routed"].routing)
    return latents.transpose(1, 2) / SCALE


def _golden_sampler_custom_advanced(nodes, golden, scheduler, steps, seed):
    """SamplerCustomAdvanced: CFGGuider on Apply IDs' MODEL, the official SAMPLER and sigmas."""
    inputs = golden["inputs"]
    patched = nodes["IngredientsApplyIDs"].execute(model=golden["model"], routed_ids=golden["routed"]).args[0]
    raw = inputs["image_latents"].transpose(1, 2) / SCALE
    guider = comfy("comfy.samplers").CFGGuider(patched)
    guider.set_conds([[inputs["prompt_embeds"], {"concat_latent_image": raw}]],
                     [[inputs["negative_prompt_embeds"], {"concat_latent_image": raw}]])
    guider.set_cfg(6.0)
    return guider.sample(inputs["latents"].transpose(1, 2).contiguous(), torch.zeros_like(raw),
                         official(nodes, scheduler), official_sigmas(nodes, golden["model"], steps), seed=seed)


def _golden_ingredients_sampler(golden, scheduler, steps, seed):
    """The Ingredients Sampler's sampling (``nodes.sampling.sample_from``) from the golden start."""
    sampling = harness.pack_module("nodes.sampling")
    inputs = golden["inputs"]
    settings = sampling.video_settings(height=golden["case"]["height_px"], width=golden["case"]["width_px"],
                                       frames=golden["case"]["num_frames"], steps=steps, cfg=6.0, seed=seed,
                                       scheduler=scheduler, dynamic_cfg=False)
    sampled = sampling.put_ids(golden["model"], golden["routed"])
    latents = sampling.sample_from(sampled, inputs["prompt_embeds"], inputs["negative_prompt_embeds"],
                                   inputs["image_latents"].transpose(1, 2) / SCALE,
                                   inputs["latents"].transpose(1, 2).contiguous(), settings,
                                   torch.Generator().manual_seed(seed))
    return latents / SCALE  # model space -> raw VAE latents, as ComfyUI's LATENT


@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
def test_golden_one_official_loop_serves_the_cli_the_sampler_and_the_sampler_node(nodes, golden, scheduler):
    """Issue 19, item 1: the CLI's loop, the Ingredients Sampler and SamplerCustomAdvanced with the
    official SAMPLER run one loop: on the golden weights and inputs (two people, official routing) they
    are the same computation, bit for bit (the SAMPLER runs the MODEL in the loop's own space: x_t in,
    v out, ComfyUI's guidance on v), and the golden DDIM case is within the golden tolerance (1e-3 of
    max |golden|) of the official code's denoised latents."""
    case = golden["case"]
    steps, seed = case["steps"], case["step_generator_seed"]
    with torch.no_grad():
        cli = _golden_cli(golden, scheduler, steps, seed)
        advanced = _golden_sampler_custom_advanced(nodes, golden, scheduler, steps, seed)
        sampler = _golden_ingredients_sampler(golden, scheduler, steps, seed)
    errors = {"advanced-cli": relative(advanced, cli), "sampler-cli": relative(sampler, cli),
              "sampler-advanced": relative(sampler, advanced)}
    logging.getLogger(__name__).info("one loop, %s: %s", scheduler, errors)
    assert max(errors.values()) == 0.0, errors
    if scheduler == case["scheduler"]:
        want = golden["outputs"]["denoise.latents"].transpose(1, 2) / SCALE
        for ours in (cli, advanced, sampler):
            assert relative(ours, want) <= 1e-3

