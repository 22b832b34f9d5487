"""Stand-in for ``latent_preview.get_previewer`` with the Latent2RGB method (ComfyUI's default
without TAESD): frame 0 of a (B, C, T, H, W) latent through the format's linear RGB factors,
which move to the latent's device and dtype first, as in ComfyUI."""

import torch
from PIL import Image

MAX_PREVIEW_RESOLUTION = 512


class Latent2RGBPreviewer:
    def __init__(self, factors, bias=None):
        self.factors = torch.tensor(factors).transpose(0, 1)
        self.bias = torch.tensor(bias) if bias is not None else None

    def decode_latent_to_preview_image(self, preview_format, x0):
        self.factors = self.factors.to(dtype=x0.dtype, device=x0.device)
        if self.bias is not None:
            self.bias = self.bias.to(dtype=x0.dtype, device=x0.device)
        x0 = x0[0, :, 0] if x0.ndim == 5 else x0[0]
        rgb = torch.nn.functional.linear(x0.movedim(0, -1), self.factors, self.bias)
        pixels = ((rgb + 1.0) / 2.0).clamp(0, 1).mul(255).to(device="cpu", dtype=torch.uint8).numpy()
        return ("JPEG", Image.fromarray(pixels), MAX_PREVIEW_RESOLUTION)


def get_previewer(device, latent_format):
    if latent_format.latent_rgb_factors is None:
        return None
    return Latent2RGBPreviewer(latent_format.latent_rgb_factors, latent_format.latent_rgb_factors_bias)
