"""End-to-end generation on the tiny model: settings, model folder checks, determinism, random
draw order, negative prompt, schedulers, precomputed embeddings and interruption."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ingredients_core.sampling import pipeline as P
from ingredients_core.model.config import TransformerConfig
from ingredients_core.faces.features import FaceFeatures
from ingredients_core.sampling.official import Interrupted
from ingredients_core.testing.make_tiny import make_tiny_model
from ingredients_core.testing.tiny_faces import TINY_EVA_WIDTH

PROMPT = "two friends talk on a sunny beach"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny_model"), faces=False)


@pytest.fixture(scope="module")
def bundle(tiny_dir):
    return P.load_bundle(tiny_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def settings(bundle):
    return P.GenerationSettings(steps=3, seed=5).sized_for(bundle.transformer.config)


def _face(seed: int) -> FaceFeatures:
    gen = torch.Generator().manual_seed(seed)
    return FaceFeatures(
        id_cond=torch.randn(1, 1280, generator=gen),
        vit_hidden=[torch.randn(1, 577, TINY_EVA_WIDTH, generator=gen) for _ in range(5)],
        crop=np.random.default_rng(seed).integers(0, 256, (512, 512, 3), dtype=np.uint8),
        box=(0.0, 0.0, 512.0, 512.0), landmarks=np.zeros((5, 2), np.float32), score=1.0)


@pytest.fixture(scope="module")
def faces():
    return [_face(1), _face(2)]


@pytest.fixture(scope="module")
def baseline(bundle, faces, settings):
    return P.generate(bundle, faces, PROMPT, "", settings)


# -- settings ---------------------------------------------------------------------------------
@pytest.mark.parametrize("change,message", [
    ({"frames": 10}, "4k\\+1"), ({"height": 100}, "multiple of 16"), ({"width": 8}, "multiple of 16"),
    ({"steps": 0}, "at least 1"), ({"scheduler": "euler"}, "scheduler must be one of"),
    ({"dtype": "int8"}, "dtype must be one of"), ({"cfg": -1.0}, "cfg must be 0 or more"),
])
def test_settings_validation_explains(change, message):
    with pytest.raises(P.SettingsError, match=message):
        P.GenerationSettings(**change).validate()


def test_official_model_size_is_fixed_by_learned_positions():
    official = TransformerConfig()
    P.GenerationSettings().check_model(official)  # defaults are the official size
    with pytest.raises(P.SettingsError, match=r"exactly 49 frames at 480x720 \(latent 13x60x90\)"
                                              r".*Use height=480, width=720, frames=49"):
        P.GenerationSettings(frames=81).check_model(official)
    free = TransformerConfig(use_learned_positional_embeddings=False)
    P.GenerationSettings(height=320, width=512, frames=25).check_model(free)
    assert P.GenerationSettings(frames=9).sized_for(free).frames == 9


def test_tiny_model_is_sized_consistently(bundle, baseline, settings):
    config = bundle.transformer.config
    assert (settings.height, settings.width) == (config.sample_height * 8, config.sample_width * 8)
    assert baseline.frames.shape == (settings.frames, settings.height, settings.width, 3)
    assert baseline.latents.shape == (1, (settings.frames - 1) // 4 + 1, 16, settings.height // 8,
                                      settings.width // 8)
    assert baseline.canvas.shape == (480, 720, 3) and baseline.canvas.dtype == np.uint8
    assert 0 <= baseline.frames.min() and baseline.frames.max() <= 1
    with pytest.raises(P.SettingsError, match="learned positional embeddings"):
        P.generate(bundle, [_face(1)], PROMPT, "", settings.replace(height=settings.height + 16))


# -- model folder -----------------------------------------------------------------------------
def test_missing_model_folder_is_named(tmp_path):
    with pytest.raises(P.ModelFolderError, match=r"model folder not found: .*nowhere.*transformer/"):
        P.check_model_folder(tmp_path / "nowhere")


def test_incomplete_model_folder_lists_missing_parts(tmp_path):
    (tmp_path / "vae").mkdir()
    with pytest.raises(P.ModelFolderError) as caught:
        P.check_model_folder(tmp_path)
    message = str(caught.value)
    for part in ("transformer/", "text_encoder/", "tokenizer/", "scheduler/"):
        assert part in message
    assert "  vae/" not in message


# -- generation -------------------------------------------------------------------------------
def test_same_seed_same_video_other_seed_other_video(bundle, faces, settings, baseline):
    again = P.generate(bundle, faces, PROMPT, "", settings)
    assert torch.equal(again.frames, baseline.frames)
    other = P.generate(bundle, faces, PROMPT, "", settings.replace(seed=6))
    assert not torch.equal(other.frames, baseline.frames)


def test_negative_prompt_changes_the_result(bundle, faces, settings, baseline):
    negative = P.generate(bundle, faces, PROMPT, "blurry, distorted faces", settings)
    assert not torch.allclose(negative.latents, baseline.latents)


def test_ddim_and_dpm_both_run_and_differ(bundle, faces, settings, baseline):
    ddim = P.generate(bundle, faces, PROMPT, "", settings.replace(scheduler="ddim"))
    assert ddim.frames.shape == baseline.frames.shape and torch.isfinite(ddim.latents).all()
    assert not torch.allclose(ddim.latents, baseline.latents)


def test_precomputed_embeddings_match_text(bundle, faces, settings, baseline):
    embeds = P.prompt_embeddings(bundle, PROMPT)
    negative = P.prompt_embeddings(bundle, "")
    result = P.generate(bundle, faces, embeds, negative, settings)
    assert torch.equal(result.latents, baseline.latents)
    with pytest.raises(ValueError, match=r"expected shape \(1, 226, 32\)"):
        P.generate(bundle, faces, torch.zeros(1, 77, 32), negative, settings)


def test_random_draw_order_follows_official_pipeline(bundle, faces, settings, monkeypatch):
    """One generator: canvas latent sample first, then the initial noise, then the scheduler."""
    from diffusers.utils.torch_utils import randn_tensor

    from ingredients_core.sampling import official as sampling
    from ingredients_core.encoders.vae import encode_canvas

    seen = {}

    def capture(transformer, scheduler, latents, image_latents, *args, generator, **kwargs):
        seen.update(latents=latents, image_latents=image_latents, sigma=scheduler.init_noise_sigma,
                    next_draw=torch.randn(4, generator=generator))
        return latents

    monkeypatch.setattr(sampling, "denoise", capture)
    result = P.generate(bundle, faces, PROMPT, "", settings)
    gen = torch.Generator("cpu").manual_seed(settings.seed)
    image_latents = encode_canvas(bundle.vae, result.canvas, settings.height, settings.width,
                                  settings.frames, gen, torch.float32)
    noise = randn_tensor(tuple(image_latents.shape), generator=gen, dtype=torch.float32)
    torch.testing.assert_close(seen["image_latents"], image_latents, rtol=0, atol=0)
    torch.testing.assert_close(seen["latents"], noise * seen["sigma"], rtol=0, atol=0)
    torch.testing.assert_close(seen["next_draw"], torch.randn(4, generator=gen), rtol=0, atol=0)


def test_callback_interrupts_within_one_step(bundle, faces, settings):
    steps = []

    def stop(info):
        steps.append(info.step)
        raise Interrupted("stop requested")

    with pytest.raises(Interrupted):
        P.generate(bundle, faces, PROMPT, "", settings.replace(steps=10), stop)
    assert steps == [0]


def test_face_count_is_checked(bundle, settings):
    with pytest.raises(ValueError, match="1 to 4 people; got 0"):
        P.generate(bundle, [], PROMPT, "", settings)
    with pytest.raises(TypeError, match="expected FaceFeatures"):
        P.generate(bundle, ["not a face"], PROMPT, "", settings)


def test_without_guidance_and_with_id_scale_zero(bundle, faces, settings, baseline):
    unguided = P.generate(bundle, faces, PROMPT, "ignored without guidance", settings.replace(cfg=1.0))
    assert torch.isfinite(unguided.latents).all()
    assert not torch.allclose(unguided.latents, baseline.latents)
    no_ids = P.generate(bundle, faces, PROMPT, "", settings.replace(local_face_scale=0.0))
    assert not torch.allclose(no_ids.latents, baseline.latents)


def test_settings_must_match_where_models_are_loaded(bundle, faces, settings):
    with pytest.raises(P.SettingsError, match=r"dtype='bfloat16' but the models are loaded on cpu "
                                              r"in float32"):
        P.generate(bundle, faces, PROMPT, "", settings.replace(dtype="bfloat16"))
    with pytest.raises(P.SettingsError, match=r"device='cuda'"):
        P.generate(bundle, faces, PROMPT, "", settings.replace(device="cuda"))


@pytest.mark.parametrize("settings_device,bundle_device,current,ok", [
    ("cuda:0", "cuda", 0, True),    # bundle loaded with "auto"/"cuda": bare device, the current GPU
    ("cuda:1", "cuda", 0, False),
    ("cuda:1", "cuda", 1, True),
    ("cuda", "cuda:0", 0, True),
    ("cuda", "cuda:1", 0, False),
    ("cuda:0", "cuda:0", 1, True),
    ("cpu", "cuda", 0, False),
])
def test_placement_treats_bare_cuda_as_the_current_gpu(monkeypatch, settings_device, bundle_device, current, ok):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)  # no GPU needed
    bundle = P.ModelBundle(transformer=None, vae=None, tokenizer=None, text_encoder=None, scheduler_config={},
                           device=torch.device(bundle_device), dtype=torch.bfloat16)
    settings = P.GenerationSettings(device=settings_device, dtype="auto")
    if ok:
        P._check_placement(settings, bundle)
    else:
        with pytest.raises(P.SettingsError, match=f"device='{settings_device}'"):
            P._check_placement(settings, bundle)


def test_shared_constants_have_one_definition():
    from ingredients_core.routing import plan as routing
    from ingredients_core.sampling import official as sampling
    from ingredients_core.faces import canvas

    assert not hasattr(P, "MAX_IDS") and not hasattr(P, "SCHEDULER_NAMES")
    assert canvas.MAX_IDS is routing.MAX_IDS
    with pytest.raises(P.SettingsError, match=r"\('dpm', 'ddim'\)"):
        P.GenerationSettings(scheduler="euler").validate()
    assert sampling.SCHEDULERS == ("dpm", "ddim")


def test_read_transformer_config_without_config_json_is_none(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "transformer").mkdir()  # a whole weights file (resolve checks it is not truncated), no config.json
    save_file({"proj_out.weight": torch.zeros(2, 2)}, str(tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert P.read_transformer_config(tmp_path) is None
