"""Conditioning for the native MODEL path: CONDITIONING from the prompt nodes, Ingredients Image to
Video (the canvas latent on positive and negative, the empty LATENT) and Ingredients Decode LATENT,
on the stand-ins and the tiny models."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from tests.support import fake_gpu  # noqa: E402
from tests.support import harness  # noqa: E402
from ingredients_core.testing import tiny_models  # noqa: E402


TINY = dict(width=96, height=64, frames=9)  # latent (3, 8, 12)
LATENT_SHAPE = (1, 16, 3, 8, 12)
SCALE = 0.7  # the CogVideoX VAE's scaling_factor: the MODEL's latent format scales raw latents by it
PROMPT = "Two friends sit at a cafe table, laughing."


def run(node, **inputs):
    return node.execute(**inputs).args


def photos(seed: int) -> torch.Tensor:
    return torch.from_numpy(tiny_models.face_photo(seed, size=128)).float().div(255.0).unsqueeze(0)


def load(nodes) -> dict:
    folder = dict(model_folder="Ingredients")
    return dict(vae=run(nodes["IngredientsVAELoader"], **folder, dtype="float32")[0],
                t5=run(nodes["IngredientsT5Loader"], **folder, dtype="float32")[0],
                encoder=run(nodes["IngredientsFaceEncoderLoader"], **folder, provider="auto")[0])


@pytest.fixture(scope="module")
def graph(nodes) -> dict:
    models = load(nodes)
    faces = [run(nodes["IngredientsEncodeFace"], face_encoder=models["encoder"], image=photos(seed),
                 face_choice="best", face_index=0, min_face_size=64)[0] for seed in (1, 3)]
    ids, = run(nodes["IngredientsIDList"], face_1=faces[0], face_2=faces[1])
    prompt, positive, negative = run(nodes["IngredientsEncodePrompt"], t5=models["t5"], prompt=PROMPT,
                                     negative_prompt="")
    return dict(models, ids=ids, prompt=prompt, positive=positive, negative=negative)


def to_video(nodes, graph, **overrides):
    values = dict(positive=graph["positive"], negative=graph["negative"], ids=graph["ids"], vae=graph["vae"],
                  batch_size=1, encoding="official", canvas_seed=7, **TINY)
    values.update(overrides)
    return run(nodes["IngredientsImageToVideo"], **values)


def canvas_of(graph) -> np.ndarray:
    from ingredients_core.faces.canvas import make_canvas

    return make_canvas([face.crop for face in graph["ids"].faces])


# -- prompts as CONDITIONING ---------------------------------------------------------------------
def _is_conditioning_of(conditioning, embeds: torch.Tensor) -> None:
    assert isinstance(conditioning, list) and len(conditioning) == 1
    tensor, options = conditioning[0]
    assert tensor.shape == (1, 226, embeds.shape[-1]) and tensor.dtype == torch.float32
    assert tensor.device == torch.device("cpu")  # the intermediate device
    assert torch.equal(tensor, embeds) and options == {"pooled_output": None}  # as CLIPTextEncode on a T5 CLIP


def test_t5_prompt_node_gives_conditioning_equal_to_its_prompt_embeddings(graph):
    _is_conditioning_of(graph["positive"], graph["prompt"].positive)
    _is_conditioning_of(graph["negative"], graph["prompt"].negative)
    assert not torch.equal(graph["positive"][0][0], graph["negative"][0][0])


def test_t5_prompt_over_226_tokens_is_cut_with_a_warning(nodes, graph, caplog):
    with caplog.at_level(logging.WARNING):
        _, positive, _ = run(nodes["IngredientsEncodePrompt"], t5=graph["t5"], prompt="laughing friends " * 300,
                             negative_prompt="")
    assert positive[0][0].shape[1] == 226 and "226" in caplog.text


class T5OnlyClip:
    """ComfyUI's CLIP with only T5-XXL (CLIPLoader sd3 + a t5xxl file), reduced to what the node calls."""

    def tokenize(self, text, return_word_ids=False, **kwargs):
        length = kwargs["tokenizer_options"]["t5xxl_min_length"]
        words = [(100 + i, 1.0, i + 1) for i, _ in enumerate(text.split())] + [(1, 1.0, 0)]
        return {"g": [], "l": [], "t5xxl": [words + [(0, 1.0, 0)] * max(0, length - len(words))]}

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False):
        ids = torch.tensor([float(t[0]) for t in tokens["t5xxl"][0]])
        return ids.view(1, -1, 1).expand(1, -1, 4096) / 1000


