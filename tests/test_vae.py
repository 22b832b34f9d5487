"""VAE: the face-canvas latent matches the official arithmetic; decoding and per-call VAE modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ingredients_core.encoders import vae as vae_ops
from ingredients_core.testing.tiny_text_vae import write_tiny_vae


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_vae")
    write_tiny_vae(folder / "vae", seed=0)
    return vae_ops.load_vae(folder, torch.float32, "cpu")


def _canvas(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    canvas = np.full((480, 720, 3), 255, np.uint8)
    canvas[60:420, 0:360] = rng.integers(0, 256, (360, 360, 3), dtype=np.uint8)
    return canvas


def _official_image_latents(vae, canvas, height, width, num_frames, generator):
    """The official pipeline's steps, written out: preprocess, prepare_latents' encode and padding."""
    from diffusers.video_processor import VideoProcessor
    from PIL import Image

    image = VideoProcessor(vae_scale_factor=8).preprocess(Image.fromarray(canvas), height=height,
                                                          width=width).to(dtype=torch.float32)
    image = image.unsqueeze(2)
    latents = [vae.encode(img.unsqueeze(0)).latent_dist.sample(generator) for img in image]
    latents = torch.cat(latents, dim=0).to(torch.float32).permute(0, 2, 1, 3, 4)
    latents = vae.config.scaling_factor * latents
    frames = (num_frames - 1) // 4 + 1
    padding = torch.zeros((1, frames - 1, 16, height // 8, width // 8))
    return torch.cat([latents, padding], dim=1)


@pytest.mark.parametrize("height,width,num_frames", [(64, 96, 49), (48, 80, 9)])
def test_encode_canvas_matches_official_arithmetic(tiny_vae, height, width, num_frames):
    canvas = _canvas()
    ours = vae_ops.encode_canvas(tiny_vae, canvas, height, width, num_frames,
                                 torch.Generator().manual_seed(7), torch.float32)
    with torch.no_grad():
        reference = _official_image_latents(tiny_vae, canvas, height, width, num_frames,
                                            torch.Generator().manual_seed(7))
    assert ours.shape == (1, (num_frames - 1) // 4 + 1, 16, height // 8, width // 8)
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    assert ours[:, 1:].abs().max() == 0


def test_encode_canvas_draws_from_generator(tiny_vae):
    canvas = _canvas()
    a = vae_ops.encode_canvas(tiny_vae, canvas, 64, 96, 9, torch.Generator().manual_seed(1),
                              torch.float32)
    b = vae_ops.encode_canvas(tiny_vae, canvas, 64, 96, 9, torch.Generator().manual_seed(2),
                              torch.float32)
    assert not torch.equal(a[:, 0], b[:, 0])


def test_encode_canvas_rejects_non_rgb_uint8(tiny_vae):
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8 RGB"):
        vae_ops.encode_canvas(tiny_vae, np.zeros((480, 720), np.uint8), 64, 96, 9, None,
                              torch.float32)


def test_decode_shape_range_and_official_scaling(tiny_vae):
    latents = torch.randn(1, 3, 16, 8, 12, generator=torch.Generator().manual_seed(0))
    frames = vae_ops.decode(tiny_vae, latents, tiling=False, slicing=False)
    assert frames.shape == (9, 64, 96, 3) and frames.dtype == torch.float32
    assert frames.min() >= 0 and frames.max() <= 1
    with torch.no_grad():
        raw = tiny_vae.decode((1 / 0.7) * latents.permute(0, 2, 1, 3, 4)).sample
    expected = (raw / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1)[0]
    torch.testing.assert_close(frames, expected, rtol=0, atol=0)


def test_decode_sets_modes_for_the_call_and_restores_them(tiny_vae, monkeypatch):
    seen = []
    original = tiny_vae.decode

    def spy(z, *args, **kwargs):
        seen.append((tiny_vae.use_tiling, tiny_vae.use_slicing))
        return original(z, *args, **kwargs)

    monkeypatch.setattr(tiny_vae, "decode", spy)
    tiny_vae.enable_tiling()
    tiny_vae.disable_slicing()
    latents = torch.zeros(1, 1, 16, 4, 4)
    vae_ops.decode(tiny_vae, latents, tiling=False, slicing=True)
    assert seen == [(False, True)]
    assert (tiny_vae.use_tiling, tiny_vae.use_slicing) == (True, False)
    tiny_vae.disable_tiling()


def test_latent_frame_count():
    assert vae_ops.latent_frame_count(49) == 13
    assert vae_ops.latent_frame_count(1) == 1
    assert vae_ops.latent_frame_count(9) == 3


# -- long videos (issue 21): decoded a few latent frames at a time ---------------------------------
@pytest.mark.parametrize("tiling", [False, True])
def test_a_long_latent_decodes_every_frame_a_few_latent_frames_at_a_time(tiny_vae, tiling):
    """97 frames (25 latent) decode to 4 (F - 1) + 1 frames; the decoder never sees more latent frames
    at once than for the 49-frame video (diffusers runs it over 2-frame batches, carrying its causal
    cache), so its working memory does not grow with the video's length."""
    seen = []
    hook = tiny_vae.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[2]))
    try:
        chunks = {}
        for latent in (13, 25):
            seen.clear()
            raw = torch.randn(1, 16, latent, 8, 12, generator=torch.Generator().manual_seed(latent))
            frames = vae_ops.decode_raw(tiny_vae, raw, tiling=tiling, slicing=False)
            assert frames.shape == (4 * (latent - 1) + 1, 64, 96, 3) and torch.isfinite(frames).all()
            chunks[latent] = list(seen)
    finally:
        hook.remove()
    assert sum(chunks[25]) == 25 and sum(chunks[13]) == 13
    assert max(chunks[25]) == max(chunks[13]) == 3 and len(chunks[25]) == 12 and len(chunks[13]) == 6


@pytest.mark.parametrize("tiled", [False, True])
def test_the_decode_memory_estimate_is_per_chunk_not_per_video(tiled):
    from ingredients_core.sampling.memory import vae_decode_bytes

    per_length = {frames: vae_decode_bytes(vae_ops.latent_frame_count(frames), 60, 90, 2, tiled)
                  for frames in (1, 49, 97, 193, 1025)}
    assert per_length[49] == per_length[97] == per_length[193] == per_length[1025] > per_length[1] > 0
