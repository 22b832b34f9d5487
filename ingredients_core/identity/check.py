"""The identity check: did every person keep their face, and stay themselves?

From video frames and the people's face features::

    report = evaluate_identity(frames, people, IdentityModels.from_encoder(encoder))
    sys.stdout.write(report.table())

1. ``num_frames`` frames (default 24) are sampled evenly, as the official ``metric/face_sim_fid.py``
   does (``np.linspace(0, total - 1, 24, dtype=int)``; a video shorter than that is used whole).
2. Every face in them is found with the pack's RetinaFace detector, aligned to the pack's 512 px
   crop and embedded with the pack's ArcFace (``glintr100``), exactly as the reference photos were
   when their features were made; the references' ArcFace embeddings are ``id_cond[:, :512]``.
3. Scores (:mod:`~ingredients_core.identity.scores`): the official Face Similarity and the
   per-person, assignment-aware answer, with swaps (given the sampler's routing) and merges.
4. With a CurricularFace file (:mod:`~ingredients_core.identity.curricularface`), the same scores with
   CurricularFace embeddings of the ArcFace-template crops of the same faces.

What differs from the official metric: the detector and ArcFace are the pack's (the official metric
uses insightface's ``buffalo_l`` detector and its ArcFace ``w600k_r50`` on ``norm_crop`` faces), a frame
without faces scores 0 instead of crashing, and the official script computes no CurricularFace score
although it loads the model. Kept: 24 evenly sampled frames, the two largest faces per frame, the
maximum cosine over every (reference, face) pair, the mean over frames.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..faces.errors import FaceError
from ..faces.features import ARCFACE_DIM, Detection, FaceFeatures
from .report import IdentityReport
from .scores import DEFAULT_MARGIN, DEFAULT_THRESHOLD, FrameFaces, RoutingGrid, score_people
from .. import ERROR_NAMESPACE

logger = logging.getLogger(__name__)

#: Frames the official metric samples from each video.
OFFICIAL_FRAMES = 24
MAX_PEOPLE = 4
ARCFACE_NAME = "ArcFace (glintr100)"
CURRICULARFACE_NAME = "CurricularFace (IR-101)"


class IdentityInputError(ValueError):
    """An input of the identity check that cannot work; the message names it and says what to give."""

    __module__ = ERROR_NAMESPACE


@dataclass(frozen=True)
class Reference:
    """One person as the identity check sees them.

    Attributes:
        name: shown in the report.
        arcface: ``(512,)`` float32 ArcFace embedding (any norm).
        crop: the aligned ``(H, W, 3)`` uint8 RGB face (the pack's 512 px FFHQ-template crop).
    """

    name: str
    arcface: np.ndarray
    crop: np.ndarray

    @classmethod
    def from_features(cls, features: FaceFeatures, name: str | None = None) -> Reference:
        """The ArcFace part of ``id_cond`` and the crop of :class:`FaceFeatures`."""
        arcface = features.id_cond[0, :ARCFACE_DIM].detach().float().cpu().numpy()
        return cls(name or features.source, arcface, np.asarray(features.crop))


@dataclass(eq=False)
class IdentityModels:
    """What the check runs: ``encoder`` (a :class:`~ingredients_core.faces.FaceEncoder`: its
    ``detect``, ``arcface`` and ``device``) and, optionally, a CurricularFace backbone; ``curricularface_note``
    says where it came from or why it is absent (shown in the report)."""

    encoder: Any
    curricularface: Any = None
    curricularface_note: str = "CurricularFace: not computed (no model given)"

    @classmethod
    def from_encoder(cls, encoder: Any, curricularface_dirs: Sequence[str | Path] = (),
                     device: Any = "cpu") -> IdentityModels:
        """``encoder`` plus the CurricularFace file found in ``curricularface_dirs`` (or none)."""
        from .curricularface import CURRICULARFACE_FILE, find_curricularface, load_curricularface

        path = find_curricularface(curricularface_dirs)
        if path is None:
            searched = ", ".join(str(d) for d in curricularface_dirs) or "no folders"
            note = (f"CurricularFace: not computed: no {CURRICULARFACE_FILE} in face_encoder/ (searched "
                    f"{searched}); put the official metric's file there for CurricularFace scores")
            return cls(encoder, None, note)
        return cls(encoder, load_curricularface(path, device), f"CurricularFace: {path}")


def sample_indices(total: int, count: int = OFFICIAL_FRAMES) -> list[int]:
    """``count`` evenly spaced frame indices of a ``total``-frame video, as the official metric
    (``linspace(0, total - 1, count)`` truncated to int); all frames when the video is shorter."""
    if total <= 0:
        return []
    if total <= count:
        return list(range(total))
    return [int(i) for i in np.linspace(0, total - 1, count, dtype=int)]


def check_frames(frames: Any, name: str = "frames") -> int:
    """The frame count of a ``(T, H, W, 3)`` video (numpy or torch, uint8 or float in [0, 1])."""
    shape = getattr(frames, "shape", None)
    if shape is None or len(shape) != 4 or shape[-1] not in (3, 4) or (shape[0] and min(shape[1:3]) < 1):
        got = tuple(shape) if shape is not None else type(frames).__name__
        raise IdentityInputError(f"{name}: expected video frames as one batch (frames, height, width, 3), "
                                 f"got {got}")
    return int(shape[0])


def references_of(people: Sequence[Any], name: str = "people") -> list[Reference]:
    """:class:`Reference` for each of 1 to 4 people (``FaceFeatures`` or ``Reference``)."""
    if not people:
        raise IdentityInputError(f"{name}: no people given; give the face features of 1 to {MAX_PEOPLE} people")
    if len(people) > MAX_PEOPLE:
        raise IdentityInputError(f"{name}: {len(people)} people given; the check takes 1 to {MAX_PEOPLE}")
    result = []
    for slot, person in enumerate(people, start=1):
        if isinstance(person, Reference):
            result.append(person)
        elif isinstance(person, FaceFeatures):
            result.append(Reference.from_features(person))
        else:
            raise IdentityInputError(f"{name}: person {slot} is a {type(person).__name__}, not face features")
    return result


def _frame_rgb(frames: Any, index: int) -> np.ndarray:
    from ..faces.image import to_rgb_uint8

    try:
        return to_rgb_uint8(frames[index], f"frame {index}")
    except FaceError as error:
        raise IdentityInputError(f"frames: {error}") from error


@dataclass(frozen=True)
class _FaceCrops:
    """The faces of one frame: boxes ``(n, 4)``, ArcFace embeddings ``(n, 512)``, and the
    CurricularFace crops (RGB, ArcFace template, 224 px) when that model runs."""

    boxes: np.ndarray
    arcface: np.ndarray
    curricular_crops: list


def embed_faces(rgb: np.ndarray, detections: Sequence[Detection], models: IdentityModels) -> _FaceCrops:
    """Align and embed each detected face of one RGB frame (faces that cannot be aligned are skipped)."""
    import cv2

    from .curricularface import curricularface_crop
    from ..faces.detector import align_face

    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    device = models.encoder.device  # ArcFace runs with the ONNX providers that suit the face models' device
    boxes, embeddings, crops = [], [], []
    for detection in detections:
        try:
            crop_bgr = align_face(bgr, detection.landmarks)
        except ValueError:
            logger.debug("face at %s could not be aligned; skipped", detection.box)
            continue
        boxes.append(detection.box)
        embeddings.append(models.encoder.arcface.embedding(crop_bgr, device).numpy()[0])
        if models.curricularface is not None:
            crops.append(curricularface_crop(rgb, detection.landmarks))
    return _FaceCrops(np.asarray(boxes, np.float64).reshape(-1, 4),
                      np.asarray(embeddings, np.float32).reshape(-1, ARCFACE_DIM), crops)


def _reference_curricular(references: Sequence[Reference], model: Any) -> np.ndarray:
    """CurricularFace embeddings of the references' crops: the pack's crop is FFHQ-aligned, so its
    landmarks sit on the FFHQ template; re-aligned from there to the ArcFace template."""
    from .curricularface import curricularface_crop, curricularface_embeddings
    from ..faces.detector import CROP_SIZE, FFHQ_TEMPLATE_512

    crops = [curricularface_crop(r.crop, FFHQ_TEMPLATE_512 * (r.crop.shape[0] / CROP_SIZE)) for r in references]
    return curricularface_embeddings(model, crops)


def evaluate_identity(
    frames: Any,
    people: Sequence[Any],
    models: IdentityModels,
    *,
    num_frames: int = OFFICIAL_FRAMES,
    threshold: float = DEFAULT_THRESHOLD,
    margin: float = DEFAULT_MARGIN,
    routing: RoutingGrid | None = None,
    detections: Mapping[int, Sequence[Detection]] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> IdentityReport:
    """Run the identity check on a whole video.

    Args:
        frames: ``(T, H, W, 3)`` video (numpy or torch; uint8, or float in [0, 1] as ComfyUI IMAGE).
        people: 1 to 4 people in slot order (``FaceFeatures`` or :class:`Reference`).
        models: detector + ArcFace (+ CurricularFace).
        num_frames: frames to sample (24 as officially).
        threshold: similarity at which a person counts as found in a frame.
        margin: a face within this of two people (both above ``threshold``) is a merge.
        routing: the sampler's routing (``(F, rows, cols, people)`` weights), for swaps.
        detections: faces per video frame index, in that frame's pixels; the detector is not run on
            the frames given here (tests, or detections made elsewhere).
        progress: called with (frames done, frames to do) after each sampled frame.

    Raises:
        IdentityInputError: frames not a video batch, no people, bad settings, routing for another
            number of people.
    """
    total = check_frames(frames)
    indices = sample_indices(total, _positive(num_frames, "num_frames"))
    return evaluate_sampled([_frame_rgb(frames, i) for i in indices], indices, total, people, models,
                            threshold=threshold, margin=margin, routing=routing, detections=detections,
                            progress=progress)


def _positive(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise IdentityInputError(f"{name}: must be a whole number of 1 or more, got {value!r}")
    return int(value)


def _check_settings(threshold: float, margin: float, routing: RoutingGrid | None, people: int) -> None:
    if not -1.0 <= float(threshold) <= 1.0:
        raise IdentityInputError(f"threshold: a cosine similarity between -1 and 1, got {threshold}")
    if not 0.0 <= float(margin) <= 2.0:
        raise IdentityInputError(f"margin: between 0 and 2, got {margin}")
    if routing is not None:
        maps = np.asarray(routing.maps)
        if maps.ndim != 4 or maps.shape[-1] != people:
            raise IdentityInputError(f"routing: made for {maps.shape[-1] if maps.ndim == 4 else '?'} people "
                                     f"(shape {tuple(maps.shape)}), but {people} people are checked; give the "
                                     "routing of the run that made this video")


def evaluate_sampled(
    sampled: Sequence[np.ndarray],
    indices: Sequence[int],
    total: int,
    people: Sequence[Any],
    models: IdentityModels,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    margin: float = DEFAULT_MARGIN,
    routing: RoutingGrid | None = None,
    detections: Mapping[int, Sequence[Detection]] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> IdentityReport:
    """:func:`evaluate_identity` on frames already sampled: ``sampled[k]`` is video frame
    ``indices[k]`` (``(H, W, 3)`` uint8 RGB) of a ``total``-frame video."""
    references = references_of(people)
    _check_settings(threshold, margin, routing, len(references))
    faces: list[tuple[int, tuple[int, int], _FaceCrops]] = []
    for done, (index, rgb) in enumerate(zip(indices, sampled), start=1):
        found = detections.get(index) if detections is not None else None
        found = models.encoder.detect(rgb, source=f"frame {index}") if found is None else found
        faces.append((index, (rgb.shape[1], rgb.shape[0]), embed_faces(rgb, found, models)))
        if progress is not None:
            progress(done, len(indices))
    names = [r.name for r in references]
    arc_refs = np.stack([np.asarray(r.arcface, np.float32) for r in references])
    arc_frames = [FrameFaces(i, f.boxes, f.arcface, size) for i, size, f in faces]
    arcface = score_people(ARCFACE_NAME, arc_refs, names, arc_frames, total, threshold, margin, routing)
    curricular = None
    if models.curricularface is not None:
        from .curricularface import curricularface_embeddings

        every = curricularface_embeddings(models.curricularface, [c for _, _, f in faces for c in f.curricular_crops])
        ends = np.cumsum([len(f.curricular_crops) for _, _, f in faces]).tolist()
        cur_frames = [FrameFaces(i, f.boxes, every[end - len(f.curricular_crops):end], size)
                      for (i, size, f), end in zip(faces, ends)]
        cur_refs = _reference_curricular(references, models.curricularface)
        curricular = score_people(CURRICULARFACE_NAME, cur_refs, names, cur_frames, total, threshold, margin,
                                  routing)
    return IdentityReport(frames=tuple(indices), total_frames=total,
                          faces_per_frame=tuple(len(f.boxes) for _, _, f in faces), threshold=float(threshold),
                          margin=float(margin), routing_given=routing is not None, arcface=arcface,
                          curricularface=curricular, curricularface_note=models.curricularface_note)
