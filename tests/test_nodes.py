"""The ComfyUI nodes, run without ComfyUI on the stand-ins in tests/comfy_stubs and tiny models."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support import harness  # noqa: E402
from ingredients_core.testing import tiny_models  # noqa: E402


TINY = dict(width=96, height=64, frames=9)  # the tiny transformer's learned positional embeddings
PROMPT = "Two men in half bodies, are seated in a dimly lit room."



@pytest.fixture(scope="module")
def pack(models_dir):
    module = harness.load_pack(models_dir)
    asyncio.run(asyncio.run(module.comfy_entrypoint()).get_node_list())
    yield module
    harness.unload_pack()


@pytest.fixture(scope="module")
def nodes(pack):
    return {cls.GET_SCHEMA().node_id: cls for cls in harness.pack_module("nodes.extension").NODES}


def run(node, **inputs):
    return node.execute(**inputs).args


def image_batch(*seeds: int) -> torch.Tensor:
    return torch.stack([torch.from_numpy(tiny_models.face_photo(s)).float() / 255.0 for s in seeds])


@pytest.fixture(scope="module")
def graph(nodes):
    """Every node of the one-to-two-ID workflow up to the routed IDs, on the tiny model."""
    model, _ = run(nodes["IngredientsModelLoader"], model_folder="Ingredients", dtype="auto", routing_mode="official")
    vae, = run(nodes["IngredientsVAELoader"], model_folder="Ingredients", dtype="auto")
    t5, = run(nodes["IngredientsT5Loader"], model_folder="Ingredients", dtype="auto")
    prompt, _, _ = run(nodes["IngredientsEncodePrompt"], t5=t5, prompt=PROMPT, negative_prompt="")
    encoder, = run(nodes["IngredientsFaceEncoderLoader"], model_folder="Ingredients", provider="auto")
    encode = nodes["IngredientsEncodeFace"]
    face_1, crop_1 = run(encode, face_encoder=encoder, image=image_batch(1, 2), face_choice="best", face_index=0,
                         min_face_size=64)
    face_2, _ = run(encode, face_encoder=encoder, image=image_batch(3), face_choice="largest", face_index=0,
                    min_face_size=64)
    ids, = run(nodes["IngredientsIDList"], face_1=face_1, face_2=face_2)
    tokens, = run(nodes["IngredientsProjectIDs"], model=model, ids=ids)
    routed, = run(nodes["IngredientsRouteIDs"], id_tokens=tokens, routing_mode="from model", strength=1.0)
    return dict(model=model, vae=vae, t5=t5, prompt=prompt, encoder=encoder, faces=[face_1, face_2],
                crop=crop_1, ids=ids, tokens=tokens, routed=routed)


def sample(nodes, graph, **overrides):
    values = dict(model=graph["model"], prompt=graph["prompt"], routed_ids=graph["routed"], vae=graph["vae"],
                  steps=2, cfg=6.0, seed=7, scheduler="dpm", dynamic_cfg=False, **TINY)
    values.update(overrides)
    latents, _ = run(nodes["IngredientsSampler"], **values)
    return latents


# -- loading and registration --------------------------------------------------------------------
def test_root_init_imports_instantly_without_torch():
    code = ("import importlib.util, sys, time; t = time.perf_counter();"
            f"spec = importlib.util.spec_from_file_location('pack', {str(harness.REPO / '__init__.py')!r},"
            f" submodule_search_locations=[{str(harness.REPO)!r}]);"
            "m = importlib.util.module_from_spec(spec); sys.modules['pack'] = m; spec.loader.exec_module(m);"
            "assert time.perf_counter() - t < 1.0; assert 'torch' not in sys.modules, 'torch imported';"
            "assert callable(m.comfy_entrypoint) and m.WEB_DIRECTORY == './web';"
            "assert not hasattr(m, 'NODE_CLASS_MAPPINGS')")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_entrypoint_returns_extension_with_all_nodes(pack, nodes):
    from comfy_api.latest import ComfyExtension

    extension = asyncio.run(pack.comfy_entrypoint())
    assert isinstance(extension, ComfyExtension)
    assert len(asyncio.run(extension.get_node_list())) == len(nodes) == 26


def test_every_node_documents_every_input_and_output(nodes):
    for node_id, cls in nodes.items():
        schema = cls.define_schema()
        assert node_id.startswith("Ingredients") and schema.category.split("/")[0] == "Ingredients"
        assert schema.display_name and len(schema.description) > 30, node_id
        for item in [*schema.inputs, *schema.outputs]:
            assert item.tooltip and len(item.tooltip) > 10, f"{node_id}.{item.id} has no tooltip"
        assert not [k for k in vars(cls) if not k.startswith("__") and not callable(getattr(cls, k))
                    and not isinstance(vars(cls)[k], classmethod)], f"{node_id} keeps state on the class"


def test_payload_types_are_the_packs_own(nodes):
    builtin = {"IMAGE", "MASK", "CLIP", "INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "MODEL", "LATENT", "CONDITIONING",
               "VAE", "SAMPLER", "SIGMAS"}
    for cls in nodes.values():
        schema = cls.define_schema()
        for item in [*schema.inputs, *schema.outputs]:
            io_type = item.get_io_type()
            assert io_type in builtin or io_type.startswith("INGREDIENTS_"), io_type


def test_model_folders_registered_and_extra_paths_listed(pack, nodes, models_dir, tmp_path):
    import folder_paths

    assert folder_paths.get_folder_paths("ingredients")[0] == str(models_dir / "ingredients")
    assert folder_paths.get_folder_paths("insightface") == [str(models_dir / "insightface")]
    extra = tmp_path / "elsewhere"
    tiny_vae = extra / "team" / "CogVAE" / "vae"
    tiny_vae.mkdir(parents=True)
    folder_paths.add_model_folder_path("ingredients", str(extra))  # what extra_model_paths.yaml does
    try:
        options = {i.id: i for i in nodes["IngredientsVAELoader"].define_schema().inputs}["model_folder"].options
        assert options == ["Ingredients", "team/CogVAE"]
        models = {i.id: i for i in nodes["IngredientsModelLoader"].define_schema().inputs}["model_folder"].options
        assert models == ["Ingredients"]
    finally:
        folder_paths.folder_names_and_paths["ingredients"][0].remove(str(extra))


def test_missing_folder_and_file_errors_name_the_fix(nodes, models_dir, tmp_path):
    message = nodes["IngredientsModelLoader"].validate_inputs(model_folder="Ingredients-5B")
    assert "model_folder" in message and "'Ingredients-5B'" in message
    assert str(models_dir / "ingredients") in message and "feizhengcong/Ingredients" in message
    assert nodes["IngredientsModelLoader"].validate_inputs(model_folder="Ingredients") is True
    model_files = harness.pack_module("nodes.model_files")
    with pytest.raises(FileNotFoundError, match=r"scheduler_config.json .* in .*feizhengcong/Ingredients"):
        model_files.require_file(tmp_path / "scheduler_config.json", "scheduler config", tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    found = model_files.require_file(tmp_path / "spiece.model", "T5 tokenizer", tmp_path, "tokenizer.json")
    assert found == tmp_path / "tokenizer.json"


def test_loader_names_a_missing_file_in_a_listed_folder(nodes, models_dir):
    import shutil

    broken = models_dir / "ingredients" / "Broken"
    (broken / "vae").mkdir(parents=True)
    try:
        with pytest.raises(FileNotFoundError, match=r"missing file config.json \(VAE config\) in .*Broken/vae; "
                                                    r"download the complete folder from .*feizhengcong"):
            run(nodes["IngredientsVAELoader"], model_folder="Broken", dtype="auto")
    finally:
        shutil.rmtree(broken)


# -- the graph -----------------------------------------------------------------------------------
def test_loaders_hand_models_to_comfyui_model_management(graph):
    import comfy.model_management as mm

    model, vae, t5, encoder = graph["model"], graph["vae"], graph["t5"], graph["encoder"]
    assert model.patcher.model.diffusion_model is model.transformer  # the MODEL's patcher, shared by both paths
    assert model.projector.model.projector is model.transformer.local_facial_extractor  # Project IDs loads it alone
    assert vae.patcher.model.vae is vae.vae and t5.patcher.model.t5 is t5.encoder
    assert encoder.patcher.model.detector is encoder.encoder.detector
    loaded = [patcher for call in mm.load_calls for patcher in call]
    assert model.projector in loaded and t5.patcher in loaded and encoder.patcher in loaded
    assert model.transformer.placement()[1] == torch.float32  # auto under --cpu


def test_encode_face_outputs_features_crop_and_preview(nodes, graph):
    assert graph["crop"].shape == (1, 512, 512, 3) and graph["crop"].dtype == torch.float32
    assert graph["faces"][0].photos == 2 and graph["faces"][1].photos == 1
    out = nodes["IngredientsEncodeFace"].execute(face_encoder=graph["encoder"], image=image_batch(3),
                                                 face_choice="best", face_index=0, min_face_size=64)
    assert out.ui is not None and out.ui.image.shape == (1, 512, 512, 3)


def test_id_list_keeps_order_and_refuses_gaps(nodes, graph):
    assert [f.source for f in graph["ids"].faces] == ["image", "image"] and len(graph["ids"]) == 2
    with pytest.raises(ValueError, match="face_2 not connected while face_3 is"):
        run(nodes["IngredientsIDList"], face_1=graph["faces"][0], face_3=graph["faces"][1])


def test_canvas_is_an_image(nodes, graph):
    canvas, = run(nodes["IngredientsFaceCanvas"], ids=graph["ids"])
    assert canvas.shape == (1, 480, 720, 3) and float(canvas.max()) <= 1.0
    assert torch.all(canvas[0, 0, 0] == 1.0)  # white background


def test_project_and_route_ids(graph):
    assert graph["tokens"].tokens.shape[:2] == (2, 32)
    routed = graph["routed"]
    assert routed.follow_model_mode and routed.routing_for(graph["model"].routing_mode).mode == "official"
    assert list(routed.routing.strengths) == [1.0, 1.0]


def test_sampler_and_decode_match_the_core_pipeline(nodes, graph):
    from comfy import utils

    pipeline = harness.pack_module("ingredients_core.sampling.pipeline")
    utils.updates.clear()
    latents = sample(nodes, graph)
    assert [u[:2] for u in utils.updates] == [(1, 2), (2, 2)]
    assert all(u[2][0] == "JPEG" and u[2][1].size == (12, 8) for u in utils.updates)  # latent-size previews
    frames, = run(nodes["IngredientsDecode"], vae=graph["vae"], latents=latents, tiling=True)
    assert frames.shape == (9, 64, 96, 3) and 0.0 <= float(frames.min()) and float(frames.max()) <= 1.0

    model, vae, prompt = graph["model"], graph["vae"], graph["prompt"]
    bundle = pipeline.ModelBundle(model.transformer, vae.vae, None, None, model.scheduler_config,
                                  torch.device("cpu"), torch.float32)
    settings = pipeline.GenerationSettings(steps=2, seed=7, device="cpu", dtype="float32", **TINY)
    expected = pipeline.generate(bundle, graph["faces"], prompt.positive, prompt.negative, settings)
    # the node samples through ComfyUI's sampling with the official SAMPLER in the loop's own space: the same
    # loop, steps, draws and guidance as the command line's, to the bit
    torch.testing.assert_close(latents.latents, expected.latents, rtol=0, atol=0)
    torch.testing.assert_close(frames, expected.frames, rtol=0, atol=0)


def test_t5_loader_runs_the_folders_t5_on_comfyuis_t5_with_the_official_embeddings(nodes, graph, models_dir):
    """Load Ingredients T5 puts text_encoder/ into ComfyUI's own T5 (comfy.ops layers, partial
    loading), stored in ComfyUI's text-encoder dtype (fp16 by default) and computed in float32;
    in float32 its embeddings equal the transformers T5EncoderModel's (the official encoder)."""
    import comfy.ops

    text = harness.pack_module("ingredients_core.encoders.text")
    assert graph["t5"].encoder.shared.weight.dtype == torch.float16  # auto: ComfyUI's text-encoder dtype
    t5, = run(nodes["IngredientsT5Loader"], model_folder="Ingredients", dtype="float32")
    linears = [m for m in t5.encoder.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, comfy.ops.manual_cast.Linear) for m in linears)
    prompt, _, _ = run(nodes["IngredientsEncodePrompt"], t5=t5, prompt=PROMPT, negative_prompt="")
    folder = models_dir / "ingredients" / "Ingredients"
    official = text.encode_prompts(text.load_tokenizer(folder), text.load_text_encoder(folder, torch.float32, "cpu"),
                                   [PROMPT, ""], "cpu", torch.float32)
    torch.testing.assert_close(torch.cat([prompt.positive, prompt.negative]), official, rtol=1e-5, atol=1e-5)
    fp16 = torch.cat([graph["prompt"].positive, graph["prompt"].negative])
    assert float((fp16 - official).abs().max()) < 0.01  # fp16 weights: close, not equal


