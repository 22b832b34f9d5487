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
from pathlib import Path
from typing import Optional, Union

import torch

from ..model.config import ConfigError, TransformerConfig
from .checkpoint_files import CheckpointError, CheckpointFiles, PathLike, _iter_tensors, _listing, _tensor_shapes, resolve

logger = logging.getLogger(__name__)


# -- 1. config (files and tensors: :mod:`.checkpoint_files`) -----------------------------------------------------------------------------------
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
    from ..model.config import IDModuleConfig

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


# -- 2. loading ----------------------------------------------------------------------------------
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
    load as they are (:mod:`ingredients_core.weights.checkpoint_keys`).
    Raises :class:`CheckpointError` naming missing keys, unexpected keys and shape mismatches.
    """
    from .checkpoint_keys import detect
    from ..model.storage import FP8_DTYPES, convert, storage_module_names, tensor_dtype
    from ..model.transformer import IngredientsTransformer

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


def _check_materialised(model: torch.nn.Module) -> None:
    """Every tensor must have come from the checkpoint (the I2V model has no non-persistent buffers)."""
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_meta:
            raise CheckpointError(f"{name} was not in the checkpoint and cannot be rebuilt")
