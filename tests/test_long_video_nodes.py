"""Issue 21 item 2 on the tiny models (9-frame checkpoint): the Ingredients Sampler and Image to Video
take ``frames`` beyond the checkpoint's length when the MODEL samples in windows (Ingredients
Long Video), and refuse it with the fix when it does not."""

from __future__ import annotations

import pytest
import torch
from test_two_devices import encode_faces, load_all, nodes, run, sampler_inputs  # noqa: F401


@pytest.fixture(scope="module")
def graph(nodes):  # noqa: F811
    models = load_all(nodes)
    return dict(models=models, faces=encode_faces(nodes, models))


def _long_model(nodes, model, frames=17, overlap=4):  # noqa: F811
    return run(nodes["IngredientsLongVideo"], model=model, frames=frames, overlap=overlap, fuse_method="pyramid")


def test_sampler_refuses_long_frames_without_windows_naming_long_video(nodes, graph):  # noqa: F811
    inputs = sampler_inputs(nodes, graph["models"], graph["faces"])
    with pytest.raises(ValueError) as error:
        run(nodes["IngredientsSampler"], **dict(inputs, frames=17))
    assert "frames: 17 frames need the MODEL sampled in windows" in str(error.value)
    assert "Ingredients Long Video" in str(error.value) and "patched_model" in str(error.value)
    with pytest.raises(ValueError, match="frames must be 4k\\+1"):
        run(nodes["IngredientsSampler"], **dict(inputs, frames=18))


def test_sampler_samples_a_long_video_in_windows(nodes, graph):  # noqa: F811
    inputs = sampler_inputs(nodes, graph["models"], graph["faces"])
    long, frames = _long_model(nodes, graph["models"]["model"].patcher)
    latents, routing = run(nodes["IngredientsSampler"], **dict(inputs, patched_model=long, frames=frames))
    assert frames == 17 and latents.frames == 17 and latents.latents.shape[1] == 5  # (1, F, 16, h, w)
    assert torch.isfinite(latents.latents).all()
    assert routing.frames == 17  # the routing maps cover the whole video


def test_image_to_video_makes_the_long_latent_and_ksampler_needs_the_windows(nodes, graph):  # noqa: F811
    models = graph["models"]
    inputs = sampler_inputs(nodes, models, graph["faces"])
    ids = inputs["routed_ids"].tokens.ids
    prompt = inputs["prompt"]
    positive, negative = [[prompt.positive, {}]], [[prompt.negative, {}]]
    common = dict(positive=positive, negative=negative, ids=ids, vae=models["vae"], width=96, height=64, frames=9,
                  batch_size=1, encoding="mean", canvas_seed=1)
    pos, neg, latent, _ = run(nodes["IngredientsImageToVideo"], **dict(common, frames=17))
    assert latent["samples"].shape[2] == 5 and pos[0][1]["concat_latent_image"].shape[2] == 5
    import comfy.sample

    noise = comfy.sample.prepare_noise(latent["samples"], 1)
    with pytest.raises(ValueError, match="Ingredients Long Video"):
        comfy.sample.sample(models["model"].patcher, noise, 1, 3.0, "euler", "simple", pos, neg, latent["samples"],
                            seed=1)
    long, _ = _long_model(nodes, models["model"].patcher)
    out = comfy.sample.sample(long, noise, 1, 3.0, "euler", "simple", pos, neg, latent["samples"], seed=1)
    assert out.shape == latent["samples"].shape and torch.isfinite(out).all()
