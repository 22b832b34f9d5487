"""The nodes on a machine whose load device is not the offload device (ComfyUI on a GPU).

The stand-in ComfyUI runs with the fake GPU of ``tests/support/fake_gpu.py``: load devices are
``meta`` tensors holding CPU data, offload and intermediate devices the CPU, and any op that meets
a tensor left on the CPU fails as on CUDA. Loaders put the weights on the CPU; each node then asks
ComfyUI to load its models and computes on the fake GPU. Results must equal the CPU run's (up to
float rounding where torch picks another attention kernel for another device).
"""

from __future__ import annotations


import pytest
import torch

from tests.support import fake_gpu  # noqa: E402
from tests.support import harness  # noqa: E402
from ingredients_core.testing import tiny_models  # noqa: E402


TINY = dict(width=96, height=64, frames=9)
PROMPT = "Two women at a table."


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    with harness.pack_nodes(tiny_models.shared_models_dir(tmp_path_factory)) as nodes:
        yield nodes


def run(node, **inputs):
    return node.execute(**inputs).args


def photo(seed: int):
    return tiny_models.face_photo(seed, size=128)  # small: the tiny detector still finds a face


def photos(*seeds: int) -> torch.Tensor:
    return torch.stack([torch.from_numpy(photo(s)).float() / 255.0 for s in seeds])


def load_all(nodes) -> dict:
    folder = dict(model_folder="Ingredients")
    return dict(model=run(nodes["IngredientsModelLoader"], **folder, dtype="float32", routing_mode="official")[0],
                vae=run(nodes["IngredientsVAELoader"], **folder, dtype="float32")[0],
                t5=run(nodes["IngredientsT5Loader"], **folder, dtype="float32")[0],
                encoder=run(nodes["IngredientsFaceEncoderLoader"], **folder, provider="auto")[0])


def encode_faces(nodes, models) -> list:
    encode = nodes["IngredientsEncodeFace"]
    return [run(encode, face_encoder=models["encoder"], image=photos(*seeds), face_choice="best", face_index=0,
                min_face_size=64)[0] for seeds in ((1,), (3,))]


def sampler_inputs(nodes, models, faces) -> dict:
    prompt, _, _ = run(nodes["IngredientsEncodePrompt"], t5=models["t5"], prompt=PROMPT, negative_prompt="")
    ids, = run(nodes["IngredientsIDList"], face_1=faces[0], face_2=faces[1])
    tokens, = run(nodes["IngredientsProjectIDs"], model=models["model"], ids=ids)
    routed, = run(nodes["IngredientsRouteIDs"], id_tokens=tokens, routing_mode="from model", strength=1.0)
    return dict(model=models["model"], prompt=prompt, routed_ids=routed, vae=models["vae"], steps=1, cfg=6.0,
                seed=3, scheduler="dpm", dynamic_cfg=False, **TINY)


@pytest.fixture(scope="module")
def on_cpu(nodes):
    """The reference: the same graph with every device the CPU; EVA-CLIP in bf16, as on the GPU below
    (the fake GPU computes with the CPU's kernels, so every result must be identical)."""
    models = load_all(nodes)
    models["encoder"].encoder.eva.to(torch.bfloat16)
    faces = encode_faces(nodes, models)
    inputs = sampler_inputs(nodes, models, faces)
    latents, _ = run(nodes["IngredientsSampler"], **inputs)
    return dict(faces=faces, tokens=inputs["routed_ids"].tokens.tokens, prompt=inputs["prompt"], latents=latents)


@pytest.fixture(scope="module")
def gpu(nodes, on_cpu):
    """The loaders' outputs with ComfyUI on the fake GPU (weights on the CPU until a node loads them).
    The GPU runs bf16 and fp16; the transformer, VAE and T5 are asked for float32 (so their results
    equal the CPU run's), the face models take what ComfyUI's GPU supports (EVA-CLIP in bf16)."""
    with fake_gpu.two_devices():
        models = load_all(nodes)
        for payload in models.values():
            assert payload.patcher.load_device == fake_gpu.DEVICE
            assert payload.patcher.offload_device == torch.device("cpu")
        yield models


def _managed_modules(models: dict) -> dict:
    """Every module ComfyUI manages for the pack, by name (the holders' children; the transformer is
    the MODEL's ``diffusion_model`` beside ComfyUI's ``model_sampling``; its q-former also has a patcher
    of its own)."""
    patchers = {role: payload.patcher for role, payload in models.items()}
    patchers["projector"] = models["model"].projector
    return {f"{role}.{name}": module for role, patcher in patchers.items()
            for name, module in patcher.model.named_children()}


