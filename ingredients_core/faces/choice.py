"""Which face of a photo becomes the ID: a pure function over detections.

``best`` is the official behaviour (the detector's first detection, which is its highest score);
``largest`` and ``index`` help with group photos.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from .errors import FaceError
from .features import Detection

FaceChoice = Literal["best", "largest", "index"]
FACE_CHOICES: tuple[str, ...] = ("best", "largest", "index")


def faces_left_to_right(detections: Sequence[Detection]) -> list[int]:
    """Indices into ``detections`` ordered by box centre x (ties keep detector order)."""
    return sorted(range(len(detections)), key=lambda i: (detections[i].center_x, i))


def _clipped_area(det: Detection, image_size: tuple[int, int] | None) -> float:
    x1, y1, x2, y2 = det.box
    if image_size is not None:
        width, height = image_size
        x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
        y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
    return max(x2 - x1, 0.0) * max(y2 - y1, 0.0)


def choose_face(
    detections: Sequence[Detection],
    choice: FaceChoice | str = "best",
    index: int | None = None,
    *,
    image_size: tuple[int, int] | None = None,
    source: str = "photo",
) -> int:
    """Pick one face; returns its position in ``detections``.

    Args:
        detections: faces in detector order (highest score first, as facexlib returns them).
        choice: ``"best"`` (default, official): the first detection, i.e. the highest score.
            ``"largest"``: the largest box area (clipped to the image when ``image_size`` is given;
            ties go to the earlier detection). ``"index"``: the ``index``-th face counting from
            the left by box centre x, 0 = leftmost.
        index: required for ``"index"``; ignored by the other choices (so a UI can always pass
            its index widget's value).
        image_size: ``(width, height)`` of the image the boxes refer to.
        source: photo name for error messages.

    Raises:
        FaceError: no detections, unknown choice, missing/out-of-range index.
    """
    if not detections:
        raise FaceError(source, "no face found")
    if choice == "best":
        chosen = 0
    elif choice == "largest":
        areas = [_clipped_area(d, image_size) for d in detections]
        chosen = max(range(len(areas)), key=lambda i: (areas[i], -i))
    elif choice == "index":
        if index is None or isinstance(index, bool) or not isinstance(index, int):
            raise FaceError(source, f"face choice 'index' needs an integer index, got {index!r}")
        order = faces_left_to_right(detections)
        if not 0 <= index < len(order):
            raise FaceError(
                source,
                f"face index {index} is out of range: {len(order)} face(s) found, "
                f"counted from the left starting at 0 (valid: 0..{len(order) - 1})",
            )
        chosen = order[index]
    else:
        raise FaceError(source, f"unknown face choice {choice!r}; use one of {', '.join(FACE_CHOICES)}")
    return chosen
