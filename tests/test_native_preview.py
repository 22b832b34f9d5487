"""Previews of the native MODEL: ComfyUI's Latent2RGB previewer takes the MODEL's latent format and
draws frame 0 of the denoised latent (model space, as KSampler's callback hands it over)."""

from __future__ import annotations


import pytest
import torch

from tests.support import harness  # noqa: E402
from ingredients_core.testing import tiny_models  # noqa: E402



@pytest.fixture(scope="module")
def native(tmp_path_factory):
    harness.load_pack(tiny_models.shared_models_dir(tmp_path_factory))
    yield harness.pack_module("nodes.host")
    harness.unload_pack()


def test_the_models_latent_format_gives_a_latent2rgb_preview(native):
    import latent_preview

    latent_format = native.IngredientsModelConfig.latent_format()
    assert len(latent_format.latent_rgb_factors) == latent_format.latent_channels == 16
    assert all(len(row) == 3 for row in latent_format.latent_rgb_factors)
    previewer = latent_preview.get_previewer(torch.device("cpu"), latent_format)
    assert previewer is not None
    x0 = torch.randn(1, 16, 3, 12, 18, generator=torch.Generator().manual_seed(0))
    kind, image, _ = previewer.decode_latent_to_preview_image("JPEG", x0)
    assert kind == "JPEG" and image.size == (18, 12)  # frame 0 at the latent's size (W, H)
    pixels = torch.tensor(list(image.getdata()), dtype=torch.float32)
    assert pixels.std() > 0  # the factors map the latent to varying colours, not a constant