def test_clip_prompt_node_gives_conditioning_equal_to_its_prompt_embeddings(nodes):
    prompt, positive, negative = run(nodes["IngredientsEncodePromptCLIP"], clip=T5OnlyClip(), prompt=PROMPT,
                                     negative_prompt="blurry")
    _is_conditioning_of(positive, prompt.positive)
    _is_conditioning_of(negative, prompt.negative)
    assert positive[0][0].shape == (1, 226, 4096)
    _, long, _ = run(nodes["IngredientsEncodePromptCLIP"], clip=T5OnlyClip(), prompt="word " * 400, negative_prompt="")
    assert long[0][0].shape == (1, 226, 4096) and float(long[0][0][0, -1, 0]) == pytest.approx(1 / 1000)  # EOS last


# -- Ingredients Image to Video ------------------------------------------------------------------
def test_official_encoding_is_the_pack_samplers_image_latent(nodes, graph):
    """concat_latent_image x 0.7 (what the MODEL's process_latent_in makes of it) equals the image
    latent the pack's sampler starts from with the same seed: the canvas latent sampled first from
    a generator seeded with the seed, zero frames after it."""
    from ingredients_core.encoders.vae import start_latents

    positive, negative, latent, image = to_video(nodes, graph, canvas_seed=7)
    concat = positive[0][1]["concat_latent_image"]
    assert concat.shape == LATENT_SHAPE and concat.dtype == torch.float32 and concat.device.type == "cpu"
    assert negative[0][1]["concat_latent_image"] is concat
    assert graph["vae"].vae.config.scaling_factor == SCALE
    generator = torch.Generator("cpu").manual_seed(7)
    expected, _ = start_latents(graph["vae"].vae, canvas_of(graph), TINY["height"], TINY["width"], TINY["frames"],
                                generator, torch.float32, 1.0)                      # (1, F, 16, h, w), scaled
    torch.testing.assert_close(concat * SCALE, expected.permute(0, 2, 1, 3, 4), rtol=0, atol=0)
    assert torch.count_nonzero(concat[:, :, 1:]) == 0
    assert torch.equal(latent["samples"], torch.zeros(LATENT_SHAPE))
    assert image.shape == (1, TINY["height"], TINY["width"], 3) and 0 <= float(image.min()) <= float(image.max()) <= 1


def test_conditioning_is_copied_and_its_prompt_kept(nodes, graph):
    positive, negative, _, _ = to_video(nodes, graph)
    assert positive[0][0] is graph["positive"][0][0] and negative[0][0] is graph["negative"][0][0]
    assert positive[0][1]["pooled_output"] is None
    assert "concat_latent_image" not in graph["positive"][0][1]  # the cached input is unchanged


def test_mean_encoding_is_the_latent_mean(nodes, graph):
    from diffusers.video_processor import VideoProcessor
    from PIL import Image

    positive, _, _, _ = to_video(nodes, graph, encoding="mean", canvas_seed=1)
    again, _, _, _ = to_video(nodes, graph, encoding="mean", canvas_seed=2)
    pixels = VideoProcessor(vae_scale_factor=8).preprocess(Image.fromarray(canvas_of(graph)), height=TINY["height"],
                                                           width=TINY["width"])
    with torch.no_grad():
        mean = graph["vae"].vae.encode(pixels.unsqueeze(2)).latent_dist.mean                  # (1, 16, 1, h, w)
    concat = positive[0][1]["concat_latent_image"]
    torch.testing.assert_close(concat[:, :, :1], mean, rtol=0, atol=0)
    assert torch.equal(concat, again[0][1]["concat_latent_image"])  # the seed plays no part


