"""Dtypes per role: each model takes its dtype from ComfyUI's picker for its role, under every flag.

Runs on the ComfyUI stand-ins (whose pickers follow ComfyUI's logic and flags) on three machines:
no GPU (``--cpu``), a GPU that runs bf16 and fp16 (Ampere or newer), one that runs fp16 only
(Turing). Then every dtype flag of the task list gets a working run on the fake GPU.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
import torch

from tests.support import fake_gpu  # noqa: E402
from tests.support import harness  # noqa: E402
from ingredients_core.testing import tiny_models  # noqa: E402


BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
MACHINES = {"cpu": None, "gpu": dict(bf16=True, fp16=True), "turing": dict(bf16=False, fp16=True)}
TINY = dict(width=96, height=64, frames=9)


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    module = harness.load_pack(tiny_models.shared_models_dir(tmp_path_factory))
    asyncio.run(asyncio.run(module.comfy_entrypoint()).get_node_list())
    yield module
    harness.unload_pack()


@pytest.fixture()
def host(pack):
    return harness.pack_module("nodes.host")


def machine(name: str):
    import contextlib

    return contextlib.nullcontext() if MACHINES[name] is None else fake_gpu.two_devices(**MACHINES[name])


def flags(*names: str):
    import comfy.cli_args

    return comfy.cli_args.flags(*names)


# (machine, flag or None) -> (transformer (storage, compute), VAE, T5 storage, face models); T5 runs on
# ComfyUI's own T5, which computes in float32 from any storage dtype (fp8 included), as ComfyUI does
EXPECTED = {
    ("cpu", None): ((FP32, FP32), FP32, FP16, FP32),  # ComfyUI stores text encoders in fp16 by default
    ("cpu", "fp8_e4m3fn_unet"): ((E4M3, FP32), FP32, FP16, FP32),
    ("cpu", "fp16_unet"): ((FP16, FP32), FP32, FP16, FP32),
    ("cpu", "bf16_unet"): ((BF16, FP32), FP32, FP16, FP32),
    ("cpu", "fp16_vae"): ((FP32, FP32), FP16, FP16, FP32),
    ("cpu", "bf16_vae"): ((FP32, FP32), BF16, FP16, FP32),
    ("cpu", "fp8_e4m3fn_text_enc"): ((FP32, FP32), FP32, E4M3, FP32),
    ("gpu", None): ((BF16, BF16), BF16, FP16, BF16),
    ("gpu", "fp8_e4m3fn_unet"): ((E4M3, BF16), BF16, FP16, BF16),
    ("gpu", "fp8_e5m2_unet"): ((E5M2, BF16), BF16, FP16, BF16),
    ("gpu", "fp16_unet"): ((FP16, FP16), BF16, FP16, BF16),
    ("gpu", "bf16_unet"): ((BF16, BF16), BF16, FP16, BF16),
    ("gpu", "fp32_vae"): ((BF16, BF16), FP32, FP16, BF16),
    ("gpu", "bf16_vae"): ((BF16, BF16), BF16, FP16, BF16),
    ("gpu", "fp16_vae"): ((BF16, BF16), FP16, FP16, BF16),
    ("gpu", "fp16_text_enc"): ((BF16, BF16), BF16, FP16, BF16),
    ("gpu", "bf16_text_enc"): ((BF16, BF16), BF16, BF16, BF16),
    ("gpu", "fp32_text_enc"): ((BF16, BF16), BF16, FP32, BF16),
    ("gpu", "fp8_e4m3fn_text_enc"): ((BF16, BF16), BF16, E4M3, BF16),
    ("turing", None): ((FP32, FP32), FP16, FP16, FP16),
    ("turing", "fp8_e4m3fn_unet"): ((E4M3, FP32), FP16, FP16, FP16),
    ("turing", "fp16_unet"): ((FP16, FP16), FP16, FP16, FP16),
    ("turing", "fp8_e4m3fn_text_enc"): ((FP32, FP32), FP16, E4M3, FP16),
}


@pytest.mark.parametrize("where,flag", list(EXPECTED), ids=lambda v: str(v))
def test_each_role_takes_comfyuis_dtype_for_its_role(host, where, flag):
    with machine(where), flags(*([flag] if flag else [])):
        found = (host.diffusion_dtypes("auto"), host.vae_dtype("auto"), host.text_encoder_dtype("auto"),
                 host.face_dtype())
    assert found == EXPECTED[where, flag]


def test_no_model_ever_gets_a_dtype_it_cannot_compute_in(host):
    """Across every flag and machine: compute dtypes are never fp8; face models never follow a flag;
    T5 computes in float32 whatever it is stored in."""
    assert host.T5_COMPUTE_DTYPE == FP32
    for (where, flag), (diffusion, vae, _, face) in EXPECTED.items():
        assert not {diffusion[1], vae, face} & set(host.FLOAT8_DTYPES), (where, flag)
        assert face == EXPECTED[where, None][3], (where, flag)


def test_node_choices_win_over_auto_and_flags(host):
    with flags("fp16_vae", "fp8_e4m3fn_unet", "fp8_e4m3fn_text_enc"):
        assert host.vae_dtype("float32") == FP32 and host.text_encoder_dtype("bfloat16") == BF16
        assert host.diffusion_dtypes("bfloat16") == (BF16, FP32)  # CPU: bf16 weights compute in fp32
    with machine("gpu"):
        assert host.diffusion_dtypes("float16") == (FP16, FP16)
        assert host.diffusion_dtypes("float32") == (FP32, FP32)
    with pytest.raises(ValueError, match="'float12' is not a dtype"):
        host.diffusion_dtypes("float12")


def _log(caplog, choice: str, *names: str, where: str = "gpu", weight: str = "default") -> tuple:
    loaders = harness.pack_module("nodes.loaders")
    folder = harness.pack_module("nodes.model_files").resolve(loaders.MODEL, "Ingredients", "model_folder")
    caplog.clear()
    with machine(where), flags(*names), caplog.at_level(logging.INFO, logger=loaders.__name__):
        dtypes = loaders.transformer_dtypes(folder, choice, weight)
    return dtypes, [(r.levelno, r.getMessage()) for r in caplog.records if r.name == loaders.__name__]


def test_model_loader_stores_fp8_from_the_flag_or_the_node_and_computes_in_bf16(pack, caplog):
    FP8 = torch.float8_e4m3fn
    dtypes, records = _log(caplog, "auto", "fp8_e4m3fn_unet")
    assert dtypes == (FP8, BF16)
    assert [level for level, _ in records] == [logging.INFO]
    assert "stored in float8_e4m3fn, computed in bfloat16" in records[0][1]
    assert _log(caplog, "auto", weight="fp8_e5m2")[0] == (torch.float8_e5m2, BF16)
    assert _log(caplog, "auto", where="cpu", weight="fp8_e4m3fn")[0] == (FP8, FP32)
    assert _log(caplog, "auto") == ((BF16, BF16), [])
    dtypes, records = _log(caplog, "auto", weight="fp8_e4m3fn_fast")  # this fake GPU has no fp8 matmul
    assert dtypes == (FP8, BF16) and any("does not have" in text for _, text in records)


def test_fp16_transformer_only_when_asked_and_with_a_warning(pack, caplog):
    for choice, names in (("auto", ("fp16_unet",)), ("float16", ())):
        dtypes, records = _log(caplog, choice, *names)
        assert dtypes == (FP16, FP16) and any(level == logging.WARNING and "trained in bfloat16" in text
                                              for level, text in records), records
    dtypes, records = _log(caplog, "auto", "fp16_unet", where="cpu")  # the CPU computes fp16 weights in fp32
    assert dtypes == (FP16, FP32) and not any("trained in bfloat16" in text for _, text in records)


# -- every flag gives a working run --------------------------------------------------------------
RUN_FLAGS = ["fp8_e4m3fn_unet", "fp8_e5m2_unet", "fp16_unet", "bf16_unet", "fp32_vae", "bf16_vae", "fp16_vae",
             "fp16_text_enc", "fp32_text_enc", "fp8_e4m3fn_text_enc"]
ROLE_OF_FLAG = {"unet": "model", "vae": "vae", "text_enc": "t5"}


def run(node, **inputs):
    return node.execute(**inputs).args


@pytest.fixture(scope="module")
def on_gpu(pack):
    """Nodes and models with ComfyUI on a bf16 GPU: transformer, VAE and T5 in float32 (each flag
    test reloads the model its flag is for, with dtype auto), one face encoded."""
    nodes = {cls.GET_SCHEMA().node_id: cls for cls in harness.pack_module("nodes.extension").NODES}
    with fake_gpu.two_devices():
        models = _load(nodes, ("model", "vae", "t5", "encoder"), dtype="float32")
        with fake_gpu.computing():
            face = _encode_face(nodes, models)
            prompt, _, _ = run(nodes["IngredientsEncodePrompt"], t5=models["t5"], prompt="a person", negative_prompt="")
        yield nodes, models, face, prompt


def _load(nodes, roles, dtype: str = "auto") -> dict:
    folder = dict(model_folder="Ingredients")
    loaders = {"model": lambda: run(nodes["IngredientsModelLoader"], **folder, dtype=dtype, routing_mode="official"),
               "vae": lambda: run(nodes["IngredientsVAELoader"], **folder, dtype=dtype),
               "t5": lambda: run(nodes["IngredientsT5Loader"], **folder, dtype=dtype),
               "encoder": lambda: run(nodes["IngredientsFaceEncoderLoader"], **folder, provider="auto")}
    return {role: loaders[role]()[0] for role in roles}


def _encode_face(nodes, models):
    image = torch.from_numpy(tiny_models.face_photo(1, 128)).float()[None] / 255.0
    face, _ = run(nodes["IngredientsEncodeFace"], face_encoder=models["encoder"], image=image, face_choice="best",
                  face_index=0, min_face_size=64)
    return face


def _sample(nodes, models, face, prompt):
    ids, = run(nodes["IngredientsIDList"], face_1=face)
    tokens, = run(nodes["IngredientsProjectIDs"], model=models["model"], ids=ids)
    routed, = run(nodes["IngredientsRouteIDs"], id_tokens=tokens, routing_mode="from model", strength=1.0)
    latents, _ = run(nodes["IngredientsSampler"], model=models["model"], prompt=prompt, routed_ids=routed,
                     vae=models["vae"], steps=1, cfg=6.0, seed=1, scheduler="dpm", dynamic_cfg=False, **TINY)
    assert torch.isfinite(latents.latents).all()
    return latents


@pytest.mark.parametrize("flag", RUN_FLAGS)
def test_every_dtype_flag_gives_a_working_run(on_gpu, flag):
    """The model the flag is for, loaded under it, runs its part of the graph on the fake GPU: T5
    encodes the prompt; the transformer projects the IDs and samples a step; the VAE encodes the
    face canvas (what the sampler does with it) and Decode decodes."""
    nodes, models, face, prompt = on_gpu
    role = next(r for suffix, r in ROLE_OF_FLAG.items() if flag.endswith(suffix))
    with flags(flag):
        models = {**models, **_load(nodes, (role,))}
        with fake_gpu.computing():
            if flag == "fp8_e4m3fn_unet":  # the flag that broke Encode Face: face models never take it
                assert torch.equal(_encode_face(nodes, models).id_cond, face.id_cond)
            if role == "t5":
                prompt, _, _ = run(nodes["IngredientsEncodePrompt"], t5=models["t5"], prompt="a person", negative_prompt="")
                assert prompt.positive.shape == (1, 226, prompt.width) and torch.isfinite(prompt.positive).all()
            if role == "model":
                _sample(nodes, models, face, prompt)
            if role == "vae":
                frames = _encode_and_decode(nodes, models["vae"], face)
                assert frames.shape == (1, TINY["height"], TINY["width"], 3) and torch.isfinite(frames).all()


def _encode_and_decode(nodes, vae, face) -> torch.Tensor:
    """The canvas through the VAE as the sampler encodes it, then one latent frame through Decode."""
    from ingredients_core.faces import make_canvas

    vae_module = harness.pack_module("ingredients_core.encoders.vae")
    harness.pack_module("nodes.host").load(vae.patcher)
    generator = torch.Generator(vae.patcher.load_device).manual_seed(0)
    latent = vae_module.encode_canvas(vae.vae, make_canvas([face.crop]), TINY["height"], TINY["width"], 1,
                                      generator, torch.float32)
    assert torch.isfinite(latent).all()
    payload = harness.pack_module("nodes.payloads").IngredientsLatents(latent.cpu(), TINY["height"], TINY["width"], 1)
    frames, = run(nodes["IngredientsDecode"], vae=vae, latents=payload, tiling=True)
    return frames
