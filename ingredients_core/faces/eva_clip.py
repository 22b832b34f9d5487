"""EVA02-CLIP-L-14-336 visual tower: loading (no downloads, safe unpickling) and running.

The tower is built with ``consisid_eva_clip`` (the package the official code vendors) from the
``EVA02-CLIP-L-14-336`` config, so the modules and numerics are the official ones. The checkpoint
is read by us with ``torch.load(weights_only=True)``; only its ``visual.`` part is used and it must
match the tower exactly (the rotary tables ``rope.freqs_cos/sin`` are recomputed by the tower, as
in the official loading path, and dropped from the file).

Sizes (width, depth, MLP width, output width, image size, patch size) are read from the tensor
shapes, so the tiny test checkpoints from :mod:`ingredients_core.testing.tiny_faces` load
through the same code. The real file gives width 1024, 24 blocks, 768 outputs, 336 px, patch 14.

Devices: the tower keeps nothing a host's model management would leave behind (audited, and
checked by ``tests/test_devices.py`` over every submodule): the rotary tables are buffers, the
relative-position indices too, ``image_mean``/``image_std`` are plain tuples, and no module stores
a device. Inputs are made on the device of the tower's parameters at call time.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

from .deps import FACE_MODULES, require
from .errors import FaceModelsError
from .weights import load_torch_file

logger = logging.getLogger(__name__)

EVA_MODEL_NAME = "EVA02-CLIP-L-14-336"
# OpenAI CLIP normalisation; consisid_eva_clip gives the tower these as image_mean/std.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_ROPE_SUFFIXES = ("rope.freqs_cos", "rope.freqs_sin")


class _NotesToDebug(logging.Filter):
    """Drops consisid_eva_clip's root-logger notes ("Shape of rope freq: ...") and logs them at
    debug level on this module's logger instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "consisid_eva_clip" not in record.pathname:
            return True
        logger.debug("consisid_eva_clip: %s", record.getMessage())
        return False


@contextlib.contextmanager
def eva_clip_notes_to_debug() -> Iterator[None]:
    """While inside: what consisid_eva_clip prints to stdout or logs on the root logger goes to
    this module's logger at debug level.

    A ``NullHandler`` is put on the root logger while inside when it has no handler, because
    ``logging.info`` would otherwise call ``logging.basicConfig()`` for the whole process.
    """
    root = logging.getLogger()
    notes = _NotesToDebug()
    placeholder = logging.NullHandler() if not root.handlers else None
    if placeholder is not None:
        root.addHandler(placeholder)
    root.addFilter(notes)
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        root.removeFilter(notes)
        if placeholder is not None:
            root.removeHandler(placeholder)
        for line in buffer.getvalue().splitlines():
            logger.debug("consisid_eva_clip: %s", line)


def require_face_packages() -> None:
    """Import the modules the face models use (detector, ArcFace, EVA-CLIP), so a broken package is
    named before any model file is read (and, in the CLI, before minutes of text encoding)."""
    for name in FACE_MODULES:
        require(name)
    import_eva_clip()  # its import notes go to the log


def import_eva_clip():
    """Import ``consisid_eva_clip``, sending the notes it prints at import time to the log."""
    with eva_clip_notes_to_debug():
        package = require("consisid_eva_clip")
        require("consisid_eva_clip.model")
    return package


