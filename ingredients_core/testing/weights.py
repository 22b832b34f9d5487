"""Deterministic weights and the official on-disk layout, for parity checks and tiny models.

The golden rule (``shared/golden/README.md``): for each key of shape ``s``, draw
``randn(s)`` from a generator seeded with ``crc32(key)``; norm weights (1-D, ``.weight``, ``norm`` in
the key) become ``1 + 0.05 x``, biases ``0.02 x``, everything else ``x / sqrt(fan_in)``.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Iterable, Mapping

import torch


def deterministic_tensor(key: str, shape: Iterable[int]) -> torch.Tensor:
    """The golden weight rule for one key."""
    shape = tuple(shape)
    gen = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")))
    x = torch.randn(shape, generator=gen, dtype=torch.float32)
    if len(shape) == 1 and key.endswith(".weight") and "norm" in key:
        return 1 + 0.05 * x
    if key.endswith(".bias"):
        return 0.02 * x
    if len(shape) == 4:
        fan_in = shape[1] * shape[2] * shape[3]
    elif len(shape) >= 2:
        fan_in = shape[-1]
    else:
        fan_in = 1
    return x / math.sqrt(fan_in)


def deterministic_state_dict(shapes: Mapping[str, Iterable[int]]) -> dict[str, torch.Tensor]:
    return {key: deterministic_tensor(key, shape) for key, shape in shapes.items()}


def write_transformer_folder(folder: Path, state: Mapping[str, torch.Tensor], config: dict,
                             shards: int = 1) -> Path:
    """Write ``folder/config.json`` and ``diffusion_pytorch_model*.safetensors`` (+ index when sharded),
    the layout of the official ``transformer/`` folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    keys = list(state)
    if shards <= 1:
        save_file({k: state[k].contiguous() for k in keys}, str(folder / "diffusion_pytorch_model.safetensors"))
        return folder
    per = math.ceil(len(keys) / shards)
    weight_map = {}
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[i * per:(i + 1) * per]
        save_file({k: state[k].contiguous() for k in part}, str(folder / name))
        weight_map.update({k: name for k in part})
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder
