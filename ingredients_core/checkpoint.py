"""Find and load Ingredients transformer weights.

One public entry point, :func:`load_transformer`, takes any of the layouts users have:

- the whole model folder (``model_index.json``, ``transformer/`` or ``transformer_ema/``, ...);
  ``transformer_ema/`` is preferred when present, as in the official inference script;
- the ``transformer/`` folder itself: ``config.json`` plus one safetensors file or shards with their
  ``*.safetensors.index.json``;
- a single ``.safetensors`` file: the config comes from a ``config.json`` beside it, else it is
  inferred from the key shapes (:func:`infer_config`);
- ``.bin`` / ``.pt`` files, read with ``torch.load(weights_only=True)`` only.

The model is built on the meta device and every tensor is read, cast to the requested dtype and
assigned one at a time, so no float32 copy of the whole model ever exists in memory.
"""

from __future__ import annotations

import json
import logging
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import torch

from .config import ConfigError, TransformerConfig
from .integrity import DamagedFileError, doctor_hint, require_whole
from . import ERROR_NAMESPACE

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


# -- 3. config -----------------------------------------------------------------------------------
def _indices(shapes: dict[str, tuple[int, ...]], prefix: str) -> set[int]:
    """The numbers N of keys ``{prefix}.N.*`` (layers of a ModuleList)."""
    pattern = re.compile(rf"{re.escape(prefix)}\.(\d+)\.")
    return {int(m.group(1)) for k in shapes if (m := pattern.match(k))}


def infer_config(shapes: dict[str, tuple[int, ...]]) -> TransformerConfig:
    """Derive the config from checkpoint key shapes (no config.json).

    Shapes give the layer and routed-layer counts (hence ``cross_attn_interval``), widths, channels,
    the head size (``norm_q``) and the ID-module sizes; the ID modules' head count cannot be seen in
    shapes and is the official 16; the sample size must be the official 49 x 480 x 720.
    """
    def need(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise CheckpointError(f"cannot infer the config: key {key!r} is missing; is this an Ingredients "
                                  "transformer? Put its config.json beside the file")
        return shapes[key]

    proj = need("patch_embed.proj.weight")                          # (dim, in_channels, p, p)
    head_dim = need("transformer_blocks.0.attn1.norm_q.weight")[0]
    num_layers = len(_indices(shapes, "transformer_blocks"))
    routed = _indices(shapes, "router")
    if not routed:
        raise CheckpointError("no router.* keys: this is a plain CogVideoX transformer, not Ingredients")
    out_channels = need("proj_out.weight")[0] // (proj[2] * proj[3])
    values = dict(
        num_attention_heads=proj[0] // head_dim, attention_head_dim=head_dim, in_channels=proj[1],
        out_channels=out_channels, patch_size=proj[2], num_layers=num_layers,
        cross_attn_interval=num_layers // len(routed), text_embed_dim=need("patch_embed.text_proj.weight")[1],
        time_embed_dim=need("time_embedding.linear_1.weight")[0],
        use_learned_positional_embeddings="patch_embed.pos_embedding" in shapes)
    values.update(_id_sizes(shapes, proj[0]))
    if "patch_embed.pos_embedding" in shapes:
        official = TransformerConfig(**values)
        tokens = shapes["patch_embed.pos_embedding"][1] - official.max_text_seq_length
        grid = official.latent_frames * (official.sample_height // proj[2]) * (official.sample_width // proj[2])
        if tokens != grid:
            raise CheckpointError(f"positional embedding covers {tokens} video tokens, not the 13 x 30 x 45 of "
                                  "49 x 480 x 720; the sample size cannot be inferred: put config.json beside it")
    return TransformerConfig(**values)


def _id_sizes(shapes: dict[str, tuple[int, ...]], dim: int) -> dict:
    from .config import IDModuleConfig

    if "local_facial_extractor.proj_out" not in shapes:
        return {}
    ext_dim, token_dim = shapes["local_facial_extractor.proj_out"]
    depth = len(_indices(shapes, "local_facial_extractor.layers"))
    ids = IDModuleConfig.for_width(
        dim, token_dim=token_dim, extractor_dim=ext_dim, extractor_depth=depth,
        num_tokens=shapes["local_facial_extractor.latents"][1],
        id_cond_dim=shapes["local_facial_extractor.id_embedding_mapping.0.weight"][1],
        vit_dim=shapes["local_facial_extractor.mapping_0.0.weight"][1],
        num_id_embeds=shapes["local_facial_extractor.id_embedding_mapping.6.weight"][0] // ext_dim)
    return {"ids": ids} if ids != IDModuleConfig.for_width(dim) else {}


def read_config(files: CheckpointFiles, shapes: dict[str, tuple[int, ...]]) -> TransformerConfig:
    """The checkpoint's config: its config.json checked against the weights, else inferred from shapes."""
    try:
        if files.config is None:
            return infer_config(shapes)
        data = json.loads(files.config.read_text())
        if not isinstance(data, dict):
            raise ConfigError("expected a JSON object")
        width = data.get("num_attention_heads", 48) * data.get("attention_head_dim", 64)
        overrides = {} if "ids" in data else _id_sizes(shapes, width)
        overrides.update(_interval_from_keys(data, shapes, files.config))
        return TransformerConfig.from_dict(data, **overrides)
    except CheckpointError:
        raise
    except (ValueError, TypeError) as err:  # ConfigError, JSONDecodeError, wrong field types
        raise CheckpointError(f"{files.config or files.weights[0]}: unusable transformer config: {err}") from err


def _interval_from_keys(data: dict, shapes: dict[str, tuple[int, ...]], where: Path) -> dict:
    """``cross_attn_interval`` from the number of routers when config.json lacks it; a clear error
    when the two disagree (the official loader would leave routers randomly initialised)."""
    routers = len(_indices(shapes, "router"))
    layers = data.get("num_layers", TransformerConfig.num_layers)
    if not routers:
        return {}
    interval = layers // routers
    if "cross_attn_interval" not in data:
        logger.info("%s: no cross_attn_interval; %d routers in %d layers give %d", where, routers, layers, interval)
        return {"cross_attn_interval": interval}
    if layers // data["cross_attn_interval"] != routers:
        raise ConfigError(f"cross_attn_interval={data['cross_attn_interval']} gives "
                          f"{layers // data['cross_attn_interval']} routed layers but the weights have {routers} "
                          f"routers (interval {interval}); fix cross_attn_interval in config.json")
    return {}


# -- 4. loading ----------------------------------------------------------------------------------
def load_transformer(path: PathLike, dtype: torch.dtype = torch.bfloat16,
                     device: Union[str, torch.device] = "cpu", strict: bool = True,
                     weight_dtype: Optional[torch.dtype] = None, operations=None, attention=None,
                     keep_fp8: bool = False, config_file: Optional[PathLike] = None):
    """Load an Ingredients transformer from any supported layout (see module doc).

    ``dtype`` is the compute dtype; ``weight_dtype`` (None: the same) the storage dtype of the large
    ``Linear`` weights (:mod:`ingredients_core.model.storage`), e.g. ``torch.float8_e4m3fn``.
    Every tensor is converted on its own while it streams from the file, so no copy of the model
    in the checkpoint's dtype ever exists. ``operations``/``attention``: the layer namespace and
    attention function the model is built with (:mod:`ingredients_core.model.layers`); a stored
    weight dtype other than the compute dtype needs operations that cast per call.
    ``keep_fp8``: tensors of those large layers that the file stores in fp8 keep their fp8 dtype
    (an fp8 file stays fp8; its other tensors, norms and embeddings, come in the compute dtype).
    ``config_file``: the config.json for a single file that has none beside it (else inferred).
    Single files written by ComfyUI's ModelSave or repacked with a ``diffusion_model.`` prefix
    load as they are (:mod:`ingredients_core.checkpoint_keys`).
    Raises :class:`CheckpointError` naming missing keys, unexpected keys and shape mismatches.
    """
    from .checkpoint_keys import detect
    from .model.storage import FP8_DTYPES, convert, storage_module_names, tensor_dtype
    from .model.transformer import IngredientsTransformer

    files = resolve(path)
    if config_file is not None and files.config is None:
        files = CheckpointFiles(files.weights, Path(config_file))
    shapes = _tensor_shapes(files.weights)
    layout = detect(shapes, str(files.weights[0]))
    shapes = layout.shapes(shapes)
    config = read_config(files, shapes)
    with torch.device("meta"):
        reference = IngredientsTransformer(config)  # plain layers: the key layout, whatever the operations
        model = reference if operations is None and attention is None else IngredientsTransformer(
            config, operations=operations, attention=attention)
    where = str(path) if Path(path).is_file() else str(files.weights[0].parent)  # a single file by its name
    check_keys(reference, shapes, where=where, strict=strict)
    expected = reference.state_dict()
    large = storage_module_names(reference) if keep_fp8 or weight_dtype not in (None, dtype) else set()
    storage = large if weight_dtype not in (None, dtype) else set()
    params = {}
    for key, tensor in layout.tensors(_iter_tensors(files.weights)):
        if key in expected:
            target = tensor_dtype(key, storage, dtype, weight_dtype) if tensor.is_floating_point() else tensor.dtype
            if keep_fp8 and tensor.dtype in FP8_DTYPES and key.rpartition(".")[0] in large:
                target = tensor.dtype
            params[key] = convert(tensor, target, device)
            del tensor
    model.load_state_dict(params, strict=False, assign=True)
    _check_materialised(model)
    logger.info("loaded Ingredients transformer (%d layers, %d routed, compute %s, weights %s) from %s",
                config.num_layers, config.num_routed_layers, dtype, weight_dtype or dtype, path)
    return model.eval().requires_grad_(False)


def check_keys(model: torch.nn.Module, shapes: dict[str, tuple[int, ...]], where: str, strict: bool = True) -> None:
    """Compare a checkpoint's keys and shapes with the model's; raise naming every difference."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = [f"{k}: expected {expected[k]}, found {shapes[k]}" for k in sorted(set(expected) & set(shapes))
             if expected[k] != shapes[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_listing(missing)}")
    if unexpected and strict:
        problems.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches: {_listing(wrong)}")
    if problems:
        raise CheckpointError(f"{where}: checkpoint does not match the Ingredients transformer: "
                              + "; ".join(problems))
    if unexpected:
        logger.warning("%s: ignoring %d unexpected keys: %s", where, len(unexpected), _listing(unexpected))


def _listing(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _check_materialised(model: torch.nn.Module) -> None:
    """Every tensor must have come from the checkpoint (the I2V model has no non-persistent buffers)."""
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_meta:
            raise CheckpointError(f"{name} was not in the checkpoint and cannot be rebuilt")
