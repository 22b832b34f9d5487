"""Is a model file whole? Read from the file's own structure, never guessed from its size.

One reader per format the pack loads:

- ``.safetensors``: an 8-byte header length, a JSON header (dtype, shape and byte range of every
  tensor) and the data. Whole when the header parses, the byte ranges tile the data without gaps
  and the header length + the JSON + the last byte range end exactly at the file's length (what
  ``safe_open`` requires; a cut file fails there with ``incomplete metadata`` or ``invalid header
  length``).
- ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` written by ``torch.save``: a zip whose central directory
  sits at the very end, so a cut file has none. Whole when the directory reads, holds a
  ``data.pkl`` and every record lies inside the file. A legacy (non-zip) pickle has no directory:
  it is reported as legacy, and :func:`check_file` with ``deep=True`` loads it with
  ``torch.load(weights_only=True)`` to be sure.
- ``.onnx`` and the sentencepiece ``.model``: protocol buffers. Whole when the top-level fields
  walk to exactly the end of the file (a cut file ends inside a field) and the main field is there
  (ONNX's graph, the sentencepiece pieces). ONNX Runtime itself is not needed for this.
- ``.json``: parses.

Nothing here imports torch (except the deep check of a legacy pickle) or any model library.
"""

from __future__ import annotations

import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .. import ERROR_NAMESPACE

SOURCE = "Hugging Face feizhengcong/Ingredients"
DOCTOR_COMMAND = "python -m ingredients_core doctor"
DOCTOR_NODE = "Ingredients Check Install"
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
MAX_SAFETENSORS_HEADER = 100_000_000  # safetensors refuses larger headers
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
                "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
# Folders of the Hugging Face download; a file below one of them is named from there.
COMPONENTS = ("transformer", "transformer_ema", "vae", "text_encoder", "tokenizer", "scheduler", "face_encoder")
# Face files that users move out of face_encoder/: where the download has them.
OFFICIAL_LOCATIONS = {
    "glintr100.onnx": "face_encoder/models/antelopev2/glintr100.onnx",
    "EVA02_CLIP_L_336_psz14_s6B.pt": "face_encoder/EVA02_CLIP_L_336_psz14_s6B.pt",
    "detection_Resnet50_Final.pth": "face_encoder/detection_Resnet50_Final.pth",
}
OFFICIAL_SIZES = {"EVA02_CLIP_L_336_psz14_s6B.pt": "about 856 MB"}
OTHER_SOURCES = {"glint360k_curricular_face_r101_backbone.bin": "Hugging Face BestWishYsh/ConsisID-preview "
                                                                "(face_encoder/)"}


def doctor_hint(folder: str | Path | None = None) -> str:
    """How to run the doctor, for the end of an error message."""
    target = f" --model {folder}" if folder else ""
    return (f"check the whole install with `{DOCTOR_COMMAND}{target}` (run in the pack's folder, with "
            f"ComfyUI's Python) or the {DOCTOR_NODE} node")


