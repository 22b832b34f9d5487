"""Reading the face models' torch weight files safely (``torch.load(weights_only=True)`` only).

Every failure to read a file (corrupt, truncated, not a torch file, or a pickle that asks for
code) becomes a :class:`~ingredients_core.faces.errors.FaceModelsError` naming the file and where
to get a good copy.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from ..weights.integrity import check_file
from .errors import FaceModelsError

logger = logging.getLogger(__name__)

def load_torch_file(path: str | Path) -> Mapping[str, torch.Tensor]:
    """``torch.load`` with ``weights_only=True``, memory-mapped when the file format allows.

    Legacy (non-zip) files cannot be memory-mapped; they are read again without ``mmap``, still
    with ``weights_only=True``. Raises :class:`FaceModelsError` when the file cannot be read; a cut
    or foreign file is named before ``torch.load`` runs (:func:`~ingredients_core.weights.integrity.check_file`).
    """
    state = check_file(path)
    if not state.ok:
        raise FaceModelsError(path, state.detail)
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            logger.debug("%s: legacy torch file, read without mmap", path)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the unpickler raises many types (IndexError, EOFError, ...): all mean "unusable"
        raise FaceModelsError(path, _describe(error)) from error


def _describe(error: BaseException) -> str:
    if isinstance(error, pickle.UnpicklingError):
        return ("refused by torch.load(weights_only=True): the file is not a torch file, or holds "
                "Python objects beyond tensors (unpickling those could run code)")
    detail = (str(error).strip().splitlines() or [""])[0][:200]
    return (f"cannot be read with torch.load(weights_only=True) ({type(error).__name__}: {detail}); "
            "the file is corrupt or truncated")
