"""Plain data types of the face features: one detection, and the features of one ID.

Also holds :func:`combine_features`, the rule that turns several photos of one person into
one ID.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

#: Width of the ArcFace (``glintr100``) part at the start of ``id_cond``.
ARCFACE_DIM = 512


@dataclass(frozen=True, eq=False)
class Detection:
    """One face found by the detector.

    Attributes:
        box: ``(x1, y1, x2, y2)`` in pixels.
        score: detector confidence in ``[0, 1]``.
        landmarks: ``(5, 2)`` float32 array of ``(x, y)`` points in RetinaFace's order: the eye on
            the image's left, the other eye, nose tip, left and right mouth corner (image sides).

    Detections returned by :meth:`FaceEncoder.detect` are in the coordinates of the photo as
    given; inside the encoder they are also used in the coordinates of the resized working image.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def center_x(self) -> float:
        return (self.box[0] + self.box[2]) / 2.0

    def scaled(self, sx: float, sy: float) -> Detection:
        """This detection with x multiplied by ``sx`` and y by ``sy`` (landmarks stay float32)."""
        factors = np.array([sx, sy], dtype=np.float64)
        x1, y1, x2, y2 = self.box
        box = (x1 * sx, y1 * sy, x2 * sx, y2 * sy)
        landmarks = (np.asarray(self.landmarks, dtype=np.float64) * factors).astype(np.float32)
        return Detection(box=box, score=self.score, landmarks=landmarks)


@dataclass(eq=False)
class FaceFeatures:
    """Everything the model needs from one identity (one person).

    Attributes:
        id_cond: ``(1, 1280)`` float32 CPU tensor: ArcFace embedding (512, not normalised, as in
            the official code) followed by the L2-normalised EVA02-CLIP pooled embedding (768).
        vit_hidden: five ``(1, 577, 1024)`` float32 CPU tensors: EVA02-CLIP hidden states entering
            blocks 4, 8, 12, 16 and 20. (Tiny test models give ``(1, 577, width)``.)
        crop: the aligned 512 x 512 face crop, RGB uint8, used on the face canvas.
        box: ``(x1, y1, x2, y2)`` of the chosen face in the source photo's pixels.
        landmarks: ``(5, 2)`` float32 landmarks of the chosen face in the source photo's pixels.
        score: detector confidence of the chosen face.
        source: name of the photo (or person) for messages.
        photos: how many photos were combined into these features.

    Features are computed in the encoder's dtype and stored as float32; casting them back to
    that dtype is lossless.
    """

    id_cond: torch.Tensor
    vit_hidden: list[torch.Tensor]
    crop: np.ndarray
    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float
    source: str = "photo"
    photos: int = field(default=1)

    def __post_init__(self) -> None:
        if self.id_cond.ndim != 2 or self.id_cond.shape[0] != 1:
            raise ValueError(f"id_cond must be (1, D), got {tuple(self.id_cond.shape)}")
        if len(self.vit_hidden) != 5:
            raise ValueError(f"vit_hidden must hold 5 tensors, got {len(self.vit_hidden)}")
        if self.crop.dtype != np.uint8 or self.crop.ndim != 3 or self.crop.shape[2] != 3:
            raise ValueError(f"crop must be (H, W, 3) uint8, got {self.crop.shape} {self.crop.dtype}")


def _mean_direction_keep_norm(parts: torch.Tensor) -> torch.Tensor:
    """Mean of the unit directions of the rows of ``parts``, rescaled to their mean norm."""
    norms = parts.norm(dim=-1, keepdim=True)
    direction = (parts / norms).mean(dim=0, keepdim=True)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    return direction * norms.mean()


def combine_features(features: Sequence[FaceFeatures], source: str | None = None) -> FaceFeatures:
    """Merge several photos of one person into one ID.

    Rule (the official code only ever sees one photo per ID, so this is our choice):

    - ArcFace part (first 512 values of ``id_cond``; not normalised in the official code): the
      mean of the unit directions, rescaled to the mean norm of the inputs, so the result keeps
      the scale the model was trained on.
    - EVA02-CLIP part (the rest; L2-normalised in the official code): the mean, L2-normalised.
    - ``vit_hidden``: the element-wise mean at each of the five levels.
    - ``crop``, ``box``, ``landmarks``, ``score``: those of the first photo (the crop is what goes
      on the face canvas).

    One photo is returned unchanged (the same object), so one photo gives exactly the official
    features. Raises ``ValueError`` for an empty list or mismatched shapes.
    """
    if not features:
        raise ValueError("combine_features needs at least one FaceFeatures")
    first = features[0]
    if len(features) == 1:
        return first
    shapes = {(tuple(f.id_cond.shape), tuple(tuple(h.shape) for h in f.vit_hidden)) for f in features}
    if len(shapes) != 1:
        raise ValueError(f"cannot combine features of different shapes: {sorted(shapes)}")
    id_conds = torch.cat([f.id_cond.float() for f in features], dim=0)
    arcface = _mean_direction_keep_norm(id_conds[:, :ARCFACE_DIM])
    eva = id_conds[:, ARCFACE_DIM:].mean(dim=0, keepdim=True)
    eva = eva / eva.norm(dim=-1, keepdim=True)
    hidden = [
        torch.stack([f.vit_hidden[level].float() for f in features]).mean(dim=0)
        for level in range(len(first.vit_hidden))
    ]
    return FaceFeatures(
        id_cond=torch.cat([arcface, eva], dim=-1),
        vit_hidden=hidden,
        crop=first.crop,
        box=first.box,
        landmarks=first.landmarks,
        score=first.score,
        source=source or first.source,
        photos=sum(f.photos for f in features),
    )