def size_text(size: int) -> str:
    """``28.1 MB = 28,123,456 bytes``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit} = {size:,} bytes"
    return f"{size} bytes"


def download_location(path: str | Path) -> str:
    """Where a file is in the download: ``vae/diffusion_pytorch_model.safetensors``, or the source
    of a file the download does not have."""
    path = Path(path)
    if path.name in OTHER_SOURCES:
        return f"{path.name} from {OTHER_SOURCES[path.name]}"
    if path.name in OFFICIAL_LOCATIONS:
        return f"{OFFICIAL_LOCATIONS[path.name]} from {SOURCE}"
    for parent in path.parents:
        if parent.name in COMPONENTS:
            return f"{path.relative_to(parent.parent).as_posix()} from {SOURCE}"
    return f"{path.name} from {SOURCE}"


@dataclass(frozen=True)
class FileState:
    """What reading a file found. ``ok``: whole (as far as its format tells); ``detail``: what is
    wrong, or what was read; ``note``: something to know that is no problem (a legacy format)."""

    path: Path
    ok: bool
    kind: str
    detail: str
    note: str = ""


class DamagedFileError(ValueError):
    """A model file that is missing, cut short or not the format its name says; the message names
    it, what is wrong, where the download has it and the doctor."""

    __module__ = ERROR_NAMESPACE

    def __init__(self, path: str | Path, problem: str, what: str = "model file", folder: str | Path | None = None):
        self.path, self.problem = Path(path), problem
        super().__init__(damaged_message(path, problem, what, folder))


def damaged_message(path: str | Path, problem: str, what: str = "model file",
                    folder: str | Path | None = None) -> str:
    return (f"{what} {path} is unusable: {problem}. Fix: download {download_location(path)} again "
            f"(it must be the complete file), then {doctor_hint(folder)}")


def require_whole(path: str | Path, what: str = "model file", folder: str | Path | None = None) -> None:
    """Raise :class:`DamagedFileError` unless :func:`check_file` finds ``path`` whole."""
    state = check_file(path)
    if not state.ok:
        raise DamagedFileError(path, state.detail, what, folder)


def check_file(path: str | Path, deep: bool = False) -> FileState:
    """Read ``path`` by its format (module doc); ``deep`` also loads a legacy torch pickle."""
    path = Path(path)
    suffix = path.suffix.lower()
    kind = {".safetensors": "safetensors", ".onnx": "ONNX", ".model": "sentencepiece", ".json": "JSON"}.get(
        suffix, "torch" if suffix in TORCH_SUFFIXES else "file")
    if not path.is_file():
        return FileState(path, False, kind, "missing" if not path.exists() else "not a file")
    size = path.stat().st_size
    if size == 0:
        return FileState(path, False, kind, "empty (0 bytes)")
    try:
        if kind == "safetensors":
            return _safetensors(path, size)
        if kind == "torch":
            return _torch_file(path, size, deep)
        if kind in ("ONNX", "sentencepiece"):
            return _protobuf(path, size, kind)
        if kind == "JSON":
            json.loads(path.read_text(encoding="utf-8"))
            return FileState(path, True, kind, size_text(size))
    except (OSError, ValueError) as err:  # unreadable file, bad JSON, bad UTF-8, an overlong varint
        return FileState(path, False, kind, f"cannot be read ({type(err).__name__}: {err})")
    return FileState(path, True, kind, size_text(size))


# -- 1. safetensors -----------------------------------------------------------------------------
def safetensors_header(path: str | Path) -> dict:
    """The JSON header of a safetensors file (raises ValueError on a bad one)."""
    return _read_header(path)[0]


def _read_header(path: str | Path) -> tuple[dict, int]:
    """(header, offset of the tensor data) of a safetensors file."""
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError("shorter than the 8-byte header length")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_SAFETENSORS_HEADER:
            raise ValueError(f"header length {length:,} is impossible (the first bytes are not a safetensors header)")
        raw = handle.read(length)
    if len(raw) < length:
        raise ValueError(f"the file ends inside its header (the header is {length:,} bytes, the file holds "
                         f"{len(raw):,} of them): the download stopped early")
    header = json.loads(raw)
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return header, 8 + length


def _safetensors(path: Path, size: int) -> FileState:
    def bad(problem: str) -> FileState:
        return FileState(path, False, "safetensors", f"{problem} (file size {size_text(size)})")

    try:
        header, data_start = _read_header(path)
    except ValueError as err:
        return bad(str(err))
    header.pop("__metadata__", None)
    spans = []
    for key, info in header.items():
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] and isinstance(info.get("shape"), list)):
            return bad(f"header entry {key!r} lacks a valid shape or data_offsets")
        width = _DTYPE_BYTES.get(info.get("dtype"))
        count = 1
        for dim in info["shape"]:
            count *= int(dim)
        if width is not None and offsets[1] - offsets[0] != count * width:
            return bad(f"tensor {key!r} has {offsets[1] - offsets[0]:,} bytes, its shape and dtype need {count * width:,}")
        spans.append((offsets[0], offsets[1], key))
    end = 0
    for begin, stop, key in sorted(spans):
        if begin != end:
            return bad(f"tensor data is not contiguous at {key!r} (a gap or an overlap)")
        end = stop
    data = size - data_start
    if end > data:
        return bad(f"truncated: the header describes {end:,} bytes of tensor data, the file holds {data:,} "
                   f"({end - data:,} missing): the download stopped early")
    if end < data:
        return bad(f"{data - end:,} bytes follow the last tensor its header describes")
    return FileState(path, True, "safetensors", f"{len(spans)} tensors, {size_text(size)}")


def index_problems(index: str | Path) -> list[str]:
    """What is wrong with a ``*.safetensors.index.json`` and its shards: missing shards, keys the
    index puts in a shard that does not hold them. Damaged shards are :func:`check_file`'s job."""
    index = Path(index)
    weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        return [f"{index.name} has no weight_map"]
    problems = []
    by_shard: dict[str, set[str]] = {}
    for key, shard in weight_map.items():
        by_shard.setdefault(shard, set()).add(key)
    for shard, keys in sorted(by_shard.items()):
        file = index.parent / shard
        if not file.is_file():
            problems.append(f"shard {shard} listed in {index.name} is missing")
        elif file.suffix == ".safetensors" and check_file(file).ok:
            absent = keys - set(safetensors_header(file))
            if absent:
                problems.append(f"{shard} lacks {len(absent)} tensors that {index.name} puts there "
                                f"(e.g. {sorted(absent)[0]}): a shard from another download")
    return problems


