"""Errors raised by the face-feature code.

Both classes subclass a builtin (``ValueError``, ``FileNotFoundError``) so callers that only
know the builtins still catch them; the messages are written for the person who picked the
photo or the model folder, not for a developer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..weights.integrity import doctor_hint, download_location
from .. import ERROR_NAMESPACE

FACE_ENCODER_SOURCE = "https://huggingface.co/feizhengcong/Ingredients/tree/main/face_encoder"


class FaceError(ValueError):
    """A photo cannot give face features: unreadable input, no face, face too small, bad choice.

    ``source`` names the photo (for example ``"person 2, photo 1"``) so the message can point
    at it.
    """

    __module__ = ERROR_NAMESPACE

    def __init__(self, source: str, problem: str):
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}")


class FaceModelsNotFoundError(FileNotFoundError):
    """One or more face model files are missing from every searched folder.

    Attributes:
        missing: the file names (relative paths as in the official ``face_encoder/`` folder).
        searched: the folders that were looked in, in order.
    """

    __module__ = ERROR_NAMESPACE

    def __init__(self, missing: Sequence[str], searched: Sequence[Path]):
        self.missing = list(missing)
        self.searched = [Path(p) for p in searched]
        folders = "\n".join(f"  - {p}" for p in self.searched) or "  (no folders were given)"
        files = "\n".join(f"  - {name}" for name in self.missing)
        message = (
            "Ingredients face models not found.\n"
            f"Missing files:\n{files}\n"
            f"Searched these folders (and a face_encoder/ subfolder of each):\n{folders}\n"
            f"Download them from {FACE_ENCODER_SOURCE} and keep the folder layout:\n"
            "  face_encoder/models/antelopev2/glintr100.onnx\n"
            "  face_encoder/EVA02_CLIP_L_336_psz14_s6B.pt\n"
            "  face_encoder/detection_Resnet50_Final.pth\n"
            "(glintr100.onnx may also sit in ComfyUI's models/insightface/models/antelopev2/).\n"
            f"Then {doctor_hint()}."
        )
        super().__init__(message)


class FaceModelsError(ValueError):
    """A face model file is there but cannot be used (corrupt, truncated, or a different model).

    Attributes:
        path: the file.
        problem: what was wrong with it.
    """

    __module__ = ERROR_NAMESPACE

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(
            f"face model {self.path}: {problem}. Fix: download {download_location(self.path)} again "
            f"({FACE_ENCODER_SOURCE}), then {doctor_hint()}"
        )
