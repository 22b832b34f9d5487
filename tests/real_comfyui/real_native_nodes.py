"""Test-only custom nodes for the real-ComfyUI tests and scripts; linked into the test server's
custom_nodes only (``real_server.base_directory``), never shipped.

- *IngredientsTestTinyNativeInputs*: the tiny model's CONDITIONING and LATENT. The tiny transformer
  reads 32-wide text embeddings (no CLIP of ComfyUI's makes them), so this node gives positive and
  negative CONDITIONING (1, 226, 32) with an image latent (``concat_latent_image``: a canvas frame, then zero frames)
  and the empty LATENT (1, 16, 3, 8, 12) of a 9-frame 96 x 64 video, seeded.
- *IngredientsTestCapture*: an output node that writes what reaches it (an IMAGE, a LATENT's
  ``samples``, any tensor) unchanged as float32 to ``OUTPUT/captures/NAME.npy``, so a script reads
  the raw values that a saver would have rounded (``real_frames.py``, ``real_core_nodes_check.py``).
"""

import os

import numpy as np
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
        first = torch.randn(1, 16, 1, 8, 12, generator=g)  # the canvas latent, then zero frames (the official layout)
        image = torch.cat([first, torch.zeros(1, 16, 2, 8, 12)], dim=2)
        positive = [[torch.randn(1, 226, 32, generator=g), {"concat_latent_image": image}]]
        negative = [[torch.randn(1, 226, 32, generator=g), {"concat_latent_image": image}]]
        return positive, negative, {"samples": torch.zeros(1, 16, 3, 8, 12)}


class IngredientsTestCapture:
    CATEGORY = "testing"
    RETURN_TYPES = ()
    FUNCTION = "capture"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("*",), "name": ("STRING", {"default": "capture"})}}  # "*": any type

    def capture(self, value, name):
        import folder_paths

        tensor = value["samples"] if isinstance(value, dict) else value
        folder = os.path.join(folder_paths.get_output_directory(), "captures")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{name}.npy")
        np.save(path, tensor.detach().to(device="cpu", dtype=torch.float32).numpy())
        return {"ui": {"captured": [path]}}


NODE_CLASS_MAPPINGS = {"IngredientsTestTinyNativeInputs": IngredientsTestTinyNativeInputs,
                       "IngredientsTestCapture": IngredientsTestCapture}
