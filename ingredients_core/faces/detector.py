"""Face detection (facexlib RetinaFace-ResNet50) and 512 x 512 alignment.

facexlib's ``FaceRestoreHelper`` would download weights while it is constructed (its detector,
and a ParseNet it loads unconditionally), so this module builds the same ``RetinaFace`` network
itself, loads the state dict safely, and reproduces the two helper steps the official code uses:

- ``get_face_landmarks_5(only_center_face=False)``: ``detect_faces(bgr, 0.97)``; every detection
  kept, in detector order (highest score first, after NMS).
- ``align_warp_face()``: a similarity transform from the 5 landmarks to facexlib's FFHQ template
  (``cv2.estimateAffinePartial2D``, LMEDS) and ``cv2.warpAffine`` to 512 x 512, border filled with
  the grey ``(135, 133, 132)``.

The tests check both steps against facexlib's own helper.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import FaceModelsError
from .features import Detection
from .weights import load_torch_file

logger = logging.getLogger(__name__)

#: facexlib's detection threshold in ``FaceRestoreHelper.get_face_landmarks_5``.
DETECTION_THRESHOLD = 0.97
#: Side of the aligned crop (``face_size=512``, ``crop_ratio=(1, 1)``, ``upscale_factor=1``).
CROP_SIZE = 512
#: facexlib's 5-point FFHQ template for a 512 x 512 face (eyes, nose, mouth corners).
FFHQ_TEMPLATE_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.1936],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ]
)
BORDER_VALUE = (135, 133, 132)


def load_retinaface(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """facexlib ``RetinaFace(network_name='resnet50')`` with the weights in ``path`` (float32, eval).

    The state dict is read with ``torch.load(weights_only=True)``; ``module.`` prefixes (from
    DataParallel training) are removed, as facexlib does; loading is strict. A file that cannot
    be read or does not fit raises :class:`~ingredients_core.faces.errors.FaceModelsError`.
    """
    from facexlib.detection.retinaface import RetinaFace

    state = load_torch_file(path)
    if isinstance(state, dict):
        state = {(k.removeprefix("module.")): v for k, v in state.items()}
    if not isinstance(state, dict) or "body.conv1.weight" not in state:
        raise FaceModelsError(path, "not a facexlib RetinaFace-ResNet50 state dict (no body.conv1.weight)")
    with warnings.catch_warnings():
        # RetinaFace builds torchvision's resnet50 with the deprecated ``pretrained=False``.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\..*")
        model = RetinaFace(network_name="resnet50", half=False, device=torch.device(device))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise FaceModelsError(path, f"weights do not fit facexlib RetinaFace-ResNet50: {error}") from error
    logger.info("RetinaFace-ResNet50 detector loaded from %s", path)
    return model.to(device).eval().requires_grad_(False)


def detections_from_rows(rows: np.ndarray) -> list[Detection]:
    """Turn facexlib's ``(n, 15)`` rows (box 4, score, 5 landmarks x/y) into detections."""
    result = []
    for row in rows:
        # facexlib builds the landmark array from the float32 row; keep that dtype (it feeds
        # cv2.estimateAffinePartial2D, so the crop stays bit-identical to the helper's).
        landmarks = np.array([[row[i], row[i + 1]] for i in range(5, 15, 2)])
        box = (float(row[0]), float(row[1]), float(row[2]), float(row[3]))
        result.append(Detection(box=box, score=float(row[4]), landmarks=landmarks))
    return result


def detect_faces(model: torch.nn.Module, bgr: np.ndarray) -> list[Detection]:
    """All faces in a BGR uint8 image, in the image's coordinates, highest score first."""
    with torch.no_grad():
        rows = model.detect_faces(bgr, DETECTION_THRESHOLD)
    return detections_from_rows(np.asarray(rows))


def align_face(bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The 512 x 512 aligned crop (same channel order as ``bgr``) for 5 landmarks."""
    import cv2

    matrix = cv2.estimateAffinePartial2D(landmarks, FFHQ_TEMPLATE_512 * (CROP_SIZE / 512.0), method=cv2.LMEDS)[0]
    if matrix is None:
        raise ValueError("could not fit an alignment to the face landmarks (degenerate points)")
    return cv2.warpAffine(
        bgr, matrix, (CROP_SIZE, CROP_SIZE), borderMode=cv2.BORDER_CONSTANT, borderValue=BORDER_VALUE
    )