def test_sampler_checks_every_step_for_cancel(nodes, graph, monkeypatch):
    import comfy.model_management as mm

    calls = []

    def interrupt_on_third_check():
        calls.append(1)
        if len(calls) == 3:
            raise mm.InterruptProcessingException()

    monkeypatch.setattr(mm, "throw_exception_if_processing_interrupted", interrupt_on_third_check)
    with pytest.raises(mm.InterruptProcessingException):
        sample(nodes, graph, steps=5)
    assert len(calls) == 3  # once before sampling, then after steps 1 and 2


def test_sampler_errors_name_the_input(nodes, graph):
    with pytest.raises(ValueError, match="frames must be 4k\\+1"):
        sample(nodes, graph, frames=10)
    with pytest.raises(ValueError, match="Use height=64, width=96, frames=9"):
        sample(nodes, graph, width=720, height=480, frames=49)
    wide = type(graph["prompt"])(torch.zeros(1, 226, 4096), torch.zeros(1, 226, 4096), "test")
    with pytest.raises(ValueError, match="prompt: embeddings are 4096 wide"):
        sample(nodes, graph, prompt=wide)
    # ID tokens projected with other weights (another folder) than the MODEL the Sampler samples
    elsewhere = Path("/models/ingredients/Other")
    routed, tokens = graph["routed"], graph["routed"].tokens
    foreign = dataclasses.replace(routed, tokens=dataclasses.replace(
        tokens, model_folder=elsewhere, weights=dataclasses.replace(tokens.weights, folder=elsewhere)))
    with pytest.raises(ValueError, match=r"routed_ids: the ID tokens were projected with Other \(its own "
                                         r"transformer, float32 weights\), this MODEL holds Ingredients"):
        sample(nodes, graph, routed_ids=foreign)


