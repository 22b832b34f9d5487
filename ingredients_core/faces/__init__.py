"""Face features for Ingredients: detection, alignment, ArcFace + EVA02-CLIP embeddings, canvas.

Typical use::

    from ingredients_core.faces import FaceEncoder, find_face_models, make_canvas

    encoder = FaceEncoder.load(find_face_models([checkpoint / "face_encoder"]), device="cuda")
    ids = [encoder.encode_person(photos, source=f"person {i + 1}") for i, photos in enumerate(people)]
    canvas = make_canvas([f.crop for f in ids])

Importing this package is cheap: cv2, insightface, facexlib, consisid_eva_clip and onnxruntime
are imported only when models are loaded or images processed; the face packages only through
:func:`~ingredients_core.faces.deps.require`, which turns a missing or broken one into one
:class:`~ingredients_core.faces.deps.FaceDependencyError` (package, import error, fix, doctor).
"""

from .canvas import CANVAS_HEIGHT, CANVAS_WIDTH, MAX_IDS, canvas_slots, make_canvas
from .choice import FACE_CHOICES, FaceChoice, choose_face, faces_left_to_right
from .deps import FaceDependencyError
from .encoder import MIN_FACE_SIZE, FaceEncoder
from .errors import FaceError, FaceModelsError, FaceModelsNotFoundError
from .features import Detection, FaceFeatures, combine_features
from .image import to_rgb_uint8
from .paths import FaceModelPaths, find_face_models

__all__ = [
    "CANVAS_HEIGHT",
    "CANVAS_WIDTH",
    "FACE_CHOICES",
    "MAX_IDS",
    "MIN_FACE_SIZE",
    "Detection",
    "FaceChoice",
    "FaceDependencyError",
    "FaceEncoder",
    "FaceError",
    "FaceFeatures",
    "FaceModelPaths",
    "FaceModelsError",
    "FaceModelsNotFoundError",
    "canvas_slots",
    "choose_face",
    "combine_features",
    "faces_left_to_right",
    "find_face_models",
    "make_canvas",
    "to_rgb_uint8",
]