# -- 2. torch files -----------------------------------------------------------------------------
def _torch_file(path: Path, size: int, deep: bool) -> FileState:
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic.startswith(b"PK"):
        return _torch_zip(path, size)
    if magic[:1] == b"\x80":  # a pickle (protocol 2+): torch's legacy format
        note = "legacy torch format (a pickle, not a zip): it has no directory to check"
        if not deep:
            return FileState(path, True, "torch (legacy)", size_text(size), note + "; it is checked when loaded")
        return _load_legacy(path, size, note)
    return FileState(path, False, "torch", f"not a torch file: it starts with {magic!r}, neither a zip nor a "
                                           f"pickle (file size {size_text(size)})")


def _torch_zip(path: Path, size: int) -> FileState:
    hint = f"; the complete file is {OFFICIAL_SIZES[path.name]}" if path.name in OFFICIAL_SIZES else ""
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except zipfile.BadZipFile:
        return FileState(path, False, "torch zip", f"truncated or damaged: {size_text(size)}; it starts as the zip "
                                                   f"torch.save writes, but the zip directory that ends such a file "
                                                   f"is missing{hint}")
    except (OSError, ValueError) as err:
        return FileState(path, False, "torch zip", f"damaged: its zip directory cannot be read ({err}); "
                                                   f"{size_text(size)}{hint}")
    if not any(r.filename.endswith("data.pkl") for r in records):
        return FileState(path, False, "torch zip", f"a zip file without data.pkl: not a torch checkpoint ({size_text(size)})")
    beyond = [r.filename for r in records if r.header_offset + r.compress_size > size]
    if beyond:
        return FileState(path, False, "torch zip", f"record {beyond[0]} lies beyond the end of the file "
                                                   f"({size_text(size)}){hint}")
    return FileState(path, True, "torch zip", f"{len(records)} records, {size_text(size)}")


def _load_legacy(path: Path, size: int, note: str) -> FileState:
    import pickle

    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, OSError, IndexError, KeyError) as err:
        return FileState(path, False, "torch (legacy)", f"torch.load(weights_only=True) fails: {type(err).__name__}: "
                                                        f"{str(err).strip()[:200]} (file size {size_text(size)})")
    return FileState(path, True, "torch (legacy)", f"loads, {size_text(size)}", note.split(":")[0])


# -- 3. protocol buffers (ONNX, sentencepiece) --------------------------------------------------
_MAIN_FIELD = {"ONNX": (7, "graph"), "sentencepiece": (1, "pieces")}


def _varint(handle) -> int | None:
    value = shift = 0
    for _ in range(10):
        byte = handle.read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
    raise ValueError("a varint longer than 10 bytes: not a protocol buffer")


def _protobuf(path: Path, size: int, kind: str) -> FileState:
    def bad(problem: str) -> FileState:
        return FileState(path, False, kind, f"{problem} (file size {size_text(size)})")

    fields = set()
    with open(path, "rb") as handle:
        while handle.tell() < size:
            start = handle.tell()
            tag = _varint(handle)
            field, wire = (tag >> 3, tag & 7) if tag is not None else (0, 0)
            if tag is None or field == 0 or wire not in (0, 1, 2, 5):
                return bad(f"byte {start:,} is not a field of a protocol buffer: the file is damaged")
            length = {1: 8, 5: 4}.get(wire, 0)
            if wire == 2:
                length = _varint(handle)
            elif wire == 0 and _varint(handle) is None:
                length = None
            if length is None or handle.tell() + length > size:
                return bad(f"truncated: field {field} at byte {start:,} runs past the end of the file: "
                           "the download stopped early")
            handle.seek(length, 1)
            fields.add(field)
    number, name = _MAIN_FIELD[kind]
    if number not in fields:
        return bad(f"no {name} in it: not a complete {kind} model")
    return FileState(path, True, kind, size_text(size))
