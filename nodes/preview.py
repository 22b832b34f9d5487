"""Latent previews without a published colour table: fit one on the run's own face canvas.

No latent-to-RGB factors for the CogVideoX VAE ship with ComfyUI (0.33 knows the format but gives
no factors), so the sampler fits a linear map (16 latent channels + bias -> RGB) by least squares
on the face canvas and its encoded latent, which it has anyway. Skin, hair, the grey border and
the white background are the colours the video starts from, so the preview is faithful enough to
watch the video form; it is never used for the output.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

RIDGE = 1e-3


def fit_rgb_factors(canvas: np.ndarray, latent: torch.Tensor) -> tuple[list[list[float]], list[float]]:
    """Factors (16 x 3) and bias (3) mapping a latent cell to RGB in [-1, 1].

    canvas: (H, W, 3) uint8 RGB; latent: (C, h, w), the canvas's scaled latent (frame 0).
    """
    channels, height, width = latent.shape
    pixels = torch.from_numpy(np.ascontiguousarray(canvas)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    pixels = F.interpolate(pixels, size=(height, width), mode="area")[0]
    design = latent.detach().float().cpu().reshape(channels, -1).T
    design = torch.cat([design, torch.ones(design.shape[0], 1)], dim=1)
    target = pixels.reshape(3, -1).T
    gram = design.T @ design + RIDGE * torch.eye(channels + 1)
    solution = torch.linalg.solve(gram, design.T @ target)
    return solution[:channels].tolist(), solution[channels].tolist()


def preview_frame(latents: torch.Tensor) -> torch.Tensor:
    """The middle latent frame of (B, F, C, h, w), kept 5-D: it shows motion better than frame 0,
    which starts as the canvas."""
    middle = latents.shape[1] // 2
    return latents[:, middle:middle + 1]
