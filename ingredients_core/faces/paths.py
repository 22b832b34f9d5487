"""Finding the three face model files on disk. Nothing is ever downloaded.

The official Hugging Face repo ``feizhengcong/Ingredients`` ships them in ``face_encoder/``:

==============================  ===================================================
file                            used for
==============================  ===================================================
models/antelopev2/glintr100.onnx ArcFace identity embedding (insightface antelopev2)
EVA02_CLIP_L_336_psz14_s6B.pt   EVA02-CLIP-L-14-336 visual tower
detection_Resnet50_Final.pth    facexlib RetinaFace-ResNet50 detector + 5 landmarks
==============================  ===================================================

(``models/buffalo_l/`` and ``parsing_bisenet.pth`` are in that folder too but are not used.)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import FaceModelsNotFoundError

ARCFACE_FILE = "models/antelopev2/glintr100.onnx"
EVA_CLIP_FILE = "EVA02_CLIP_L_336_psz14_s6B.pt"
DETECTION_FILE = "detection_Resnet50_Final.pth"

# Where the antelopev2 folder may sit below a search folder: the official face_encoder/ layout (and
# ComfyUI's models/insightface, which holds models/antelopev2/ too), an antelopev2/ directly below,
# ComfyUI's models folder itself, and a folder given as .../antelopev2 itself ("").
_ANTELOPE_DIRS = ("models/antelopev2", "antelopev2", "insightface/models/antelopev2",
                  "models/insightface/models/antelopev2", "")
# antelopev2.zip unpacked into a folder of its own name gives antelopev2/antelopev2/glintr100.onnx.
_ARCFACE_CANDIDATES = tuple(dict.fromkeys(f"{d}/{nest}glintr100.onnx".lstrip("/") for nest in ("", "antelopev2/")
                                          for d in _ANTELOPE_DIRS))
# Where each file may sit below a search folder; the first entry is the official layout.
_CANDIDATES: dict[str, tuple[str, ...]] = {
    "arcface": _ARCFACE_CANDIDATES,
    "eva_clip": (EVA_CLIP_FILE,),
    "detection": (DETECTION_FILE,),
}
_OFFICIAL_NAMES = {"arcface": ARCFACE_FILE, "eva_clip": EVA_CLIP_FILE, "detection": DETECTION_FILE}


@dataclass(frozen=True)
class FaceModelPaths:
    """Paths of the three face model files.

    Attributes:
        arcface: ``glintr100.onnx`` (insightface antelopev2 recognition model).
        eva_clip: ``EVA02_CLIP_L_336_psz14_s6B.pt`` (EVA02-CLIP checkpoint; its visual tower is used).
        detection: ``detection_Resnet50_Final.pth`` (facexlib RetinaFace-ResNet50 state dict).
    """

    arcface: Path
    eva_clip: Path
    detection: Path

    @classmethod
    def from_face_encoder_dir(cls, folder: str | os.PathLike[str]) -> FaceModelPaths:
        """Paths in the official ``face_encoder/`` layout below ``folder`` (not checked)."""
        root = Path(folder)
        return cls(arcface=root / ARCFACE_FILE, eva_clip=root / EVA_CLIP_FILE, detection=root / DETECTION_FILE)

    def check(self) -> None:
        """Raise :class:`FaceModelsNotFoundError` if any of the files is not a file."""
        missing = [str(path) for path in (self.arcface, self.eva_clip, self.detection) if not Path(path).is_file()]
        if missing:
            raise FaceModelsNotFoundError(missing, sorted({str(Path(p).parent) for p in missing}))


def arcface_home(path: str | os.PathLike[str]) -> Path:
    """The folder an ArcFace file was found below (``face_encoder/`` for the official layout and
    for a nested ``face_encoder/models/antelopev2/antelopev2/``); the file's folder otherwise."""
    path = Path(path)
    for relative in sorted(_ARCFACE_CANDIDATES, key=len, reverse=True):
        parts = Path(relative).parts
        if path.parts[-len(parts):] == parts and len(path.parts) > len(parts):
            return Path(*path.parts[:-len(parts)])
    return path.parent


def is_official_arcface(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` ends in the official ``models/antelopev2/glintr100.onnx`` (not nested)."""
    parts = Path(path).parts
    return parts[-3:] == Path(ARCFACE_FILE).parts and parts[-4:-3] != ("antelopev2",)


def _search_roots(dirs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    roots: list[Path] = []
    for folder in dirs:
        for root in (Path(folder).expanduser(), Path(folder).expanduser() / "face_encoder"):
            if root not in roots:
                roots.append(root)
    return roots


def find_face_models(dirs: Iterable[str | os.PathLike[str]]) -> FaceModelPaths:
    """Look for each face model file in ``dirs`` (in order) and in a ``face_encoder/`` subfolder.

    Each file is looked up on its own, so the ArcFace model may come from ComfyUI's
    ``models/insightface`` while the others come from ``.../Ingredients/face_encoder``. Give, for
    example, ``[<checkpoint>/face_encoder, <ComfyUI>/models/insightface]``.

    Raises:
        FaceModelsNotFoundError: (a ``FileNotFoundError``) listing every missing file, the folders
            searched and where to download the files.
    """
    dirs = list(dirs)
    roots = _search_roots(dirs)
    found: dict[str, Path] = {}
    for kind, relatives in _CANDIDATES.items():
        for root in roots:
            hit = next((root / rel for rel in relatives if (root / rel).is_file()), None)
            if hit is not None:
                found[kind] = hit
                break
    missing = [_OFFICIAL_NAMES[kind] for kind in _CANDIDATES if kind not in found]
    if missing:
        raise FaceModelsNotFoundError(missing, [Path(d).expanduser() for d in dirs])
    return FaceModelPaths(**found)
