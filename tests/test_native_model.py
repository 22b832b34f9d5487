"""The native ComfyUI MODEL (issue 15, tests a, f, g) on the stand-ins and the tiny model.

(a) one ``apply_model`` of the MODEL with IDs gives the x0 the pack's transformer's v-prediction
gives (x0 = sqrt(alpha) x_t - sqrt(1 - alpha) v with diffusers' CogVideoX alphas) within 1e-5
relative: both routing modes, masks soft and hard, step ranges, 1 to 4 people; golden weights for
two people. (f) split cond/uncond calls equal the batched call (per_sample; official: defined).
The schedule equals diffusers' CogVideoX alphas; Apply IDs twice replaces with a warning; the
MODEL keeps nothing outside its parameters and buffers and runs on the fake GPU.
"""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch

from tests.support import fake_gpu  # noqa: E402
from tests.support import harness  # noqa: E402


TOLERANCE = 1e-5
UNCOND_COND = [1, 0]  # ComfyUI's row order with both CFG halves in one call


def _alphas(payload) -> torch.Tensor:
    from diffusers import CogVideoXDDIMScheduler

    config = {k: v for k, v in payload.scheduler_config.items() if not k.startswith("_")}
    return CogVideoXDDIMScheduler.from_config(config).alphas_cumprod.double()


def _routed(payload, people: int, seed: int = 0, **route):
    """INGREDIENTS_ROUTED_IDS for ``people`` random ID tokens (Route IDs' node, the pack's payloads)."""
    payloads = harness.pack_module("nodes.payloads")
    config = payload.transformer.config
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(people, config.ids.num_tokens, config.ids.token_dim, generator=g)
    ids = payloads.IngredientsIDs(tuple(range(people)))
    id_tokens = payloads.IngredientsIDTokens(tokens, ids, payload.folder)
    node = harness.pack_module("nodes.ids").RouteIDs
    defaults = dict(routing_mode="from model", strength=1.0)
    return node.execute(id_tokens=id_tokens, **(defaults | route)).args[0]


def _inputs(config, batch: int = 2, seed: int = 1, frames: int = 3):
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(batch, 16, frames, config.sample_height, config.sample_width, generator=g)
    image = torch.randn(batch, 16, frames, config.sample_height, config.sample_width, generator=g)
    text = torch.randn(batch, 226, config.text_embed_dim, generator=g)
    return x_t, image, text


def native_x0(model, x_t, image, text, t: int, **options):
    """The MODEL's denoised x0 for a sampler x whose scaled input is x_t (ComfyUI layout)."""
    sampling = model.model.model_sampling
    sigma = sampling.sigma(torch.full((x_t.shape[0],), float(t))).to(x_t.device)  # the sampler's device
    x = x_t * (sigma.view(-1, 1, 1, 1, 1) ** 2 + 1).sqrt()
    with torch.no_grad():
        return model.model.apply_model(x, sigma, c_concat=image, c_crossattn=text,
                                       transformer_options=model.model_options["transformer_options"] | options)


