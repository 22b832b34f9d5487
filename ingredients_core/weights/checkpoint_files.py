"""Transformer checkpoint files: where they are and their tensors, read one at a time.

:func:`resolve` finds the weight files and config of any layout users have (model folder,
``transformer/`` folder, one safetensors file, ``.bin``/``.pt``); :func:`_iter_tensors` reads them
without ever holding a float32 copy of the whole model. :mod:`.checkpoint` builds the model from them,
:mod:`.checkpoint_keys` reads single-file key layouts.
"""
from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import torch

from .integrity import DamagedFileError, doctor_hint, require_whole
from .. import ERROR_NAMESPACE

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
SOURCE_HINT = "the official weights are on Hugging Face: feizhengcong/Ingredients (folder transformer/)"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and what was wrong."""

    __module__ = ERROR_NAMESPACE


@dataclass(frozen=True)
class CheckpointFiles:
    """Resolved location of one transformer checkpoint."""

    weights: tuple[Path, ...]
    config: Optional[Path]


# -- 1. finding the files ------------------------------------------------------------------------
def resolve(path: PathLike) -> CheckpointFiles:
    """Find the weight files and config of a transformer checkpoint at ``path``."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"transformer checkpoint not found: {path} does not exist; {SOURCE_HINT}")
    if path.is_file():
        if path.suffix not in WEIGHT_SUFFIXES:
            raise CheckpointError(f"{path}: expected a {'/'.join(WEIGHT_SUFFIXES)} weight file")
        config = path.with_name("config.json")
        return CheckpointFiles(_whole((path,), "transformer weights file"), config if config.is_file() else None)
    for sub in ("transformer_ema", "transformer"):
        if (path / sub).is_dir():
            return resolve(path / sub)
    return CheckpointFiles(_weight_files(path), path / "config.json" if (path / "config.json").is_file() else None)


def folder_tensors(folder: PathLike) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a weight folder (safetensors shards with their index, or single files), one
    at a time, as they are read: for other models of the folder (the T5 encoder)."""
    return _iter_tensors(_weight_files(Path(folder), "weights"))


def checked_weight_files(folder: PathLike) -> tuple[Path, ...]:
    """The weight files of a model subfolder (``vae/``, ``text_encoder/``), each read for
    completeness; :class:`CheckpointError` names a missing, cut or foreign one."""
    return _weight_files(Path(folder), "weights")


def loading_error(folder: PathLike, what: str, err: BaseException) -> CheckpointError:
    """A library's error while loading ``folder`` (diffusers, transformers), worded for the user."""
    folder = Path(folder)
    return CheckpointError(f"{what} in {folder} cannot be loaded ({type(err).__name__}: {str(err).strip()[:400]}). "
                           f"Fix: download {folder.name}/ again from Hugging Face feizhengcong/Ingredients (every "
                           f"file complete), then {doctor_hint(folder.parent)}")


def _weight_files(folder: Path, what: str = "transformer weights") -> tuple[Path, ...]:
    indexes = sorted(folder.glob("*.safetensors.index.json")) or sorted(folder.glob("*.bin.index.json"))
    if indexes:
        weight_map = json.loads(indexes[0].read_text()).get("weight_map", {})
        shards = sorted({folder / name for name in weight_map.values()})
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise CheckpointError(f"{folder}: shards listed in {indexes[0].name} are missing: {', '.join(missing)}; "
                                  f"download them all ({SOURCE_HINT}), then {doctor_hint(folder.parent)}")
        return _whole(tuple(shards), f"{folder.name} weights file", folder.parent)
    for suffix in WEIGHT_SUFFIXES:
        files = sorted(folder.glob(f"*{suffix}"))
        if files:
            return _whole(tuple(files), f"{folder.name} weights file", folder.parent)
    if what != "transformer weights":
        raise CheckpointError(f"{folder}: no {what} found (*.safetensors, with an index when sharded); "
                              f"{SOURCE_HINT.replace('transformer/', folder.name + '/')}")
    raise CheckpointError(f"{folder}: no transformer weights found (expected diffusion_pytorch_model*.safetensors "
                          f"with config.json, or a transformer/ subfolder); {SOURCE_HINT}")


