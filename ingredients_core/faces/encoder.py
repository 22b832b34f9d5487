"""``FaceEncoder``: photos in, :class:`FaceFeatures` out, following the official pipeline.

Per photo (official ``process_face_embeddings_split`` with ``infer.py``'s preprocessing):

1. RGB, long edge limited to 1024 px (Lanczos-4), converted to BGR: the *working image*.
2. RetinaFace-ResNet50 finds faces with 5 landmarks (score > 0.97); one is chosen
   (:func:`~ingredients_core.faces.choice.choose_face`; ``best`` = the official first detection).
3. The face is aligned to a 512 x 512 crop.
4. ArcFace (``glintr100.onnx``) on the BGR crop gives 512 values; EVA02-CLIP-L-14-336 on the RGB
   crop gives a pooled 768 (L2-normalised) and 5 hidden states (577 x 1024).
5. ``id_cond = cat([arcface, eva_pooled])`` (1 x 1280).

Box and landmarks are reported in the coordinates of the photo as given (the 1024 px resize is
undone). Faces whose box is shorter than ``min_face_size`` (64 px by default) on its short side,
measured in the working image the crop is cut from, are refused with a :class:`FaceError`: they
would be blown up more than 8x into the 512 px crop and give a blurry identity; pass
``min_face_size=0`` to accept them anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .arcface import ArcFace
from .choice import FaceChoice, choose_face
from .eva_clip import require_face_packages
from .detector import align_face, detect_faces, load_retinaface
from .errors import FaceError
from .eva_clip import eva_features, eva_pixel_values, load_eva_clip
from .features import Detection, FaceFeatures, combine_features
from .image import WorkingImage, to_rgb_uint8, working_image
from .paths import FaceModelPaths

logger = logging.getLogger(__name__)

#: Default smallest accepted face (short side of the box, working-image pixels).
MIN_FACE_SIZE = 64
_NO_FACE_HINT = (
    "no face found. Use a photo where the face is larger, frontal (both eyes visible), "
    "well lit and not covered (sunglasses, masks, hands); a head-and-shoulders photo works best"
)


@dataclass(eq=False)
class FaceEncoder:
    """The three face models. Build it with :meth:`load`.

    Nothing here stores a device: each torch model computes where its parameters are when it is
    called (a host such as ComfyUI may move them at any time) and ArcFace picks its ONNX Runtime
    providers for the device the EVA tower is on at that moment.

    Attributes:
        detector: RetinaFace-ResNet50 (:class:`~ingredients_core.faces.detector.RetinaFaceDetector`,
            float32 as officially).
        arcface: :class:`~ingredients_core.faces.arcface.ArcFace` (ONNX Runtime sessions).
        eva: EVA02-CLIP visual tower (torch).
    """

    detector: torch.nn.Module
    arcface: ArcFace
    eva: torch.nn.Module

    @classmethod
    def load(
        cls,
        paths: FaceModelPaths,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        providers: Sequence[str | tuple[str, dict]] | None = None,
    ) -> FaceEncoder:
        """Load the models from ``paths`` (see :func:`~ingredients_core.faces.paths.find_face_models`).

        Args:
            device: torch device to put the detector and the EVA tower on.
            dtype: EVA tower dtype (the official code uses the video model's dtype, bf16); the
                detector always runs in float32, as in the official code.
            providers: fixed ONNX Runtime providers for ArcFace; default (None) follows the
                device of the torch models at each call
                (:func:`~ingredients_core.faces.arcface.onnx_providers`).

        A face package that cannot be imported raises
        :class:`~ingredients_core.faces.deps.FaceDependencyError` before any file is read.
        """
        require_face_packages()
        paths.check()
        device = torch.device(device)
        return cls(
            detector=load_retinaface(paths.detection, device),
            arcface=ArcFace(paths.arcface, providers, device),
            eva=load_eva_clip(paths.eva_clip, device, dtype),
        )

    @property
    def device(self) -> torch.device:
        """Where the EVA tower (and, as hosts load them together, the detector) is now."""
        return next(self.eva.parameters()).device

    def detect(self, image: Any, source: str = "photo") -> list[Detection]:
        """All faces in a photo (highest score first), in the photo's own pixel coordinates."""
        work = working_image(to_rgb_uint8(image, source))
        return [d.scaled(1.0 / work.scale_x, 1.0 / work.scale_y) for d in self._detect_working(work)]

    def _detect_working(self, work: WorkingImage) -> list[Detection]:
        return detect_faces(self.detector, work.bgr)

    def encode(
        self,
        image: Any,
        choice: FaceChoice | str = "best",
        index: int | None = None,
        source: str = "photo 1",
        detections: Sequence[Detection] | None = None,
        min_face_size: float = MIN_FACE_SIZE,
    ) -> FaceFeatures:
        """Face features of one face in one photo.

        Args:
            image: the photo (see :mod:`ingredients_core.faces.image` for accepted forms).
            choice, index: which face (``best``, ``largest``, or ``index`` = n-th from the left).
            source: the photo's name in error messages and in the result.
            detections: faces already found in this photo (for example by :meth:`detect`), in
                the photo's coordinates; the detector is then not run.
            min_face_size: smallest accepted short side of the face box (working pixels).

        Raises:
            FaceError: unreadable image, no face, bad choice, face too small.
        """
        work = working_image(to_rgb_uint8(image, source))
        if detections is None:
            found = self._detect_working(work)
        else:
            found = [d.scaled(work.scale_x, work.scale_y) for d in detections]
        if not found:
            raise FaceError(source, _NO_FACE_HINT)
        logger.debug("%s: %d face(s) found", source, len(found))
        chosen = choose_face(found, choice, index, image_size=work.size, source=source)
        face = found[chosen]
        _check_face_size(face, min_face_size, source)
        try:
            crop_bgr = align_face(work.bgr, face.landmarks)
        except ValueError as error:
            raise FaceError(source, str(error)) from error
        crop_rgb = crop_bgr[:, :, ::-1].copy()
        device = self.device
        arcface = self.arcface.embedding(crop_bgr, device)
        pooled, hidden = eva_features(self.eva, eva_pixel_values(crop_rgb, self.eva, device))
        if detections is None:
            original = face.scaled(1.0 / work.scale_x, 1.0 / work.scale_y)
        else:
            original = detections[chosen].scaled(1.0, 1.0)  # exact; normalises types
        return FaceFeatures(
            id_cond=torch.cat([arcface, pooled], dim=-1),
            vit_hidden=hidden,
            crop=crop_rgb,
            box=original.box,
            landmarks=original.landmarks,
            score=face.score,
            source=source,
        )

    def encode_person(
        self,
        images: Sequence[Any],
        choice: FaceChoice | str = "best",
        index: int | Sequence[int | None] | None = None,
        source: str = "person",
        min_face_size: float = MIN_FACE_SIZE,
    ) -> FaceFeatures:
        """One ID from one or more photos of the same person.

        Each photo is encoded with :meth:`encode` (named ``"<source>, photo k"``); the results are
        merged by :func:`~ingredients_core.faces.features.combine_features` (one photo: exactly
        its features). ``index`` may be one int for all photos or one entry per photo.
        """
        if len(images) == 0:
            raise FaceError(source, "no photos given")
        if index is None or isinstance(index, int):
            indices: list[int | None] = [index] * len(images)
        else:
            indices = list(index)
            if len(indices) != len(images):
                raise FaceError(source, f"{len(indices)} face indices given for {len(images)} photos")
        features = [
            self.encode(img, choice, idx, f"{source}, photo {k}" if len(images) > 1 else source, None, min_face_size)
            for k, (img, idx) in enumerate(zip(images, indices), start=1)
        ]
        return combine_features(features, source=source)


def _check_face_size(face: Detection, min_face_size: float, source: str) -> None:
    short_side = min(face.width, face.height)
    if short_side < min_face_size:
        raise FaceError(
            source,
            f"the face is too small: {face.width:.0f} x {face.height:.0f} px as the model sees it "
            f"(photos are first shrunk to at most 1024 px on the long edge); at least {min_face_size:.0f} px "
            "is needed for a sharp identity. Use a closer or higher-resolution photo, or crop the photo "
            "around the face",
        )