def pack_x0(payload, routed, x_t, image, text, t: int, step=(0, 1), alphas=None, plan_rows=None):
    """x0 from the pack's transformer called as its own sampler calls it (layout (B, F, C, H, W))."""
    from comfyui_ingredients_under_test.ingredients_core.routing.plan import RoutingPlan
    from comfyui_ingredients_under_test.ingredients_core.sampling.official import rotary_embeddings

    transformer = payload.transformer
    config = transformer.config
    hidden = torch.cat([x_t, image], dim=1).permute(0, 2, 1, 3, 4)
    frames, height, width = hidden.shape[1], hidden.shape[3], hidden.shape[4]
    rows = slice(None) if plan_rows is None else plan_rows
    with torch.no_grad():
        ids = routing = None
        if routed is not None:
            ids = transformer.prepare_ids(routed.tokens.tokens, torch.device("cpu"), torch.float32)
            options = routed.routing_for(payload.routing_mode)
            grid = (frames, height // config.patch_size, width // config.patch_size)
            routing = RoutingPlan(options, ids.num_ids, grid, config.local_face_scale, torch.device("cpu")).step(*step)
        rotary = rotary_embeddings(config, height * 8, width * 8, frames, torch.device("cpu"))
        v = transformer(hidden[rows], text[rows], torch.full((hidden[rows].shape[0],), float(t)), rotary, ids=ids,
                        routing=routing).permute(0, 2, 1, 3, 4).double()
    a = (alphas if alphas is not None else _alphas(payload))[t]
    if t == 999:  # ComfyUI keeps a terminal alpha of 4.9e-8 where diffusers has 0 (see the schedule test)
        a = torch.tensor(4.8973451890853435e-08, dtype=torch.float64)
    return (a.sqrt() * x_t[rows].double() - (1 - a).sqrt() * v).float()


def _apply(nodes, model, routed):
    return nodes["IngredientsApplyIDs"].execute(model=model, routed_ids=routed).args[0]


def relative(a, b) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def _mask(frames: int, side: str) -> torch.Tensor:
    mask = torch.zeros(frames, 64, 96)
    if side == "left":
        mask[..., :48] = 1.0
    else:
        mask[..., 48:] = 1.0
    return mask[:1] if frames == 1 else mask


# -- (a) one forward equals the pack's transformer --------------------------------------------------
@pytest.mark.parametrize("people", [1, 2, 3, 4])
@pytest.mark.parametrize("mode", ["official", "per_sample"])
def test_one_forward_with_ids_equals_the_pack_transformer(nodes, loaded, people, mode):
    payload, model = loaded["payload"], loaded["model"]
    routed = _routed(payload, people, seed=people, routing_mode=mode)
    patched = _apply(nodes, model, routed)
    x_t, image, text = _inputs(payload.transformer.config)
    ours = native_x0(patched, x_t, image, text, 500, cond_or_uncond=UNCOND_COND)
    want = pack_x0(payload, routed, x_t, image, text, 500)
    assert relative(ours, want) <= TOLERANCE
    without = pack_x0(payload, None, x_t, image, text, 500)
    assert relative(without, want) > 1e-3  # the IDs change the output: the comparison is not vacuous


@pytest.mark.parametrize("mask_mode", ["soft", "hard"])
@pytest.mark.parametrize("mode", ["official", "per_sample"])
def test_masks_route_as_in_the_pack_transformer(nodes, loaded, mask_mode, mode):
    payload, model = loaded["payload"], loaded["model"]
    routed = _routed(payload, 2, routing_mode=mode, mask_mode=mask_mode, mask_strength=5.0,
                     mask_1=_mask(9, "left"), mask_2=_mask(1, "right"))
    patched = _apply(nodes, model, routed)
    x_t, image, text = _inputs(payload.transformer.config, seed=4)
    ours = native_x0(patched, x_t, image, text, 700, cond_or_uncond=UNCOND_COND)
    assert relative(ours, pack_x0(payload, routed, x_t, image, text, 700)) <= TOLERANCE


def _schedule(model, steps: int) -> torch.Tensor:
    """``steps`` + 1 sigmas like ComfyUI's simple scheduler (trailing timesteps, then 0)."""
    sigmas = model.model.model_sampling.sigmas
    picks = [sigmas[-(1 + int(i * len(sigmas) / steps))] for i in range(steps)]
    return torch.stack([*picks, torch.zeros(())])


@pytest.mark.parametrize("step", [0, 1, 2, 3])
def test_step_ranges_follow_the_position_in_sample_sigmas(nodes, loaded, step):
    payload, model = loaded["payload"], loaded["model"]
    routed = _routed(payload, 3, routing_mode="per_sample", start_1=0.0, end_1=0.5, start_2=0.5, end_2=1.0,
                     start_3=0.25, end_3=0.75)
    patched = _apply(nodes, model, routed)
    sample_sigmas = _schedule(model, 4)
    sampling = model.model.model_sampling
    t = int(sampling.timestep(sample_sigmas[step]))
    x_t, image, text = _inputs(payload.transformer.config, seed=5)
    ours = native_x0(patched, x_t, image, text, t, cond_or_uncond=UNCOND_COND, sample_sigmas=sample_sigmas)
    assert relative(ours, pack_x0(payload, routed, x_t, image, text, t, step=(step, 4))) <= TOLERANCE


def test_without_sample_sigmas_the_step_is_the_noise_level(nodes, loaded):
    """Outside a sampler run (no schedule): step = 999 - timestep of 1000, so end_1=0.5 means the
    noisier half of the noise levels."""
    payload, model = loaded["payload"], loaded["model"]
    routed = _routed(payload, 2, routing_mode="per_sample", start_1=0.0, end_1=0.5)
    patched = _apply(nodes, model, routed)
    x_t, image, text = _inputs(payload.transformer.config, seed=6)
    for t in (800, 300):
        ours = native_x0(patched, x_t, image, text, t, cond_or_uncond=UNCOND_COND)
        assert relative(ours, pack_x0(payload, routed, x_t, image, text, t, step=(999 - t, 1000))) <= TOLERANCE


def test_official_mode_routes_with_the_uncond_row_whatever_the_row_order(nodes, loaded):
    payload, model = loaded["payload"], loaded["model"]
    patched = _apply(nodes, model, _routed(payload, 2, routing_mode="official"))
    x_t, image, text = _inputs(payload.transformer.config, seed=7)
    batched = native_x0(patched, x_t, image, text, 400, cond_or_uncond=[1, 0])
    flip = torch.tensor([1, 0])
    swapped = native_x0(patched, x_t[flip], image[flip], text[flip], 400, cond_or_uncond=[0, 1])
    assert relative(swapped[flip], batched) <= TOLERANCE


# -- golden weights -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def golden(nodes, tmp_path_factory, golden_dir):
    from comfyui_ingredients_under_test.ingredients_core.weights.checkpoint import load_transformer
    from comfyui_ingredients_under_test.ingredients_core.testing.parity import write_golden_checkpoint
    from safetensors.torch import load_file

    folder = write_golden_checkpoint(golden_dir, tmp_path_factory.mktemp("golden"))
    native = harness.pack_module("nodes.host")
    host = harness.pack_module("nodes.host")
    transformer = load_transformer(folder, dtype=torch.float32, device="cpu",
                                   **host.transformer_layers(torch.float32, torch.float32))
    model = native.model_patcher(transformer, torch.float32, torch.float32, "official", folder)
    scheduler = json.loads((golden_dir / "scheduler_config.json").read_text())
    payloads = harness.pack_module("nodes.payloads")
    payload = payloads.IngredientsModel(transformer, model, scheduler, "official", folder, None)
    return dict(model=model, payload=payload, inputs=load_file(str(golden_dir / "inputs.safetensors")),
                outputs=load_file(str(golden_dir / "outputs.safetensors")))


def test_golden_two_people_forward_equals_the_pack_and_the_official_output(nodes, golden):
    payloads = harness.pack_module("nodes.payloads")
    inputs, payload = golden["inputs"], golden["payload"]
    faces = [(inputs[f"id{i}.id_cond"], [inputs[f"id{i}.vit_hidden.{k}"] for k in range(5)]) for i in range(2)]
    with torch.no_grad():
        tokens = payload.transformer.project_ids(faces)
    id_tokens = payloads.IngredientsIDTokens(tokens, payloads.IngredientsIDs((0, 1)), payload.folder)
    routed = harness.pack_module("nodes.ids").RouteIDs.execute(id_tokens=id_tokens, routing_mode="from model",
                                                               strength=1.0).args[0]
    patched = _apply(nodes, golden["model"], routed)
    to_comfy = (0, 2, 1, 3, 4)
    x_t = torch.cat([inputs["latents"]] * 2).permute(*to_comfy)
    image = torch.cat([inputs["image_latents"]] * 2).permute(*to_comfy)
    text = torch.cat([inputs["negative_prompt_embeds"], inputs["prompt_embeds"]])
    alphas = _alphas(payload)
    ours = native_x0(patched, x_t, image, text, 500, cond_or_uncond=UNCOND_COND)
    assert relative(ours, pack_x0(payload, routed, x_t, image, text, 500, alphas=alphas)) <= TOLERANCE
    a = alphas[500]
    official = (a.sqrt() * x_t.double() - (1 - a).sqrt() * golden["outputs"]["forward.t500"].permute(*to_comfy))
    assert relative(ours, official.float()) <= 1e-4  # the parity tolerance against the official code


# -- (f) split cond / uncond calls ---------------------------------------------------------------------
def test_split_calls_equal_the_batched_call_in_per_sample_mode(nodes, loaded):
    payload, model = loaded["payload"], loaded["model"]
    patched = _apply(nodes, model, _routed(payload, 2, routing_mode="per_sample",
                                           mask_1=_mask(1, "left"), start_2=0.0, end_2=0.6))
    x_t, image, text = _inputs(payload.transformer.config, seed=8)
    options = dict(sample_sigmas=_schedule(model, 4))
    batched = native_x0(patched, x_t, image, text, 999, cond_or_uncond=UNCOND_COND, **options)
    uncond = native_x0(patched, x_t[:1], image[:1], text[:1], 999, cond_or_uncond=[1], **options)
    cond = native_x0(patched, x_t[1:], image[1:], text[1:], 999, cond_or_uncond=[0], **options)
    assert relative(torch.cat([uncond, cond]), batched) <= 1e-6


def test_split_calls_in_official_mode_route_each_call_on_its_first_row(nodes, loaded):
    """Defined result of official mode when ComfyUI splits the halves: the uncond call is exact, the
    cond call (no uncond row in it) routes on itself, which is per_sample's cond half."""
    payload, model = loaded["payload"], loaded["model"]
    official = _apply(nodes, model, _routed(payload, 2, routing_mode="official"))
    per_sample = _apply(nodes, model, _routed(payload, 2, routing_mode="per_sample"))
    x_t, image, text = _inputs(payload.transformer.config, seed=9)
    batched = native_x0(official, x_t, image, text, 600, cond_or_uncond=UNCOND_COND)
    uncond = native_x0(official, x_t[:1], image[:1], text[:1], 600, cond_or_uncond=[1])
    cond = native_x0(official, x_t[1:], image[1:], text[1:], 600, cond_or_uncond=[0])
    assert relative(uncond, batched[:1]) <= 1e-6
    per_sample_cond = native_x0(per_sample, x_t, image, text, 600, cond_or_uncond=UNCOND_COND)[1:]
    assert relative(cond, per_sample_cond) <= 1e-6
    assert relative(cond, batched[1:]) > 1e-4  # and that differs from the batched official cond half


# -- the schedule, Apply IDs twice, devices ------------------------------------------------------------
def test_model_sampling_is_diffusers_cogvideox_schedule(loaded):
    """ComfyUI's ModelSamplingDiscrete (linear = LDM's scaled-linear betas, zsnr) equals diffusers'
    CogVideoX alphas_cumprod; only the terminal alpha differs (ComfyUI keeps 4.9e-8, diffusers 0).
    The real-ComfyUI test checks that the stand-in's sigmas equal ComfyUI 0.33's."""
    model = loaded["model"]
    sampling = model.model.model_sampling
    alphas = 1.0 / (sampling.sigmas.double() ** 2 + 1.0)
    want = _alphas(loaded["payload"])
    assert float(((alphas[:-1] - want[:-1]).abs() / want[:-1]).max()) < 1e-6
    assert want[-1] == 0 and abs(float(alphas[-1]) - 4.8973451890853435e-08) < 1e-12
    assert model.model.model_type.name == "V_PREDICTION"
    assert int(sampling.timestep(sampling.sigma(torch.tensor([999.0, 500.0, 20.0]))).tolist()[1]) == 500


def test_apply_ids_twice_replaces_with_a_warning(nodes, loaded, caplog):
    payload, model = loaded["payload"], loaded["model"]
    first = _apply(nodes, model, _routed(payload, 2))
    with caplog.at_level(logging.WARNING):
        second = _apply(nodes, first, _routed(payload, 3, seed=3))
    assert "REPLACED" in caplog.text and "2 people" in caplog.text and "3 people" in caplog.text
    native = harness.pack_module("nodes.host")
    assert native.ids_patch(second).num_ids == 3 and native.ids_patch(first).num_ids == 2
    assert native.ids_patch(model) is None  # Apply IDs works on a clone
    assert len(second.get_wrappers("outer_sample", native.WRAPPER_KEY)) == 1
    assert copy.deepcopy(second.model_options)["transformer_options"][native.IDS_KEY] is native.ids_patch(second)
    x_t, image, text = _inputs(payload.transformer.config, seed=10)
    three = _apply(nodes, model, _routed(payload, 3, seed=3))
    assert torch.equal(native_x0(second, x_t, image, text, 300, cond_or_uncond=UNCOND_COND),
                       native_x0(three, x_t, image, text, 300, cond_or_uncond=UNCOND_COND))


def test_loader_model_output_is_the_pack_transformer(loaded):
    payload, model = loaded["payload"], loaded["model"]
    assert model.model.diffusion_model is payload.transformer and payload.patcher is model
    keys = set(model.model.state_dict())
    assert "diffusion_model.transformer_blocks.0.attn1.to_q.weight" in keys
    assert "diffusion_model.local_facial_extractor.latents" in keys or any(
        k.startswith("diffusion_model.local_facial_extractor.") for k in keys)
    assert model.model.latent_format.scale_factor == 0.7 and model.model.latent_format.latent_channels == 16


def test_a_mask_that_does_not_fit_the_video_names_the_node(nodes, loaded):
    payload, model = loaded["payload"], loaded["model"]
    patched = _apply(nodes, model, _routed(payload, 2, mask_1=torch.ones(7, 64, 96)))  # 9 frames fit, 7 do not
    x_t, image, text = _inputs(payload.transformer.config)
    with pytest.raises(ValueError, match="Ingredients Apply IDs: mask of ID 1: 7 mask frames.*Route IDs"):
        native_x0(patched, x_t, image, text, 500, cond_or_uncond=UNCOND_COND)


def test_text_width_mismatch_names_the_fix(loaded):
    model = loaded["model"]
    x_t, image, _ = _inputs(loaded["payload"].transformer.config)
    with pytest.raises(ValueError, match="text conditioning is 4096 wide, the model reads 32.*CLIPTextEncode"):
        native_x0(model, x_t, image, torch.zeros(2, 226, 4096), 500)


def test_text_of_other_lengths_is_refused_or_cut_to_226_tokens(loaded, caplog):
    model = loaded["model"]
    noise = torch.zeros(1, 16, 3, 8, 12)
    canvas = dict(concat_latent_image=torch.zeros(1, 16, 3, 8, 12), device=torch.device("cpu"))
    with pytest.raises(ValueError, match="77 tokens, the model reads 226.*T5TokenizerOptions"):
        model.model.extra_conds(noise=noise, cross_attn=torch.zeros(1, 77, 32), **canvas)
    long = torch.randn(1, 301, 32)
    with caplog.at_level(logging.WARNING):
        conds = model.model.extra_conds(noise=noise, cross_attn=long, **canvas)
    assert torch.equal(conds["c_crossattn"].cond, long[:, :226])
    assert "301 tokens" in caplog.text and "the first 226" in caplog.text


def test_extra_conds_scale_and_repeat_the_image_latent(loaded):
    model = loaded["model"]
    noise = torch.zeros(2, 16, 3, 8, 12)
    image = torch.cat([torch.ones(1, 16, 1, 8, 12), torch.zeros(1, 16, 2, 8, 12)], dim=2)  # as Image to Video
    conds = model.model.extra_conds(noise=noise, concat_latent_image=image, cross_attn=torch.zeros(1, 226, 32),
                                    device=torch.device("cpu"))
    concat = conds["c_concat"].cond
    assert concat.shape == (2, 16, 3, 8, 12)
    assert torch.all(concat[:, :, 0] == 0.7) and torch.all(concat[:, :, 1:] == 0)
    assert conds["c_crossattn"].cond.shape == (1, 226, 32)


def test_the_model_keeps_nothing_outside_parameters_and_works_on_the_fake_gpu(nodes, loaded):
    import comfy.model_management as mm

    payload, model = loaded["payload"], loaded["model"]
    patched = _apply(nodes, model, _routed(payload, 2, routing_mode="per_sample", mask_1=_mask(1, "left")))
    x_t, image, text = _inputs(payload.transformer.config, seed=11)
    on_cpu = native_x0(patched, x_t, image, text, 500, cond_or_uncond=UNCOND_COND)
    with fake_gpu.two_devices():
        native = harness.pack_module("nodes.host")  # a MODEL made while the fake GPU is the device
        gpu_model = native.model_patcher(payload.transformer, torch.float32, torch.float32, "official", payload.folder)
        gpu_patched = _apply(nodes, gpu_model, _routed(payload, 2, routing_mode="per_sample",
                                                       mask_1=_mask(1, "left")))
        with fake_gpu.computing():
            mm.load_models_gpu([gpu_patched])
            device = gpu_patched.load_device
            patch = native.ids_patch(gpu_patched)
            patch.begin_run()
            out = native_x0(gpu_patched, x_t.to(device), image.to(device), text.to(device), 500,
                            cond_or_uncond=UNCOND_COND)
            patch.end_run()
        assert out.device == fake_gpu.DEVICE
        assert relative(out.cpu(), on_cpu) <= TOLERANCE
        assert patch._run is None  # the per-run keys/values are dropped after the run
        assert fake_gpu.left_behind(gpu_patched.model, skip=("device",)) == []


def test_every_pack_patcher_is_comfyuis_core_model_patcher_of_the_moment(nodes, loaded, monkeypatch):
    """ComfyUI 0.33 swaps ``CoreModelPatcher`` for ``ModelPatcherDynamic`` at startup (DynamicVRAM on
    NVIDIA): the pack looks it up when it builds each patcher, for every model; without the name
    (0.3.64) it builds a ``ModelPatcher``."""
    import comfy.model_patcher as mp

    class Swapped(mp.ModelPatcher):
        pass

    monkeypatch.setattr(mp, "CoreModelPatcher", Swapped)
    folder = dict(model_folder="Ingredients")
    payload, model = nodes["IngredientsModelLoader"].execute(**folder, dtype="float32", routing_mode="official").args
    vae, = nodes["IngredientsVAELoader"].execute(**folder, dtype="float32").args
    assert type(model) is Swapped and type(payload.projector) is Swapped and type(vae.patcher) is Swapped
    assert type(_apply(nodes, model, _routed(payload, 1))) is Swapped  # clones keep the class
    monkeypatch.delattr(mp, "CoreModelPatcher")
    assert type(harness.pack_module("nodes.host").manage("vae", vae=vae.vae)) is mp.ModelPatcher


def test_memory_estimate_is_the_packs_and_fp8_weights_compute_in_the_compute_dtype(nodes, loaded):
    from comfyui_ingredients_under_test.ingredients_core.sampling.memory import forward_size, transformer_activation_bytes

    payload, model = loaded["payload"], loaded["model"]
    config = payload.transformer.config
    from comfyui_ingredients_under_test.ingredients_core.sampling.settings import FF_CHUNK

    # the pack sampler's estimate (feed-forward in FF_CHUNK pieces, as both paths run it), four people
    want = transformer_activation_bytes(forward_size(config, 2, 3, 8, 12, 4), 4, FF_CHUNK)
    assert model.model.memory_required([2, 16, 3, 8, 12]) == want > 0
    fp8_payload, fp8 = nodes["IngredientsModelLoader"].execute(model_folder="Ingredients", dtype="float32",
                                                               routing_mode="official",
                                                               weight_dtype="fp8_e4m3fn").args
    assert fp8.model.get_dtype() == torch.float8_e4m3fn and fp8.model.get_dtype_inference() == torch.float32
    x_t, image, text = _inputs(config, seed=12)
    out = native_x0(fp8, x_t, image, text, 500)
    assert relative(out, pack_x0(fp8_payload, None, x_t, image, text, 500)) <= TOLERANCE


def test_the_model_registers_comfyuis_reload_factory_for_non_dynamic_delegates(loaded):
    """ComfyUI 0.33 under DynamicVRAM rebuilds a loader's MODEL as a plain ModelPatcher from
    ``cached_patcher_init`` (hooks, multi-GPU); without it those paths raise a RuntimeError."""
    import comfy.model_patcher

    model = loaded["model"]
    factory, settings = model.cached_patcher_init
    again = factory(*settings, disable_dynamic=True)
    assert type(again) is comfy.model_patcher.ModelPatcher and isinstance(again.model, type(model.model))
    assert again.model is not model.model and again.model.model_config.routing_mode == "official"
    mine, theirs = model.model.state_dict(), again.model.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_under_dynamic_vram_the_q_former_has_one_patcher_the_models(nodes, loaded, monkeypatch):
    """ModelPatcherDynamic keeps per-layer state on the modules it streams: the q-former then gets no
    patcher of its own and Project IDs uses the MODEL's, with the same ID tokens."""
    import comfy.model_patcher as mp

    class Dynamic(mp.ModelPatcher):
        def is_dynamic(self):
            return True

    payloads = harness.pack_module("nodes.payloads")
    ids = payloads.IngredientsIDs(tuple(tiny_faces(loaded["payload"].transformer.config, 2)))
    want, = nodes["IngredientsProjectIDs"].execute(model=loaded["payload"], ids=ids).args
    monkeypatch.setattr(mp, "CoreModelPatcher", Dynamic)
    payload = harness.model_outputs(nodes, "official")["payload"]
    assert payload.projector is None and type(payload.patcher) is Dynamic
    tokens, = nodes["IngredientsProjectIDs"].execute(model=payload, ids=ids).args
    assert torch.equal(tokens.tokens, want.tokens)


def tiny_faces(config, people: int) -> list:
    """Face features of ``people`` made-up persons for the q-former of ``config``: (id_cond, ViT scales)."""
    ids, g = config.ids, torch.Generator().manual_seed(5)
    return [(torch.randn(1, ids.id_cond_dim, generator=g),
             [torch.randn(1, 17, ids.vit_dim, generator=g) for _ in range(ids.num_vit_scales)])
            for _ in range(people)]
