"""Key layouts of single-file transformer checkpoints: ComfyUI's *ModelSave* and repacks.

ComfyUI's ModelSave (``comfy.sd.save_checkpoint``, 0.3.64 and 0.33.0) writes the diffusion model's
keys under ``model.diffusion_model.``, adds empty marker tensors (``v_pred`` for a v-prediction model,
``ztsnr`` for zero-terminal-SNR sampling) and JSON metadata (the prompt); repacks (fp8 conversions)
use ``diffusion_model.`` or no prefix. The prefix is found from the keys (where the patch embedding
is), never from the file name. Weights with per-tensor scales (``scaled_fp8``, ``*.scale_weight``,
``*.weight_scale``: ComfyUI's scaled and quantized formats) are refused by name: their values are
not the weights without the scales.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .checkpoint_files import _SAFETENSORS_DTYPES, CheckpointError, _listing, resolve

logger = logging.getLogger(__name__)

PREFIXES = ("model.diffusion_model.", "diffusion_model.")
ANCHOR = "patch_embed.proj.weight"
#: A large Linear weight of every model: its stored dtype is the file's storage dtype.
STORAGE_PROBE = "transformer_blocks.0.attn1.to_q.weight"
#: ModelSave's markers: how the host samples the model. Ingredients is always v-prediction with a
#: zero-terminal-SNR schedule, so they carry nothing to load.
MARKERS = ("v_pred", "ztsnr")
SCALED_MARKERS = ("scaled_fp8",)
#: Block keys of ComfyUI's native CogVideoX (``comfy/ldm/cogvideo/model.py``), which the official layout never has.
COMFY_COGVIDEOX = re.compile(r"^blocks\.\d+\.(q|k|v|norm_q|norm_k|attn_out|ff_proj|ff_out)\.weight$")
SCALE_SUFFIXES = (".scale_weight", ".scale_input", ".weight_scale", ".input_scale", ".comfy_quant")


@dataclass(frozen=True)
class KeyLayout:
    """How a file's keys map onto the model's: a prefix to strip and marker keys to skip."""

    prefix: str = ""
    markers: tuple[str, ...] = ()

    def name(self, key: str) -> Optional[str]:
        """The model key for a file key (None for a marker); keys outside the prefix stay as they
        are, so the key check names them as unexpected."""
        if key in self.markers:
            return None
        return key[len(self.prefix):] if self.prefix and key.startswith(self.prefix) else key

    def shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        return {name: shape for key, shape in shapes.items() if (name := self.name(key)) is not None}

    def tensors(self, tensors: Iterable[tuple[str, object]]) -> Iterator[tuple[str, object]]:
        for key, tensor in tensors:
            name = self.name(key)
            if name is not None:
                yield name, tensor


def detect(keys: Iterable[str], where: str) -> KeyLayout:
    """The layout of a checkpoint with these keys; a :class:`CheckpointError` for scaled weights."""
    keys = set(keys)
    scaled = sorted(k for k in keys if k in SCALED_MARKERS or k.endswith(SCALE_SUFFIXES))
    if scaled:
        raise CheckpointError(f"{where}: weights stored with per-tensor scales ({_listing(scaled, 4)}), a scaled "
                              "fp8 or quantized format this loader does not read; use a plain bf16 or fp8 file "
                              "(for example one written by ModelSave from this pack's model)")
    _refuse_comfy_cogvideox(keys, where)
    prefix = next((p for p in PREFIXES if p + ANCHOR in keys), "")
    markers = tuple(m for m in MARKERS if m in keys)
    if prefix or markers:
        logger.info("%s: ComfyUI single-file layout (key prefix %r%s)", where, prefix,
                    f"; markers {', '.join(markers)} ignored: the model is always v-prediction" if markers else "")
    return KeyLayout(prefix, markers)


def _refuse_comfy_cogvideox(keys: set[str], where: str) -> None:
    """ComfyUI's own CogVideoX key layout (``comfy/ldm/cogvideo``: ``blocks.N.q``, ``attn_out``,
    ``ff_proj``, ...), told from the keys under any prefix: refused naming the file and its loader."""
    found = sorted(k for k in keys if COMFY_COGVIDEOX.match(k.removeprefix(PREFIXES[0]).removeprefix(PREFIXES[1])))
    if found:
        raise CheckpointError(f"{where}: ComfyUI's CogVideoX layout ({_listing(found, 3)}): load it with ComfyUI's "
                              "own loader (UNETLoader). Load Ingredients Model reads the official Ingredients layout "
                              "(transformer_blocks.N.attn1.to_q, ..., local_facial_extractor.*), as the download and "
                              "ModelSave of this pack's MODEL write it.")


def stored_dtype(path) -> Optional[torch.dtype]:
    """The dtype the large Linear weights are stored in (read from the safetensors header of the
    first block's query weight, under any prefix); None when it cannot be told from headers."""
    from safetensors import SafetensorError, safe_open

    for file in resolve(path).weights:
        if file.suffix != ".safetensors":
            continue
        try:
            with safe_open(str(Path(file)), framework="pt") as handle:
                names = set(handle.keys())
                for prefix in ("", *PREFIXES):
                    if prefix + STORAGE_PROBE in names:
                        return _SAFETENSORS_DTYPES.get(handle.get_slice(prefix + STORAGE_PROBE).get_dtype())
        except (SafetensorError, OSError) as err:  # the loader names what is wrong with the file
            logger.debug("%s: header unreadable (%s)", file, err)
            return None
    return None
