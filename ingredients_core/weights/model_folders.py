"""Which folders the loader nodes offer: diffusers-style model folders below the search folders.

ComfyUI's ``get_filename_list`` lists files, never folders, so the loaders walk the search folders
themselves (the host gives them; the doctor builds them from a ComfyUI folder). A candidate is a
search folder itself or a folder up to two levels below it (``Ingredients`` or
``feizhengcong/Ingredients``); its name is the path relative to the search folder, with ``/``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

INGREDIENTS_FOLDER = "ingredients"
INSIGHTFACE_FOLDER = "insightface"
TEXT_ENCODERS_FOLDER = "text_encoders"
MAX_DEPTH = 2


@dataclass(frozen=True)
class FolderKind:
    """What a folder must contain to be offered by one loader.

    ``parts``: each entry is a tuple of alternatives; one of them must exist below the folder.
    ``roots``: the model folder names (ComfyUI's ``folder_paths`` keys) searched, in order.
    """

    label: str
    parts: tuple[tuple[str, ...], ...]
    roots: tuple[str, ...] = (INGREDIENTS_FOLDER,)
    loader: str = ""

    def matches(self, folder: Path) -> bool:
        return all(any((folder / alt).exists() for alt in alternatives) for alternatives in self.parts)

    def describe(self) -> str:
        return ", ".join(" or ".join(f"{alt}" for alt in alternatives) for alternatives in self.parts)


MODEL = FolderKind("Ingredients model", (("transformer", "transformer_ema"), ("scheduler/scheduler_config.json",)),
                   loader="Load Ingredients Model")
VAE = FolderKind("CogVideoX VAE", (("vae",),), loader="Load Ingredients VAE")
T5 = FolderKind("T5 text encoder", (("text_encoder",), ("tokenizer",)),
                roots=(INGREDIENTS_FOLDER, TEXT_ENCODERS_FOLDER), loader="Load Ingredients T5")
FACES = FolderKind("face models", (("face_encoder",),), loader="Load Ingredients Face Encoder")
KINDS = (MODEL, VAE, T5, FACES)


def _children(root: Path, depth: int) -> Iterable[tuple[str, Path]]:
    if depth == 0 or not root.is_dir():
        return
    for child in sorted(root.iterdir(), key=lambda p: p.name.lower()):
        if child.is_dir() and not child.name.startswith("."):
            yield child.name, child
            for name, sub in _children(child, depth - 1):
                yield f"{child.name}/{name}", sub


def find_folders(kind: FolderKind, roots: Sequence[Path]) -> dict[str, Path]:
    """Name -> folder for every folder of ``kind`` below ``roots`` (first root wins)."""
    found: dict[str, Path] = {}
    for root in roots:
        if kind.matches(root):
            found.setdefault(root.name, root)
        for name, folder in _children(root, MAX_DEPTH):
            if kind.matches(folder):
                found.setdefault(name, folder)
    return found
