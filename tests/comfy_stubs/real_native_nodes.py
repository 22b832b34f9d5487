"""A test-only custom node for the real-ComfyUI test: the tiny model's CONDITIONING and LATENT.

The tiny transformer reads 32-wide text embeddings (no CLIP of ComfyUI's makes them), so this node
gives positive and negative CONDITIONING (1, 226, 32) with an image latent (``concat_latent_image``,
one latent frame) and the empty LATENT (1, 16, 3, 8, 12) of a 9-frame 96 x 64 video, seeded. Linked
into the test server's custom_nodes only; never shipped.
"""

import torch


class IngredientsTestTinyNativeInputs:
    CATEGORY = "testing"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 31})}}

    def make(self, seed):
        g = torch.Generator().manual_seed(seed)
        image = torch.randn(1, 16, 1, 8, 12, generator=g)
        positive = [[torch.randn(1, 226, 32, generator=g), {"concat_latent_image": image}]]
        negative = [[torch.randn(1, 226, 32, generator=g), {"concat_latent_image": image}]]
        return positive, negative, {"samples": torch.zeros(1, 16, 3, 8, 12)}


NODE_CLASS_MAPPINGS = {"IngredientsTestTinyNativeInputs": IngredientsTestTinyNativeInputs}