# -- prompts from a native CLIP ------------------------------------------------------------------
class FakeT5Clip:
    """ComfyUI's CLIP as CLIPLoader type sd3 builds it, reduced to tokenize / encode_from_tokens."""

    def __init__(self, keys=("g", "l", "t5xxl")):
        self.keys = keys
        self.encoded = []

    def tokenize(self, text, return_word_ids=False, **kwargs):
        assert kwargs.get("disable_weights") is True  # brackets are text, as in the official pipeline
        options = kwargs.get("tokenizer_options", {})
        words = [(100 + i, 1.0, i + 1) for i, _ in enumerate(text.split())]
        t5 = words + [(1, 1.0, 0)]
        t5 += [(0, 1.0, 0)] * max(0, options.get("t5xxl_min_length", 77) - len(t5))
        clip = [[(49406, 1.0, 0)] + words[:75] + [(49407, 1.0, 0)]]
        return {key: ([t5] if key == "t5xxl" else clip) for key in self.keys}

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False):
        self.encoded.append(tokens)
        assert all(tokens[key] == [] for key in tokens if key != "t5xxl")
        return torch.ones(1, len(tokens["t5xxl"][0]), 4096)

    def __setattr__(self, name, value):
        if hasattr(self, "encoded"):
            raise AssertionError(f"the node changed the shared CLIP ({name})")
        super().__setattr__(name, value)


