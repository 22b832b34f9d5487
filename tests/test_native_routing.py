"""(g) Routing Maps from the native MODEL path equal the pack sampler's, and ComfyUI's hooks fire.

The pack's loop (``ingredients_core.sampling.official.denoise``, DDIM) runs on the tiny model with a
recorder; the native MODEL is then evaluated at the same steps on the same inputs (the latents the
pack's loop had at each step), inside its ``OUTER_SAMPLE`` wrapper as ComfyUI's sampler runs it,
batched and with cond and uncond split into two calls. *Ingredients MODEL Routing* must give the
payload the Ingredients Sampler gives, and Routing Maps must draw it.
"""

from __future__ import annotations

import types

import pytest
import torch

from tests.support import harness  # noqa: E402


STEPS = 3


ROUTING_MODE = "per_sample"  # the loader's routing mode of conftest's ``loaded``


def _routed(payload, mode: str):
    payloads = harness.pack_module("nodes.payloads")
    config = payload.transformer.config
    tokens = torch.randn(2, config.ids.num_tokens, config.ids.token_dim, generator=torch.Generator().manual_seed(3))
    id_tokens = payloads.IngredientsIDTokens(tokens, payloads.IngredientsIDs((0, 1)), payload.folder)
    mask = torch.zeros(64, 96)
    mask[:, :40] = 1.0
    return harness.pack_module("nodes.ids").RouteIDs.execute(
        id_tokens=id_tokens, routing_mode=mode, strength=1.0, mask_1=mask, start_2=0.0, end_2=0.7).args[0]


def _inputs(config):
    g = torch.Generator().manual_seed(5)
    shape = (1, 3, 16, config.sample_height, config.sample_width)  # the pack's layout (B, F, C, H, W)
    return dict(latents=torch.randn(shape, generator=g), image=torch.randn(shape, generator=g),
                positive=torch.randn(1, 226, config.text_embed_dim, generator=g),
                negative=torch.randn(1, 226, config.text_embed_dim, generator=g))


def pack_run(payload, routed, inputs):
    """The pack's loop: (routing payload, the latents at each step's start, the timesteps)."""
    from comfyui_ingredients_under_test.ingredients_core.routing.plan import RoutingRecorder
    from comfyui_ingredients_under_test.ingredients_core.sampling.official import denoise, make_scheduler

    sampling = harness.pack_module("nodes.sampling")
    scheduler = make_scheduler("ddim", payload.scheduler_config)
    recorder, starts = RoutingRecorder(), [inputs["latents"]]
    denoise(payload.transformer, scheduler, inputs["latents"], inputs["image"], inputs["positive"], inputs["negative"],
            routed.tokens.tokens, steps=STEPS, cfg=6.0, routing=routed.routing_for(payload.routing_mode), recorder=recorder,
            callback=lambda info: starts.append(info.latents))
    return sampling.routing_payload(recorder, 64, 96, 9), starts[:STEPS], [int(t) for t in scheduler.timesteps]


def native_run(nodes, model, routed, inputs, starts, timesteps, split: bool):
    """The MODEL at the same steps, inside its OUTER_SAMPLE wrapper; returns MODEL Routing's payload."""
    import comfy.patcher_extension as pe

    patched = nodes["IngredientsApplyIDs"].execute(model=model, routed_ids=routed).args[0]
    sampling = patched.model.model_sampling
    sigmas = sampling.sigma(torch.tensor([float(t) for t in timesteps]))
    schedule = torch.cat([sigmas, torch.zeros(1)])
    to_comfy = (0, 2, 1, 3, 4)
    image = inputs["image"].permute(*to_comfy)
    text = {1: inputs["negative"], 0: inputs["positive"]}

    def calls(x, sigma, chunks):
        options = patched.model_options["transformer_options"] | dict(sample_sigmas=schedule)
        rows = [chunks] if not split else [[c] for c in chunks]
        for part in rows:
            patched.model.apply_model(x[:len(part)], sigma.expand(len(part)), c_concat=image.expand(len(part), -1,
                                      -1, -1, -1), c_crossattn=torch.cat([text[c] for c in part]),
                                      transformer_options=options | dict(cond_or_uncond=part))

    def sample():
        with torch.no_grad():
            for step, start in enumerate(starts):
                sigma = sigmas[step:step + 1]
                x = start.permute(*to_comfy) * (sigma ** 2 + 1).sqrt()  # the sampler's x for this x_t
                calls(torch.cat([x, x]), sigma, [1, 0])

    guider = types.SimpleNamespace(model_options=patched.model_options)
    wrappers = pe.get_all_wrappers(pe.WrappersMP.OUTER_SAMPLE, {"wrappers": patched.wrappers})
    pe.WrapperExecutor.new_class_executor(sample, guider, wrappers).execute()
    assert harness.pack_module("nodes.host").ids_patch(patched)._run is None  # dropped after the run
    return nodes["IngredientsModelRouting"].execute(model=patched, samples={"samples": starts[-1]}).args[0]


