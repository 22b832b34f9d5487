"""Face detection (facexlib RetinaFace-ResNet50) and 512 x 512 alignment.

facexlib's ``FaceRestoreHelper`` would download weights while it is constructed (its detector,
and a ParseNet it loads unconditionally), so this module builds the same ``RetinaFace`` network
itself, loads the state dict safely, and reproduces the two helper steps the official code uses:

- ``get_face_landmarks_5(only_center_face=False)``: ``detect_faces(bgr, 0.97)``; every detection
  kept, in detector order (highest score first, after NMS). :class:`RetinaFaceDetector` holds the
  network and runs ``detect_faces``' arithmetic on whatever device the host put it on.
- ``align_warp_face()``: a similarity transform from the 5 landmarks to facexlib's FFHQ template
  (``cv2.estimateAffinePartial2D``, LMEDS) and ``cv2.warpAffine`` to 512 x 512, border filled with
  the grey ``(135, 133, 132)``.

The tests check both steps against facexlib's own ``RetinaFace.detect_faces`` and helper.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from .deps import require
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
#: facexlib ``RetinaFace`` children that make the network (its state-dict prefixes).
_NETWORK_PARTS = ("body", "fpn", "ssh1", "ssh2", "ssh3", "ClassHead", "BboxHead", "LandmarkHead")


class RetinaFaceDetector(torch.nn.Module):
    """facexlib's RetinaFace-ResNet50 network with device-free pre- and post-processing.

    facexlib's ``RetinaFace`` keeps a ``device`` field and a plain ``mean_tensor`` attribute
    that ComfyUI's model management does not move, and sends the photo to that device. This module
    holds facexlib's layers themselves (same state-dict keys: ``body.``, ``fpn.``, ``ssh1..3.``,
    ``ClassHead.``, ``BboxHead.``, ``LandmarkHead.``), the BGR mean as a buffer, and computes
    :meth:`detect` wherever its parameters are at call time, with the arithmetic of facexlib's
    ``RetinaFace.detect_faces(image, threshold)`` (origin size, NMS 0.4, float32).
    """

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        for name in _NETWORK_PARTS:
            self.add_module(name, getattr(network, name))
        self.cfg = dict(network.cfg)
        self.register_buffer("mean", torch.tensor([104.0, 117.0, 123.0]).view(1, 3, 1, 1), persistent=False)

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(box offsets, class probabilities, landmark offsets) per prior, as facexlib's test phase."""
        fpn = self.fpn(list(self.body(inputs).values()))
        features = [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]
        boxes = torch.cat([head(f) for head, f in zip(self.BboxHead, features)], dim=1)
        classes = torch.cat([head(f) for head, f in zip(self.ClassHead, features)], dim=1)
        landmarks = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features)], dim=1)
        return boxes, torch.nn.functional.softmax(classes, dim=-1), landmarks

    @torch.no_grad()
    def detect(self, bgr: np.ndarray, threshold: float = DETECTION_THRESHOLD, nms_threshold: float = 0.4) -> np.ndarray:
        """facexlib's ``(n, 15)`` float32 rows (box, score, 5 landmarks) for a BGR uint8 image."""
        utils = require("facexlib.detection.retinaface_utils")
        PriorBox, decode, decode_landm, py_cpu_nms = utils.PriorBox, utils.decode, utils.decode_landm, utils.py_cpu_nms
        device = next(self.parameters()).device
        height, width = bgr.shape[:2]
        image = torch.from_numpy(bgr.astype(np.float32).transpose(2, 0, 1)).unsqueeze(0).to(device)
        image = image - self.mean.to(device)
        scale = torch.tensor([width, height] * 2, dtype=torch.float32, device=device)
        scale1 = torch.tensor([width, height] * 5, dtype=torch.float32, device=device)
        loc, conf, landmarks = self(image)
        priors = PriorBox(self.cfg, image_size=image.shape[2:]).forward().to(device)
        variance = self.cfg["variance"]
        boxes = (decode(loc.data.squeeze(0), priors.data, variance) * scale).cpu().numpy()
        scores = conf.squeeze(0).data.cpu().numpy()[:, 1]
        points = (decode_landm(landmarks.squeeze(0), priors, variance) * scale1).cpu().numpy()
        keep = np.where(scores > threshold)[0]
        boxes, points, scores = boxes[keep], points[keep], scores[keep]
        order = scores.argsort()[::-1]
        boxes, points, scores = boxes[order], points[order], scores[order]
        rows = np.hstack((boxes, scores[:, np.newaxis])).astype(np.float32, copy=False)
        kept = py_cpu_nms(rows, nms_threshold)
        return np.concatenate((rows[kept, :], points[kept]), axis=1)


def load_retinaface(path: str | Path, device: str | torch.device = "cpu") -> RetinaFaceDetector:
    """:class:`RetinaFaceDetector` with the facexlib RetinaFace-ResNet50 weights in ``path``
    (float32, eval, on ``device``).

    The state dict is read with ``torch.load(weights_only=True)``; ``module.`` prefixes (from
    DataParallel training) are removed, as facexlib does; loading is strict. A file that cannot
    be read or does not fit raises :class:`~ingredients_core.faces.errors.FaceModelsError`.
    """
    RetinaFace = require("facexlib.detection.retinaface").RetinaFace  # noqa: N806 (a class)
    state = load_torch_file(path)
    if isinstance(state, dict):
        state = {(k.removeprefix("module.")): v for k, v in state.items()}
    if not isinstance(state, dict) or "body.conv1.weight" not in state:
        raise FaceModelsError(path, "not a facexlib RetinaFace-ResNet50 state dict (no body.conv1.weight)")
    with warnings.catch_warnings():
        # RetinaFace builds torchvision's resnet50 with the deprecated ``pretrained=False``.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\..*")
        network = RetinaFace(network_name="resnet50", half=False, device=torch.device("cpu"))
    model = RetinaFaceDetector(network)
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


def detect_faces(model: RetinaFaceDetector, bgr: np.ndarray) -> list[Detection]:
    """All faces in a BGR uint8 image, in the image's coordinates, highest score first."""
    return detections_from_rows(np.asarray(model.detect(bgr, DETECTION_THRESHOLD)))


def align_face(bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The 512 x 512 aligned crop (same channel order as ``bgr``) for 5 landmarks."""
    import cv2

    matrix = cv2.estimateAffinePartial2D(landmarks, FFHQ_TEMPLATE_512 * (CROP_SIZE / 512.0), method=cv2.LMEDS)[0]
    if matrix is None:
        raise ValueError("could not fit an alignment to the face landmarks (degenerate points)")
    return cv2.warpAffine(
        bgr, matrix, (CROP_SIZE, CROP_SIZE), borderMode=cv2.BORDER_CONSTANT, borderValue=BORDER_VALUE
    )