def _whole(files: tuple[Path, ...], what: str, model_folder: Optional[Path] = None) -> tuple[Path, ...]:
    """``files``, each read for completeness first (:mod:`.integrity`): a cut or foreign file gets
    the pack's message (file, what is wrong, where to download it, the doctor) before any reader
    (``safe_open``, ``torch.load``) raises its own."""
    for file in files:
        try:
            require_whole(file, what, model_folder)
        except DamagedFileError as err:
            raise CheckpointError(str(err)) from err
    return files


# -- 2. reading tensors --------------------------------------------------------------------------
def _tensor_shapes(files: tuple[Path, ...]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for name, tensor in _iter_tensors(files, meta_only=True):
        shapes[name] = tuple(tensor)
    return shapes


def _iter_tensors(files: tuple[Path, ...], meta_only: bool = False) -> Iterator[tuple[str, object]]:
    """Yield (key, tensor) one at a time; with ``meta_only`` yield (key, shape)."""
    for file in files:
        if file.suffix == ".safetensors":
            yield from _read_safetensors(file, meta_only)
        else:
            for key, tensor in _torch_state(file).items():
                yield key, (tuple(tensor.shape) if meta_only else tensor)


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool,
                       "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


def _read_safetensors(file: Path, meta_only: bool) -> Iterator[tuple[str, object]]:
    """Stream a .safetensors file tensor by tensor with plain reads.

    The format is an 8-byte header length, a JSON header (dtype, shape, byte offsets per key) and the
    raw data. Reading each tensor into its own buffer (instead of mapping the whole file, as
    ``safe_open`` does) keeps only one source tensor in memory at a time: a 12.8 GB checkpoint does
    not add 12.8 GB of mapped pages to the process while it is cast and placed.
    """
    def broken(why: str) -> CheckpointError:
        return CheckpointError(f"{file}: not a readable safetensors file ({why}); download it again, then "
                               f"{doctor_hint()}")

    with open(file, "rb") as handle:
        try:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
        except (struct.error, ValueError) as err:
            raise broken(f"bad header: {err}") from err
        if not isinstance(header, dict):
            raise broken("header is not a JSON object")
        header.pop("__metadata__", None)
        if not all(isinstance(v, dict) and {"dtype", "shape", "data_offsets"} <= v.keys() for v in header.values()):
            raise broken("header entries lack dtype, shape or data_offsets")
        start = 8 + size
        for key, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
            if dtype is None:
                raise broken(f"{key} has unsupported dtype {info['dtype']}")
            shape = tuple(info["shape"])
            if meta_only:
                yield key, shape
                continue
            begin, end = info["data_offsets"]
            handle.seek(start + begin)
            data = bytearray(end - begin)
            if handle.readinto(data) != len(data):
                raise broken(f"file ends inside {key}")
            yield key, (torch.frombuffer(data, dtype=dtype).reshape(shape) if data else torch.empty(shape, dtype=dtype))


def _torch_state(file: Path) -> dict[str, torch.Tensor]:
    """A flat {key: tensor} from a .bin/.pt file, read with ``weights_only=True`` only.

    Unwraps the usual containers (``state_dict``, ``model``, ``module``) and a DataParallel
    ``module.`` key prefix.
    """
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # the unpickler raises many types; all mean "unusable file"
        raise CheckpointError(f"{file}: cannot be read safely with torch.load(weights_only=True) "
                              f"({err}); if it is cut short, download it again; if it holds more than tensors, "
                              f"convert it to .safetensors; then {doctor_hint()}") from err
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{file}: expected a mapping of tensor names to tensors (a state dict), "
                              f"found {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _listing(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