def _same(native, pack) -> None:
    assert native.layers == pack.layers and len(pack.layers) == 2
    assert (native.height, native.width, native.frames) == (pack.height, pack.width, pack.frames)
    for ours, want in zip(native.last + native.mean, pack.last + pack.mean):
        assert ours.device.type == "cpu" and ours.shape == want.shape
        torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("split", [False, True], ids=["batched", "split"])
@pytest.mark.parametrize("mode", ["official", "per_sample"])
def test_routing_maps_from_the_native_path_equal_the_pack_samplers(nodes, loaded, mode, split):
    payload, model = loaded["payload"], loaded["model"]
    routed = _routed(payload, mode)
    inputs = _inputs(payload.transformer.config)
    pack, starts, timesteps = pack_run(payload, routed, inputs)
    native = native_run(nodes, model, routed, inputs, starts, timesteps, split)
    _same(native, pack)
    maps = nodes["IngredientsRoutingMaps"].execute(routing=native, steps="mean", layer=-1, opacity=0.5).args[0]
    want = nodes["IngredientsRoutingMaps"].execute(routing=pack, steps="mean", layer=-1, opacity=0.5).args[0]
    assert maps.shape == (9, 64, 96, 3)
    torch.testing.assert_close(maps, want, rtol=1e-4, atol=1e-4)


def test_model_routing_before_any_run_names_the_fix(nodes, loaded):
    payload, model = loaded["payload"], loaded["model"]
    patched = nodes["IngredientsApplyIDs"].execute(model=model, routed_ids=_routed(payload, "official")).args[0]
    with pytest.raises(ValueError, match="no routing was recorded with this MODEL yet"):
        nodes["IngredientsModelRouting"].execute(model=patched, samples={})
    with pytest.raises(ValueError, match="carries no IDs.*Apply IDs"):
        nodes["IngredientsModelRouting"].execute(model=model, samples={})


def test_apply_model_and_diffusion_model_wrappers_fire(nodes, loaded):
    """ComfyUI's APPLY_MODEL and DIFFUSION_MODEL wrappers (EasyCache uses the latter) run around the
    MODEL; the DIFFUSION_MODEL wrapper sees ComfyUI's layout: x (B, 32, F, H, W) in, (B, 16, F, H, W) out,
    transformer_options last."""
    import comfy.patcher_extension as pe

    model = loaded["model"]
    seen = []

    def outer(executor, *args, **kwargs):
        seen.append("apply_model")
        return executor(*args, **kwargs)

    def inner(executor, x, t, context, control, transformer_options):
        out = executor(x, t, context, control, transformer_options)
        seen.append((tuple(x.shape), tuple(out.shape), isinstance(transformer_options, dict)))
        return out * 0  # a skipping cache: its output is what the model returns

    options = {}
    pe.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "test", outer, options)
    pe.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test", inner, options)
    x = torch.randn(2, 16, 3, 8, 12)
    sigma = model.model.model_sampling.sigma(torch.tensor([500.0, 500.0]))
    with torch.no_grad():
        out = model.model.apply_model(x, sigma, c_concat=torch.zeros_like(x), c_crossattn=torch.zeros(2, 226, 32),
                                      transformer_options=options)
    assert seen == ["apply_model", ((2, 32, 3, 8, 12), (2, 16, 3, 8, 12), True)]
    torch.testing.assert_close(out, model.model.model_sampling.calculate_denoised(sigma, torch.zeros_like(x), x))
