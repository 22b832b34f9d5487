"""ArcFace identity embedding: insightface antelopev2 ``glintr100.onnx`` on ONNX Runtime.

Loaded through ``insightface.model_zoo.get_model`` (which recognises a recognition model by its
square >= 112 px input and single output) and run with its ``get_feat`` on the aligned 512 x 512
BGR crop, as the official code does: ``cv2.dnn.blobFromImages`` resizes to 112 x 112 (bilinear),
swaps to RGB and maps pixels with ``(x - 127.5) / 127.5``. The 512-value result is not normalised.

ONNX Runtime lives outside torch, so a host moving the torch face models does not move ArcFace:
:class:`ArcFace` picks the providers at each call from the device the torch face models are on
then (or uses the providers it was given), with one session per provider list, kept.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..weights.integrity import check_file
from .deps import require
from .errors import FaceModelsError

logger = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


def onnx_providers(
    device: str | torch.device = "cpu", available: Sequence[str] | None = None
) -> list[str | tuple[str, dict]]:
    """ONNX Runtime providers that follow the torch device.

    CUDA (on the same GPU index) then CPU when ``device`` is a CUDA device and ONNX Runtime has
    the CUDA provider; otherwise CPU only. ``available`` defaults to what ONNX Runtime reports.
    """
    device = torch.device(device)
    if available is None:
        available = require("onnxruntime").get_available_providers()
    if device.type == "cuda" and CUDA_PROVIDER in available:
        return [(CUDA_PROVIDER, {"device_id": device.index or 0}), CPU_PROVIDER]
    if device.type == "cuda":
        logger.warning("ONNX Runtime has no CUDA provider here; ArcFace runs on the CPU")
    return [CPU_PROVIDER]


def load_arcface(path: str | Path, providers: Sequence[str | tuple[str, dict]]):
    """insightface ``ArcFaceONNX`` for ``path``.

    Raises :class:`~ingredients_core.faces.errors.FaceModelsError` (a ``ValueError``) if the file
    cannot be read by ONNX Runtime or is not a recognition model.
    """
    model_zoo = require("insightface.model_zoo")
    state = check_file(path)
    if not state.ok:  # named before ONNX Runtime's "INVALID_PROTOBUF" / "Protobuf parsing failed"
        raise FaceModelsError(path, state.detail)
    try:
        model = model_zoo.get_model(str(path), providers=list(providers))
    except Exception as error:  # ONNX Runtime's errors (InvalidProtobuf, Fail, ...) subclass Exception only
        raise FaceModelsError(path, f"ONNX Runtime cannot load it ({str(error).strip()[:300]}); "
                                    "the file is corrupt or truncated") from error
    if model is None or getattr(model, "taskname", None) != "recognition":
        raise FaceModelsError(
            path,
            "insightface does not recognise this as an ArcFace model "
            "(expected input (N, 3, 112, 112) and one (N, 512) output)",
        )
    logger.info("ArcFace model loaded from %s (providers %s)", path, model.session.get_providers())
    return model


class ArcFace:
    """ArcFace sessions for one ``glintr100.onnx``: one per provider list, made when first needed.

    Args:
        path: the ONNX file.
        providers: fixed ONNX Runtime providers, or None to follow the device passed to
            :meth:`embedding` (:func:`onnx_providers`).
        device: the device whose session is made now, so a bad file fails at load time.
    """

    def __init__(self, path: str | Path, providers: Sequence[str | tuple[str, dict]] | None = None,
                 device: str | torch.device = "cpu"):
        self.path = Path(path)
        self.providers = list(providers) if providers is not None else None
        self._sessions: dict[str, object] = {}
        self.model_for(device)

    def providers_for(self, device: str | torch.device) -> list[str | tuple[str, dict]]:
        return list(self.providers) if self.providers is not None else onnx_providers(device)

    def model_for(self, device: str | torch.device):
        """The insightface ``ArcFaceONNX`` whose session suits ``device`` (made once, then kept)."""
        providers = self.providers_for(device)
        key = repr(providers)
        if key not in self._sessions:
            self._sessions[key] = load_arcface(self.path, providers)
        return self._sessions[key]

    def embedding(self, crop_bgr: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
        """``(1, 512)`` float32 CPU tensor for an aligned BGR uint8 crop, run with ``device``'s providers."""
        return arcface_embedding(self.model_for(device), crop_bgr)


def arcface_embedding(model, crop_bgr: np.ndarray) -> torch.Tensor:
    """``(1, 512)`` float32 CPU tensor for an aligned BGR uint8 crop (``get_feat``, unnormalised)."""
    feature = np.asarray(model.get_feat(crop_bgr), dtype=np.float32)
    return torch.from_numpy(feature.reshape(1, -1).copy())
