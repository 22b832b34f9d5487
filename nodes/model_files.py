"""Finding diffusers-style model folders below ComfyUI's model search folders.

ComfyUI's ``get_filename_list`` lists files, never folders, so the loaders walk the search folders
(from :func:`host.model_roots`, which include ``extra_model_paths.yaml`` entries) themselves. A
candidate is a search folder itself or a folder up to two levels below it (``Ingredients`` or
``feizhengcong/Ingredients``); its name is the path relative to the search folder, with ``/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..ingredients_core.weights import model_folders
from ..ingredients_core.weights.integrity import COMPONENTS, doctor_hint
from ..ingredients_core.weights.model_folders import FACES, MODEL, T5, VAE, FolderKind
from . import host

SOURCE = "Hugging Face feizhengcong/Ingredients"
__all__ = ["FACES", "MODEL", "T5", "VAE", "FolderKind", "find_folders", "folder_names", "resolve", "require_file",
           "search_dirs", "search_roots", "validate_name"]


def search_roots(kind: FolderKind) -> list[Path]:
    """The search folders ComfyUI knows for ``kind`` (its ``roots``, in order, without repeats)."""
    roots: list[Path] = []
    for name in kind.roots:
        for root in host.model_roots(name):
            if root not in roots:
                roots.append(root)
    return roots


def find_folders(kind: FolderKind) -> dict[str, Path]:
    """Name -> folder for every folder of ``kind`` below the search folders (first root wins)."""
    return model_folders.find_folders(kind, search_roots(kind))


def folder_names(kind: FolderKind) -> list[str]:
    return sorted(find_folders(kind), key=str.lower)


def missing_message(kind: FolderKind, name: str, input_name: str) -> str:
    searched = ", ".join(str(r) for r in search_roots(kind)) or "(no search folders registered)"
    return (f"{input_name}: no folder {name!r} holding the {kind.label} ({kind.describe()}) in: {searched}. "
            f"Put the downloaded folder in one of them, or add its parent folder to extra_model_paths.yaml "
            f"under the key '{kind.roots[0]}'. Download: {SOURCE}. Then {doctor_hint()}.")


def resolve(kind: FolderKind, name: str, input_name: str) -> Path:
    """The folder for a combo value, or FileNotFoundError naming it, the search folders and the source."""
    folder = find_folders(kind).get(name)
    if folder is None:
        raise FileNotFoundError(missing_message(kind, name, input_name))
    return folder


def validate_name(kind: FolderKind, name: str, input_name: str) -> bool | str:
    """For ``validate_inputs``: True, or the message ComfyUI shows on the node."""
    return True if name in find_folders(kind) else missing_message(kind, name, input_name)


def require_file(path: Path, what: str, folder: Path, *alternatives: str) -> Path:
    """``path`` (or the first existing alternative name beside it) when it is a file; otherwise
    FileNotFoundError naming the file, the folder and the source."""
    for candidate in (path, *(path.with_name(name) for name in alternatives)):
        if candidate.is_file():
            return candidate
    names = " or ".join([path.name, *alternatives])
    raise FileNotFoundError(f"missing file {names} ({what}) in {folder}; download the complete folder from "
                            f"{SOURCE}, then {doctor_hint(folder.parent if folder.name in COMPONENTS else folder)}.")


def search_dirs(folder: Path, extra_kinds: Sequence[str]) -> list[Path]:
    """``folder`` followed by every search folder of ``extra_kinds`` (for example insightface)."""
    dirs = [folder]
    for kind in extra_kinds:
        dirs.extend(r for r in host.model_roots(kind) if r not in dirs)
    return dirs
