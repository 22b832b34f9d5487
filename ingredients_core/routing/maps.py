"""Routing maps: which person the router gave each video region (the paper's Figure 5, as a tool).

Input: the assignment weights of a :class:`~ingredients_core.routing.plan.RoutingRecorder`,
(F, rows, cols, P) on the token grid. Output: RGB frames (T, H, W, 3) in [0, 1], one colour per ID
mixed by the weights, drawn over the decoded video or over a grey grid.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

# One colour per ID slot (same order as the canvas slots and the web extension's badges).
ID_COLORS = ((0.90, 0.30, 0.24), (0.20, 0.55, 0.90), (0.30, 0.75, 0.35), (0.95, 0.75, 0.15))
NOBODY = (0.5, 0.5, 0.5)


def latent_index(frame: int, latent_frames: int, temporal: int = 4) -> int:
    """The latent frame a video frame belongs to (frame 0 alone, then groups of ``temporal``)."""
    return min(0 if frame == 0 else (frame - 1) // temporal + 1, latent_frames - 1)


def colorize(maps: torch.Tensor) -> torch.Tensor:
    """(F, rows, cols, P) weights -> (F, rows, cols, 3) colours; unassigned weight shows grey."""
    persons = maps.shape[-1]
    colors = torch.tensor(ID_COLORS[:persons], dtype=torch.float32)           # (P, 3)
    rest = (1 - maps.sum(-1, keepdim=True)).clamp(0, 1)                        # weight given to nobody
    return maps.float() @ colors + rest * torch.tensor(NOBODY)


def render(maps: torch.Tensor, frames: Optional[torch.Tensor] = None, size: Optional[tuple[int, int]] = None,
           num_frames: Optional[int] = None, alpha: float = 0.55) -> torch.Tensor:
    """Routing maps as video frames (T, H, W, 3) in [0, 1].

    frames: decoded video (T, H, W, 3) to draw over (colours blended with ``alpha``); without it the
    colours are drawn on a grey grid of ``size`` (H, W) with ``num_frames`` frames, token borders marked.
    """
    if maps.dim() != 4:
        raise ValueError(f"routing maps must be (frames, rows, cols, IDs), got {tuple(maps.shape)}")
    latent_frames, rows, cols, _ = maps.shape
    if frames is not None:
        total, height, width = frames.shape[:3]
    elif size is not None and num_frames is not None:
        (height, width), total = size, num_frames
    else:
        raise ValueError("give the decoded frames, or a size and a frame count for the grey grid")
    colored = colorize(maps).permute(0, 3, 1, 2)                                   # (F, 3, rows, cols)
    colored = F.interpolate(colored, size=(height, width), mode="nearest").permute(0, 2, 3, 1)
    index = torch.tensor([latent_index(t, latent_frames) for t in range(total)])
    per_frame = colored[index]                                                     # (T, H, W, 3)
    if frames is not None:
        return (1 - alpha) * frames.float().cpu() + alpha * per_frame
    grid = per_frame.clone()
    ys = torch.arange(rows) * height // rows
    xs = torch.arange(cols) * width // cols
    grid[:, ys, :, :] *= 0.8
    grid[:, :, xs, :] *= 0.8
    return grid
