"""Tiny stand-ins for the three face models, in the official ``face_encoder/`` layout.

:func:`write_tiny_face_models` writes, below one folder:

``models/antelopev2/glintr100.onnx``
    An ONNX "ArcFace" with the official signature: input ``input.1`` of shape
    ``(N, 3, 112, 112)`` float, one output ``(N, 512)`` (a strided convolution and a linear
    layer). insightface's model router recognises it as a recognition model, exactly like the
    real file (square input >= 112 px, one output); its first nodes are not named ``Sub``/``Mul``,
    so insightface uses mean/std 127.5 for it, as for ``glintr100``.
``EVA02_CLIP_L_336_psz14_s6B.pt``
    An EVA02-CLIP checkpoint (``visual.*`` keys plus ``logit_scale``, as a full CLIP checkpoint
    has) of the official architecture at a small width: 21 blocks (the minimum for the five
    hidden states), 336 px input, patch 14, so 577 tokens; width ``eva_width`` (default 64, one
    head) instead of 1024 and pooled output ``eva_embed_dim`` (default 768). The encoder then
    gives ``id_cond`` of ``512 + eva_embed_dim`` values (1280 by default) and five hidden states
    of ``(1, 577, eva_width)``.
``detection_Resnet50_Final.pth``
    A facexlib RetinaFace-ResNet50 state dict with every real key and shape (it loads strictly).
    A real one is 27 M parameters (109 MB); to keep this one at about 10 MB, all convolution
    weights are views into one shared random buffer (``torch.save`` stores a shared buffer once).
    Its classification heads are set so the face score is about 2e-9 everywhere: the tiny
    detector deterministically finds no face, on any image. Tests of face choice therefore pass
    detections in (``FaceEncoder.encode(..., detections=...)``).

Everything is deterministic for a given ``seed`` and takes well under a second to write (after
the one-off imports of torchvision/facexlib).
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
import torch

from ingredients_core.faces.deps import require
from ingredients_core.faces.paths import ARCFACE_FILE, DETECTION_FILE, EVA_CLIP_FILE

TINY_EVA_WIDTH = 64
TINY_EVA_EMBED_DIM = 768
TINY_EVA_LAYERS = 21


def write_tiny_arcface(path: Path, seed: int = 0) -> Path:
    """Write the tiny ArcFace ONNX file to ``path``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    conv_w = rng.normal(0.0, 0.05, (8, 3, 16, 16)).astype(np.float32)
    fc_w = rng.normal(0.0, 0.05, (512, 8 * 7 * 7)).astype(np.float32)
    fc_b = rng.normal(0.0, 0.01, (512,)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input.1", "conv_w"], ["conv_out"], name="Conv_0", kernel_shape=[16, 16], strides=[16, 16]),
        helper.make_node("Flatten", ["conv_out"], ["flat"], name="Flatten_1", axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["embedding"], name="Gemm_2", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["None", 512])],
        initializer=[
            numpy_helper.from_array(conv_w, "conv_w"),
            numpy_helper.from_array(fc_w, "fc_w"),
            numpy_helper.from_array(fc_b, "fc_b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_tiny_eva_clip(
    path: Path, width: int = TINY_EVA_WIDTH, embed_dim: int = TINY_EVA_EMBED_DIM, seed: int = 0
) -> Path:
    """Write a tiny EVA02-CLIP checkpoint (official config, ``width`` wide, 21 blocks) to ``path``."""
    from ingredients_core.faces.eva_clip import EVA_MODEL_NAME, import_eva_clip

    eva_clip = import_eva_clip()
    model = require("consisid_eva_clip.model")

    vision = dict(eva_clip.get_model_config(EVA_MODEL_NAME)["vision_cfg"])
    vision.update(width=width, layers=TINY_EVA_LAYERS, head_width=min(64, width))
    with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(io.StringIO()):
        torch.manual_seed(seed)
        tower = model._build_vision_tower(embed_dim, model.CLIPVisionCfg(**vision))
    state = {f"visual.{k}": v for k, v in tower.state_dict().items() if "rope.freqs_" not in k}
    state["logit_scale"] = torch.tensor(4.6052)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def _retinaface_state_dict(seed: int) -> dict[str, torch.Tensor]:
    import warnings

    RetinaFace = require("facexlib.detection.retinaface").RetinaFace  # noqa: N806 (a class)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\..*")
        with torch.device("meta"):  # only the key names and shapes are needed
            model = RetinaFace(network_name="resnet50", half=False, device=torch.device("meta"))
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    largest = max(int(np.prod(s)) for s in shapes.values())
    longest_vector = max(int(np.prod(s)) for s in shapes.values() if len(s) == 1)
    generator = torch.Generator().manual_seed(seed)
    shared = torch.empty(largest).uniform_(-0.02, 0.02, generator=generator)
    ones, zeros = torch.ones(longest_vector), torch.zeros(longest_vector)
    state: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        n = int(np.prod(shape))
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.long)
        elif key.endswith("running_var") or (len(shape) == 1 and key.endswith("weight")):
            state[key] = ones[:n].view(shape)  # batch-norm scales and variances
        elif key.endswith(("running_mean", "bias")):
            state[key] = zeros[:n].view(shape)
        else:
            state[key] = shared[:n].view(shape)
    for key in [k for k in shapes if k.startswith("ClassHead.")]:
        if key.endswith("weight"):
            state[key] = torch.zeros(shapes[key])
        else:  # (background, face) logits per anchor: +10 / -10
            state[key] = torch.tensor([10.0, -10.0]).repeat(shapes[key][0] // 2)
    return state


def write_tiny_retinaface(path: Path, seed: int = 0) -> Path:
    """Write the RetinaFace-ResNet50 stand-in (real keys/shapes, never detects a face)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_retinaface_state_dict(seed), path)
    return path


def write_tiny_face_models(
    folder: str | os.PathLike[str],
    *,
    eva_width: int = TINY_EVA_WIDTH,
    eva_embed_dim: int = TINY_EVA_EMBED_DIM,
    seed: int = 0,
) -> Path:
    """Write the three stand-ins below ``folder`` in the ``face_encoder/`` layout; return ``folder``.

    ``find_face_models([folder])`` then finds them and ``FaceEncoder.load`` loads them.
    """
    root = Path(folder)
    write_tiny_arcface(root / ARCFACE_FILE, seed)
    write_tiny_eva_clip(root / EVA_CLIP_FILE, eva_width, eva_embed_dim, seed)
    write_tiny_retinaface(root / DETECTION_FILE, seed)
    return root
