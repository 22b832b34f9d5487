"""CurricularFace IR-101 (glint360k), the second face-recognition model of the official metric.

The official ``metric/face_sim_fid.py`` builds an IR-101 backbone (the TFace "IR" ResNet: 3, 13, 30
and 3 basic blocks of 64, 128, 256 and 512 channels, a 64-channel 3x3 stem, for 112 x 112 faces) and
loads ``glint360k_curricular_face_r101_backbone.bin`` into it. This module builds the same network
with the same state-dict key names, reading the block layout from the file (so an IR-18/34/50 file
in that layout loads too), and reads the file only with ``torch.load(weights_only=True)``.

Input, as the official ``inference``: an aligned RGB face resized to 112 x 112 (bilinear),
``x / 255``, ``- 0.5``, ``/ 0.5``; output: 512 values, L2-normalised here. The face is aligned to
insightface's 5-point ArcFace template at 224 px (what the official metric's ``norm_crop`` cuts), then
resized to 112, not taken from the pack's 512 px FFHQ crop: this is the crop the model was trained on.

Nothing here is downloaded: the file is optional; without it the identity check has no
CurricularFace scores.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..faces.errors import FaceModelsError
from ..faces.weights import load_torch_file

logger = logging.getLogger(__name__)

CURRICULARFACE_FILE = "glint360k_curricular_face_r101_backbone.bin"
INPUT_SIZE = 112
#: Side of the insightface ArcFace-template crop the official metric cuts before resizing to 112.
ALIGN_SIZE = 224
EMBEDDING_DIM = 512
_BLOCK_KEY = re.compile(r"^body\.(\d+)\.")
_IR_RES_LAYERS = {str(i) for i in range(6)}  # BN, conv, BN, PReLU, conv, BN


class IRBlock(nn.Module):
    """One TFace ``BasicBlockIR``: BN, 3x3 conv, BN, PReLU, 3x3 conv (strided), BN, plus a shortcut
    (a 1x1 max-pool with the stride when the width stays, else a strided 1x1 conv and BN)."""

    def __init__(self, in_channels: int, depth: int, stride: int):
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channels, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.BatchNorm2d(depth),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRBackbone(nn.Module):
    """The IR backbone for 112 x 112 faces: ``(N, 3, 112, 112)`` in ``[-1, 1]`` -> ``(N, 512)``
    (not normalised; :func:`curricularface_embeddings` normalises).

    Args:
        stem: width of the input layer (64 in IR-101).
        blocks: ``(in_channels, depth, stride)`` of each block, in order.
    """

    def __init__(self, stem: int, blocks: Sequence[tuple[int, int, int]]):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem),
                                         nn.PReLU(stem))
        self.body = nn.Sequential(*(IRBlock(i, d, s) for i, d, s in blocks))
        width = blocks[-1][1]
        side = INPUT_SIZE // 2 ** sum(1 for _, _, s in blocks if s == 2)
        self.output_layer = nn.Sequential(nn.BatchNorm2d(width), nn.Dropout(0.4), nn.Flatten(),
                                          nn.Linear(width * side * side, EMBEDDING_DIM),
                                          nn.BatchNorm1d(EMBEDDING_DIM, affine=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.body(self.input_layer(x)))


def ir_layout(units: Sequence[int], widths: Sequence[int]) -> tuple[int, list[tuple[int, int, int]]]:
    """``(stem, blocks)`` of an IR network: ``units[k]`` blocks of ``widths[k + 1]`` channels in stage
    ``k``, the first of each stage with stride 2, as TFace's ``get_blocks`` (IR-101: units
    ``(3, 13, 30, 3)``, widths ``(64, 64, 128, 256, 512)``)."""
    blocks, previous = [], widths[0]
    for count, depth in zip(units, widths[1:]):
        blocks += [(previous, depth, 2)] + [(depth, depth, 1)] * (count - 1)
        previous = depth
    return widths[0], blocks


def layout_from_state_dict(state: Mapping[str, torch.Tensor], path: str | Path) -> tuple[int, list]:
    """Read ``(stem, blocks)`` from the keys and shapes of an IR state dict (see module doc).

    A block starts a stage (stride 2) when it is the first block or has a 1x1 shortcut conv: true of
    every IR depth TFace defines for 112 px faces (18, 34, 50, 100). SE and bottleneck variants
    (more ``res_layer`` entries) are refused with :class:`FaceModelsError`.
    """
    if "input_layer.0.weight" not in state or "output_layer.3.weight" not in state:
        raise FaceModelsError(path, "not a CurricularFace IR backbone state dict (no input_layer.0.weight / "
                                    "output_layer.3.weight)")
    indices = sorted({int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k))})
    if not indices or indices != list(range(len(indices))):
        raise FaceModelsError(path, "the IR backbone's body.N blocks are missing or not numbered 0, 1, 2, ...")
    if any(k.startswith("body.") and ".res_layer." in k and k.split(".")[3] not in _IR_RES_LAYERS for k in state):
        raise FaceModelsError(path, "this is an IR-SE or bottleneck backbone; only the plain IR backbone "
                                    "(IR-101, as in the official metric) is supported")
    blocks = []
    for i in indices:
        in_channels = int(state[f"body.{i}.res_layer.0.weight"].shape[0])
        depth = int(state[f"body.{i}.res_layer.1.weight"].shape[0])
        stride = 2 if i == 0 or f"body.{i}.shortcut_layer.0.weight" in state else 1
        blocks.append((in_channels, depth, stride))
    return int(state["input_layer.0.weight"].shape[0]), blocks


def load_curricularface(path: str | Path, device: str | torch.device = "cpu") -> IRBackbone:
    """The CurricularFace backbone in ``path`` (float32, eval mode, on ``device``).

    ``module.`` prefixes (DataParallel) are removed; loading is strict. A file that cannot be read,
    or whose keys or shapes do not fit, raises :class:`FaceModelsError` naming it.
    """
    state = load_torch_file(path)
    if not isinstance(state, Mapping):
        raise FaceModelsError(path, "not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    stem, blocks = layout_from_state_dict(state, path)
    model = IRBackbone(stem, blocks)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise FaceModelsError(path, f"weights do not fit the CurricularFace IR backbone: {error}") from error
    logger.info("CurricularFace IR backbone (%d blocks) loaded from %s", len(blocks), path)
    return model.float().to(device).eval().requires_grad_(False)


def find_curricularface(dirs: Iterable[str | os.PathLike[str]]) -> Path | None:
    """The first ``glint360k_curricular_face_r101_backbone.bin`` in ``dirs`` or their ``face_encoder/``
    subfolders, or None (the file is optional: nothing is downloaded)."""
    for folder in dirs:
        for root in (Path(folder).expanduser(), Path(folder).expanduser() / "face_encoder"):
            if (root / CURRICULARFACE_FILE).is_file():
                return root / CURRICULARFACE_FILE
    return None


#: insightface's 5-point ArcFace template for a 112 px face (eyes, nose tip, mouth corners).
ARCFACE_TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                                 [41.5493, 92.3655], [70.7299, 92.2041]])


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``(2, 3)`` least-squares similarity (rotation, uniform scale, shift) taking the ``(n, 2)`` points
    ``src`` onto ``dst`` (Umeyama's method, as insightface's ``estimate_norm``)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    u, sigma, vt = np.linalg.svd(dst_c.T @ src_c / len(src))
    signs = np.array([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ np.diag(signs) @ vt
    scale = float((sigma * signs).sum() / max((src_c ** 2).sum() / len(src), 1e-12))
    return np.hstack([scale * rotation, (dst_mean - scale * rotation @ src_mean)[:, None]])


def curricularface_crop(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The official metric's crop: the 5 landmarks mapped onto insightface's ArcFace template at
    224 px (what ``face_align.norm_crop(image, landmarks, 224)`` cuts), black outside the image.

    ``image``: ``(H, W, 3)`` uint8 in any channel order (kept); ``landmarks``: ``(5, 2)`` in its pixels.
    """
    import cv2

    matrix = similarity_transform(landmarks, ARCFACE_TEMPLATE_112 * (ALIGN_SIZE / INPUT_SIZE))
    return cv2.warpAffine(np.ascontiguousarray(image), matrix, (ALIGN_SIZE, ALIGN_SIZE), borderValue=0.0)


def curricularface_input(crops_rgb: Sequence[np.ndarray]) -> torch.Tensor:
    """``(N, 3, 112, 112)`` float32: each RGB crop resized to 112 (bilinear), ``/255 - 0.5) / 0.5``."""
    import cv2

    resized = [cv2.resize(np.ascontiguousarray(c), (INPUT_SIZE, INPUT_SIZE)) for c in crops_rgb]
    batch = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float()
    return (batch / 255.0 - 0.5) / 0.5


def curricularface_embeddings(model: nn.Module, crops_rgb: Sequence[np.ndarray], batch: int = 32) -> np.ndarray:
    """``(N, 512)`` float32 L2-normalised embeddings of aligned RGB crops (any size; see
    :func:`curricularface_crop`). An empty list gives ``(0, 512)``."""
    if len(crops_rgb) == 0:
        return np.zeros((0, EMBEDDING_DIM), np.float32)
    device = next(model.parameters()).device
    parts = []
    with torch.no_grad():
        for start in range(0, len(crops_rgb), batch):
            pixels = curricularface_input(crops_rgb[start:start + batch]).to(device)
            parts.append(torch.nn.functional.normalize(model(pixels).float(), dim=-1).cpu())
    return torch.cat(parts).numpy()