def visual_state_dict(checkpoint: Mapping[str, object], path: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """The visual-tower tensors of an EVA-CLIP checkpoint, without prefixes and rotary tables.

    Accepts a plain state dict or one wrapped in ``model``/``module``/``state_dict``, with or
    without ``module.`` prefixes, holding the full CLIP (``visual.*`` keys) or the tower alone.
    """
    state = checkpoint
    for wrapper in ("model", "module", "state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    if not isinstance(state, Mapping) or not state:
        raise FaceModelsError(path, "not an EVA-CLIP state dict")
    state = {(k.removeprefix("module.")): v for k, v in state.items()}
    if any(k.startswith("visual.") for k in state):
        state = {k[7:]: v for k, v in state.items() if k.startswith("visual.")}
    state = {k: v for k, v in state.items() if not k.endswith(_ROPE_SUFFIXES)}
    if "patch_embed.proj.weight" not in state or "pos_embed" not in state:
        raise FaceModelsError(path, "no EVA-CLIP visual tower found (missing patch_embed/pos_embed)")
    return dict(state)


def vision_config_from_state_dict(state: Mapping[str, torch.Tensor]) -> tuple[int, dict]:
    """``(embed_dim, vision_cfg)``: the official config with sizes read from the tensors."""
    eva_clip = import_eva_clip()
    config = eva_clip.get_model_config(EVA_MODEL_NAME)
    if config is None:
        raise RuntimeError(f"consisid_eva_clip does not know {EVA_MODEL_NAME}; check its installation")
    vision = dict(config["vision_cfg"])
    width, _, patch, _ = state["patch_embed.proj.weight"].shape
    tokens = state["pos_embed"].shape[1] - 1
    grid = math.isqrt(tokens)
    layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    mlp_hidden = state["blocks.0.mlp.w1.weight"].shape[0]
    vision.update(
        width=int(width),
        layers=layers,
        patch_size=int(patch),
        image_size=int(grid * patch),
        head_width=min(int(vision["head_width"]), int(width)),
        # int(width * ratio) must give mlp_hidden back exactly inside the tower.
        mlp_ratio=(mlp_hidden + 0.5) / width,
    )
    if grid * grid != tokens:
        raise ValueError(f"EVA-CLIP pos_embed has {tokens} patch tokens, not a square grid")
    return int(state["head.weight"].shape[0]), vision


def load_eva_clip(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Build the EVA02-CLIP visual tower, load ``path`` into it strictly, move it, set eval mode.

    The returned module has ``image_size``, ``image_mean`` and ``image_std`` attributes like the
    one ``create_model_and_transforms(..., force_custom_clip=True).visual`` returns. Raises
    :class:`~ingredients_core.faces.errors.FaceModelsError` for a file that is not a usable
    EVA02-CLIP-L-14-336 checkpoint.
    """
    import_eva_clip()
    model = require("consisid_eva_clip.model")  # imported (with its notes to the log) just above
    state = visual_state_dict(load_torch_file(path), path)
    try:
        embed_dim, vision = vision_config_from_state_dict(state)
    except (KeyError, IndexError, ValueError) as error:
        raise FaceModelsError(path, f"not an {EVA_MODEL_NAME} checkpoint ({type(error).__name__}: {error})") from error
    with eva_clip_notes_to_debug():
        tower = model._build_vision_tower(embed_dim, model.CLIPVisionCfg(**vision))
    try:
        result = tower.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise FaceModelsError(path, f"EVA-CLIP weights do not fit the {EVA_MODEL_NAME} tower ({error})") from error
    missing = [k for k in result.missing_keys if not k.endswith(_ROPE_SUFFIXES)]
    if missing or result.unexpected_keys:
        raise FaceModelsError(
            path,
            f"EVA-CLIP weights do not fit the {EVA_MODEL_NAME} tower "
            f"(missing {missing[:5]}, unexpected {list(result.unexpected_keys)[:5]})",
        )
    tower.image_mean, tower.image_std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    logger.info("EVA-CLIP visual tower loaded from %s (width %d, %d blocks)", path, vision["width"], vision["layers"])
    return tower.to(device=device, dtype=dtype).eval().requires_grad_(False)


def eva_pixel_values(crop_rgb: np.ndarray, tower, device: str | torch.device = "cpu") -> torch.Tensor:
    """The official EVA-CLIP input for an aligned RGB uint8 crop: ``(1, 3, S, S)`` float32.

    RGB / 255, torchvision bicubic resize (antialiased, its default) to the tower's image size,
    normalised with the tower's mean/std; computed on ``device`` like the official code.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import normalize, resize

    # A writable copy: torch.from_numpy warns on read-only arrays (np.asarray of a PIL image).
    pixels = torch.from_numpy(np.array(crop_rgb, copy=True).transpose(2, 0, 1)).float().unsqueeze(0) / 255.0
    pixels = resize(pixels.to(device), tower.image_size, InterpolationMode.BICUBIC)
    return normalize(pixels, tower.image_mean, tower.image_std)


@torch.no_grad()
def eva_features(tower, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run the tower: the L2-normalised pooled embedding and the 5 hidden states, both as float32
    CPU tensors (computed in the tower's dtype, as the official code does)."""
    dtype = next(tower.parameters()).dtype
    pooled, hidden = tower(pixel_values.to(dtype), return_all_features=False, return_hidden=True, shuffle=False)
    pooled = torch.div(pooled, torch.norm(pooled, 2, 1, True))
    if len(hidden) != 5:
        raise ValueError(f"EVA-CLIP tower gave {len(hidden)} hidden states, expected 5 (needs at least 21 blocks)")
    return pooled.float().cpu(), [h.float().cpu() for h in hidden]
