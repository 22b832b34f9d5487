"""ComfyUI's model folders (``folder_paths``): the pack's folders registered, their search paths
(``extra_model_paths.yaml`` entries included), and the single-file diffusion models a loader may pick.

The folder names are the library's (``ingredients_core.weights.model_folders``), defined once there.
"""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from ...ingredients_core.weights.model_folders import INGREDIENTS_FOLDER, INSIGHTFACE_FOLDER, TEXT_ENCODERS_FOLDER

__all__ = ["INGREDIENTS_FOLDER", "INSIGHTFACE_FOLDER", "SINGLE_FILE_FOLDERS", "TEXT_ENCODERS_FOLDER", "filenames",
           "model_roots", "register_model_folders", "single_file_names", "single_file_path"]


def register_model_folders() -> None:
    """Add ``models/ingredients`` and ``models/insightface`` to ComfyUI's model folders.

    Paths from ``extra_model_paths.yaml`` (loaded by ComfyUI before custom nodes) are kept; the
    default folder is appended after them.
    """
    for name in (INGREDIENTS_FOLDER, INSIGHTFACE_FOLDER):
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))


def model_roots(kind: str) -> list[Path]:
    """The search folders ComfyUI knows for ``kind`` (``ingredients``, ``insightface``, ...)."""
    try:
        return [Path(p) for p in folder_paths.get_folder_paths(kind)]
    except KeyError:
        return []


def filenames(kind: str) -> list[str]:
    """The files ComfyUI lists in the folders of ``kind`` (none for a kind this host lacks)."""
    try:
        return folder_paths.get_filename_list(kind)
    except KeyError:
        return []


#: ComfyUI's folders of single-file diffusion models, where ModelSave writes and fp8 repacks go.
SINGLE_FILE_FOLDERS = ("diffusion_models", "checkpoints")


def single_file_names() -> list[str]:
    """``folder/name`` for every ``.safetensors`` file ComfyUI lists in :data:`SINGLE_FILE_FOLDERS`."""
    return [f"{folder}/{name}" for folder in SINGLE_FILE_FOLDERS for name in filenames(folder)
            if name.lower().endswith(".safetensors")]


def single_file_path(name: str, input_name: str) -> Path:
    """The file for a :func:`single_file_names` value, or FileNotFoundError naming the input."""
    folder, _, rest = name.partition("/")
    path = folder_paths.get_full_path(folder, rest) if folder in SINGLE_FILE_FOLDERS else None
    if path is None:
        folders = " or ".join(SINGLE_FILE_FOLDERS)
        raise FileNotFoundError(f"{input_name}: no file {name!r} in ComfyUI's models/{folders} folders (or their "
                                "extra_model_paths.yaml entries); pick one from the list")
    return Path(path)