def test_clip_prompt_gives_226_t5_tokens_and_leaves_clip_alone(nodes):
    clip = FakeT5Clip()
    prompt, _, _ = run(nodes["IngredientsEncodePromptCLIP"], clip=clip, prompt=PROMPT, negative_prompt="")
    assert prompt.positive.shape == prompt.negative.shape == (1, 226, 4096)
    long_prompt, _, _ = run(nodes["IngredientsEncodePromptCLIP"], clip=clip, prompt="word " * 400, negative_prompt="")
    last = clip.encoded[-2]["t5xxl"][0]
    assert long_prompt.positive.shape == (1, 226, 4096) and len(last) == 226 and last[-1][0] == 1


def test_clip_without_t5_is_refused_with_the_fix(nodes):
    with pytest.raises(ValueError, match="no T5-XXL .* CLIPLoader type 'sd3'"):
        run(nodes["IngredientsEncodePromptCLIP"], clip=FakeT5Clip(keys=("l",)), prompt="a", negative_prompt="")


def test_preview_factors_reproduce_the_canvas_colours():
    preview = harness.pack_module("nodes.preview")
    rng = np.random.default_rng(0)
    latent = torch.from_numpy(rng.normal(size=(16, 6, 9)).astype(np.float32))
    weights = torch.from_numpy(rng.normal(size=(16, 3)).astype(np.float32)) * 0.2
    rgb = (latent.permute(1, 2, 0) @ weights).clamp(-1, 1)
    canvas = ((rgb + 1) * 127.5).round().byte().numpy()
    factors, bias = preview.fit_rgb_factors(canvas, latent)
    fitted = latent.permute(1, 2, 0) @ torch.tensor(factors) + torch.tensor(bias)
    assert float((fitted - rgb).abs().mean()) < 0.05


def test_node_constants_equal_the_library_ones(pack):
    """The node modules keep light copies of a few core constants (so ComfyUI's start does not import
    the library); they must not drift from the core."""
    import typing

    from ingredients_core.faces.choice import FACE_CHOICES
    from ingredients_core.routing.plan import MAX_IDS, RoutingMode
    from ingredients_core.sampling.official import SCHEDULERS

    payloads = harness.pack_module("nodes.payloads")
    assert payloads.MAX_IDS == MAX_IDS
    assert tuple(harness.pack_module("nodes.faces").FACE_CHOICES) == tuple(FACE_CHOICES)
    assert tuple(harness.pack_module("nodes.sampling").SCHEDULERS) == tuple(SCHEDULERS)
    assert tuple(payloads.ROUTING_MODES) == typing.get_args(RoutingMode)
