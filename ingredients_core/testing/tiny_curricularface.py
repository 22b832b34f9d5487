"""A tiny CurricularFace file in the official ``glint360k_curricular_face_r101_backbone.bin`` layout.

The real file is TFace's IR-101 for 112 x 112 faces (65 M parameters, 250 MB). The tiny one has the
same blocks (3, 13, 30, 3 basic IR blocks, so exactly the real key names) at widths 4, 4, 6, 8, 10
instead of 64, 64, 128, 256, 512: about 1.2 MB, written and run in milliseconds. Seeded random weights:
its embeddings are deterministic but mean nothing.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ingredients_core.identity.curricularface import IRBackbone, ir_layout

IR101_UNITS = (3, 13, 30, 3)
TINY_WIDTHS = (4, 4, 6, 8, 10)  # widening at every stage, as in IR-101 (the layout is read from the shapes)


def tiny_curricularface_state(seed: int = 0, widths=TINY_WIDTHS, units=IR101_UNITS) -> dict[str, torch.Tensor]:
    """Seeded weights for an IR network of ``units`` blocks per stage at ``widths`` (stem first)."""
    generator = torch.Generator().manual_seed(seed)
    model = IRBackbone(*ir_layout(units, widths))
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.ones(value.shape)
        elif key.endswith(("running_mean", "bias")):
            state[key] = torch.zeros(value.shape)
        elif value.dim() == 1:  # batch-norm scales and PReLU slopes (near 1, so images stay apart)
            state[key] = 1.0 + 0.05 * torch.randn(value.shape, generator=generator)
        else:
            fan_in = math.prod(value.shape[1:])
            state[key] = torch.randn(value.shape, generator=generator) / math.sqrt(fan_in)
    return state


def write_tiny_curricularface(path: str | Path, seed: int = 0) -> Path:
    """Write the tiny CurricularFace state dict to ``path`` (``torch.save``, plain tensors only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tiny_curricularface_state(seed), path)
    return path