def test_batch_gets_one_official_sample_per_video_and_one_mean(nodes, graph):
    single = to_video(nodes, graph, canvas_seed=7)[0][0][1]["concat_latent_image"]
    positive, _, latent, _ = to_video(nodes, graph, canvas_seed=7, batch_size=2)
    batch = positive[0][1]["concat_latent_image"]
    assert batch.shape == (2, *LATENT_SHAPE[1:]) and latent["samples"].shape == (2, *LATENT_SHAPE[1:])
    assert torch.equal(batch[:1], single) and not torch.equal(batch[0], batch[1])
    mean = to_video(nodes, graph, encoding="mean", batch_size=2)[0][0][1]["concat_latent_image"]
    assert torch.equal(mean[0], mean[1])


class ComfyCogVideoXVAE:
    """ComfyUI's VAE (VAELoader, a CogVideoX file) as the node meets it: ``encode`` of an IMAGE in
    [0, 1] gives the raw latent mean; here the tiny diffusers VAE does the work."""

    def __init__(self, vae, name: str = "AutoencoderKLCogVideoX"):
        self.first_stage_model = type(name, (), {})()
        self.latent_channels = 16
        self.vae = vae

    def encode(self, pixel_samples):
        pixels = pixel_samples.movedim(-1, 1).unsqueeze(2) * 2.0 - 1.0                # (1, 3, 1, H, W)
        with torch.no_grad():
            return self.vae.encode(pixels).latent_dist.mean


def test_comfyui_vae_gives_the_mean_encoding(nodes, graph):
    want = to_video(nodes, graph, encoding="mean")[0][0][1]["concat_latent_image"]
    comfy_vae = ComfyCogVideoXVAE(graph["vae"].vae)
    positive, _, latent, _ = to_video(nodes, graph, vae=None, comfy_vae=comfy_vae, encoding="mean")
    torch.testing.assert_close(positive[0][1]["concat_latent_image"], want, rtol=1e-5, atol=1e-6)
    assert latent["samples"].shape == LATENT_SHAPE


def test_vae_choices_are_checked_with_the_fix(nodes, graph):
    comfy_vae = ComfyCogVideoXVAE(graph["vae"].vae)
    with pytest.raises(ValueError, match="^vae: connect Load Ingredients VAE"):
        to_video(nodes, graph, vae=None)
    with pytest.raises(ValueError, match="^vae, comfy_vae: both are connected"):
        to_video(nodes, graph, comfy_vae=comfy_vae)
    with pytest.raises(ValueError, match="^encoding: official samples .* choose mean"):
        to_video(nodes, graph, vae=None, comfy_vae=comfy_vae, encoding="official")
    with pytest.raises(ValueError, match="^comfy_vae: this VAE is not ComfyUI's CogVideoX VAE"):
        to_video(nodes, graph, vae=None, comfy_vae=ComfyCogVideoXVAE(graph["vae"].vae, "WanVAE"), encoding="mean")


def test_size_and_input_errors_name_the_input(nodes, graph):
    with pytest.raises(ValueError, match="^frames must be 4k\\+1"):
        to_video(nodes, graph, frames=10)
    with pytest.raises(ValueError, match="^width must be a positive multiple of 16"):
        to_video(nodes, graph, width=100)
    with pytest.raises(ValueError, match="^height must be a positive multiple of 16"):
        to_video(nodes, graph, height=8)
    with pytest.raises(ValueError, match="^positive: expected a ComfyUI CONDITIONING"):
        to_video(nodes, graph, positive=graph["prompt"])


# -- Ingredients Decode LATENT -------------------------------------------------------------------
def test_decode_latent_equals_decode_of_the_same_latents(nodes, graph):
    """The pack's sampler gives latents scaled by 0.7 in (B, F, C, h, w); a ComfyUI LATENT holds raw
    VAE latents (B, C, F, h, w) (ComfyUI's process_latent_out divides by 0.7): the same video."""
    latents_type = harness.pack_module("nodes.payloads").IngredientsLatents
    scaled = torch.randn(1, 3, 16, 8, 12, generator=torch.Generator().manual_seed(0))
    want, = run(nodes["IngredientsDecode"], vae=graph["vae"], latents=latents_type(scaled, **TINY), tiling=False)
    raw = (1 / SCALE) * scaled.permute(0, 2, 1, 3, 4)
    got, = run(nodes["IngredientsDecodeLatent"], vae=graph["vae"], samples={"samples": raw}, tiling=False)
    assert got.shape == want.shape == (TINY["frames"], TINY["height"], TINY["width"], 3)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    divided = scaled.permute(0, 2, 1, 3, 4) / SCALE  # as ComfyUI's process_latent_out computes it
    tiled, = run(nodes["IngredientsDecodeLatent"], vae=graph["vae"], samples={"samples": divided}, tiling=True)
    want_tiled, = run(nodes["IngredientsDecode"], vae=graph["vae"], latents=latents_type(scaled, **TINY), tiling=True)
    torch.testing.assert_close(tiled, want_tiled, rtol=1e-5, atol=1e-5)  # one ulp apart going in