def test_nothing_a_managed_module_needs_lives_outside_its_parameters_and_buffers(gpu):
    """After loading: no tensor attributes and no stored devices in any submodule of the VAE, T5,
    the face detector, EVA-CLIP and the transformer (ComfyUI would not move them)."""
    modules = _managed_modules(gpu)
    assert modules["model.diffusion_model"] is gpu["model"].transformer
    assert sorted(modules) == sorted(["encoder.detector", "encoder.eva", "model.diffusion_model",
                                      "model.model_sampling", "projector.projector", "t5.t5", "vae.vae"])
    assert {name: fake_gpu.left_behind(module) for name, module in modules.items()} == {name: [] for name in modules}


def _on_fake_gpu(module: torch.nn.Module) -> bool:
    return all(isinstance(p, fake_gpu.OnGPU) for p in module.parameters())


def _same_face(got, want) -> None:
    assert type(got.id_cond) is torch.Tensor and got.id_cond.device.type == "cpu"
    assert got.box == want.box and (got.crop == want.crop).all() and torch.equal(got.id_cond, want.id_cond)
    assert all(type(a) is torch.Tensor and torch.equal(a, b) for a, b in zip(got.vit_hidden, want.vit_hidden))


def test_encode_face_runs_on_the_load_device_and_gives_the_cpu_features(nodes, gpu, on_cpu):
    encoder = gpu["encoder"].encoder
    with fake_gpu.computing():
        faces = encode_faces(nodes, gpu)
    assert _on_fake_gpu(encoder.detector) and _on_fake_gpu(encoder.eva)
    assert next(encoder.detector.parameters()).dtype == torch.float32  # as officially, on any device
    assert next(encoder.eva.parameters()).dtype == torch.bfloat16  # what this GPU computes in
    for got, want in zip(faces, on_cpu["faces"]):
        _same_face(got, want)


def test_face_models_keep_working_after_comfyui_moves_them(nodes, gpu, on_cpu):
    import comfy.model_management as mm

    with fake_gpu.computing():
        run(nodes["IngredientsEncodeFace"], face_encoder=gpu["encoder"], image=photos(1), face_choice="best",
            face_index=0, min_face_size=64)
        mm.unload_all_models()  # ComfyUI offloads them (another model needed the memory)
        encoder = gpu["encoder"].encoder
        assert encoder.device == torch.device("cpu") and not _on_fake_gpu(encoder.detector)
        _same_face(encoder.encode_person([photo(3)], source="image"), on_cpu["faces"][1])  # on the CPU now
        again, _ = run(nodes["IngredientsEncodeFace"], face_encoder=gpu["encoder"], image=photos(3), face_choice="best",
                       face_index=0, min_face_size=64)
        assert _on_fake_gpu(encoder.eva)
        _same_face(again, on_cpu["faces"][1])  # loaded again by the node: on the GPU


def test_prompt_project_ids_and_one_sampler_step_on_the_load_device(nodes, gpu, on_cpu):
    with fake_gpu.computing():
        inputs = sampler_inputs(nodes, gpu, on_cpu["faces"])
        transformer = gpu["model"].transformer
        assert _on_fake_gpu(transformer.local_facial_extractor)  # Project IDs loads the q-former alone
        latents, routing = run(nodes["IngredientsSampler"], **inputs)
        assert _on_fake_gpu(transformer.transformer_blocks)  # the sampler loads the rest
        frames, = run(nodes["IngredientsDecode"], vae=gpu["vae"], latents=latents, tiling=True)
    torch.testing.assert_close(inputs["prompt"].positive, on_cpu["prompt"].positive)
    torch.testing.assert_close(inputs["routed_ids"].tokens.tokens, on_cpu["tokens"])
    for output in (latents.latents, frames, *routing.last, *routing.mean):
        assert type(output) is torch.Tensor and output.device.type == "cpu"  # node outputs: intermediate device
    torch.testing.assert_close(latents.latents, on_cpu["latents"].latents, rtol=1e-4, atol=1e-4)
    assert frames.shape == (TINY["frames"], TINY["height"], TINY["width"], 3)


def test_still_nothing_left_behind_after_running_on_both_devices(gpu):
    """Forward passes may cache tensors on modules (conv caches, rotary tables): none may stay."""
    modules = _managed_modules(gpu)
    assert {name: fake_gpu.left_behind(module) for name, module in modules.items()} == {name: [] for name in modules}