def test_decode_latent_decodes_a_batch_video_after_video(nodes, graph):
    raw = torch.randn(2, 16, 3, 8, 12, generator=torch.Generator().manual_seed(1))
    both, = run(nodes["IngredientsDecodeLatent"], vae=graph["vae"], samples={"samples": raw}, tiling=False)
    first, = run(nodes["IngredientsDecodeLatent"], vae=graph["vae"], samples={"samples": raw[1:]}, tiling=False)
    assert both.shape == (2 * TINY["frames"], TINY["height"], TINY["width"], 3)
    torch.testing.assert_close(both[TINY["frames"]:], first, rtol=1e-6, atol=1e-6)


def test_decode_latent_of_a_long_video_gives_every_frame_and_budgets_one_chunk(nodes, graph, monkeypatch):
    """Issue 21: a 97-frame LATENT (25 latent frames, from Ingredients Long Video) decodes to 97 frames,
    and ComfyUI loads the VAE with the same room as for the 49-frame one (the decoder works on a few
    latent frames at a time: tests/test_vae.py), tiled or not."""
    host = harness.pack_module("nodes.host")
    asked, load = [], host.load
    monkeypatch.setattr(host, "load", lambda *patchers, memory_required=0: asked.append(memory_required) or load(
        *patchers, memory_required=memory_required))
    for tiling in (False, True):
        for latent in (13, 25):
            raw = torch.randn(1, 16, latent, 8, 12, generator=torch.Generator().manual_seed(latent))
            frames, = run(nodes["IngredientsDecodeLatent"], vae=graph["vae"], samples={"samples": raw}, tiling=tiling)
            assert frames.shape == (4 * (latent - 1) + 1, TINY["height"], TINY["width"], 3)
    assert asked[0] == asked[1] > 0 and asked[2] == asked[3] > 0


def test_decode_latent_refuses_an_image_latent(nodes, graph):
    with pytest.raises(ValueError, match=r"^samples: expected a CogVideoX video LATENT .* got \(1, 4, 8, 8\)"):
        run(nodes["IngredientsDecodeLatent"], vae=graph["vae"], samples={"samples": torch.zeros(1, 4, 8, 8)},
            tiling=True)


# -- on a GPU ------------------------------------------------------------------------------------
def test_image_to_video_and_decode_latent_on_the_load_device(nodes, graph):
    """With the VAE on the (fake) GPU: the official draw comes from a generator on the VAE's device,
    outputs land on the intermediate device, and the values equal the CPU run's."""
    want = to_video(nodes, graph, canvas_seed=5)[0][0][1]["concat_latent_image"]
    raw = torch.randn(1, 16, 3, 8, 12, generator=torch.Generator().manual_seed(2))
    want_frames, = run(nodes["IngredientsDecodeLatent"], vae=graph["vae"], samples={"samples": raw}, tiling=True)
    with fake_gpu.two_devices():
        vae, = run(nodes["IngredientsVAELoader"], model_folder="Ingredients", dtype="float32")
        with fake_gpu.computing():
            positive, _, latent, image = to_video(nodes, graph, vae=vae, canvas_seed=5)
            frames, = run(nodes["IngredientsDecodeLatent"], vae=vae, samples={"samples": raw}, tiling=True)
        assert vae.patcher.load_device == fake_gpu.DEVICE
    concat = positive[0][1]["concat_latent_image"]
    for output in (concat, latent["samples"], image, frames):
        assert type(output) is torch.Tensor and output.device.type == "cpu"
    torch.testing.assert_close(concat, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(frames, want_frames, rtol=1e-5, atol=1e-5)
