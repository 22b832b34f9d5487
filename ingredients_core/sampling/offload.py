"""Memory options of the host-free path (the CLI): weight storage dtype, offloading, attention.

- ``weight_dtype``: ``default`` (the compute dtype) or fp8 storage of the transformer's large
  ``Linear`` weights (:mod:`ingredients_core.model.storage`), computed through diffusers'
  layerwise casting hooks.
- ``offload``: ``none`` keeps every model on the device; ``model`` keeps the models in CPU RAM and
  moves each onto the device for its stage only (T5, then faces, then VAE encode, transformer,
  VAE decode: the VAE and the transformer never share the device); ``blocks`` additionally streams
  the transformer (and T5) layer by layer from CPU RAM with diffusers' group offloading at leaf
  level, which serves every call path of the model, the once-per-run ID projections included
  (block-level groups load only in their own ``forward``). The copies are made in order, without a
  CUDA-stream prefetch: diffusers prefetches in the layer order it recorded at the first forward,
  and TeaCache's skipped steps and persons switched off by the routing leave layers out of later
  forwards, which breaks that chain in diffusers releases without the synchronous fall-back of
  huggingface/diffusers#13211 (weights left on the CPU), and wastes copies in those with it. At
  49 x 480 x 720 a layer computes far longer than its copy takes (a block's fp8 weights, 0.13 GB,
  cross PCIe 4 in about 5 ms), so the order costs little.
- ``attention``: ``sdpa`` (torch) or ``sage`` (the ``sageattention`` package, CUDA, 16-bit).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from .. import ERROR_NAMESPACE

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

OFFLOAD_MODES = ("none", "model", "blocks")
ATTENTION_NAMES = ("sdpa", "sage")
CLI_WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e5m2")


class OptionError(ValueError):
    """A memory option this machine or installation cannot honour (the message says what to use)."""

    __module__ = ERROR_NAMESPACE


def resolve_weight_dtype(name: str):
    """``default`` -> None (the compute dtype), else the fp8 storage dtype."""
    from ..model.storage import WEIGHT_DTYPES

    if name not in CLI_WEIGHT_DTYPES:
        raise OptionError(f"weight dtype must be one of {', '.join(CLI_WEIGHT_DTYPES)}; got {name!r}")
    return WEIGHT_DTYPES[name]


def sage_attention(q, k, v, heads: int):
    """SageAttention with the contract of :func:`ingredients_core.model.layers.sdpa_attention`."""
    from sageattention import sageattn

    return sageattn(q, k, v, tensor_layout="HND", is_causal=False).transpose(1, 2).flatten(2)


def resolve_attention(name: str, device: torch.device, dtype: torch.dtype):
    """The attention function for ``name``; ``sage`` is checked for its package, CUDA and 16-bit."""
    import importlib.util

    import torch

    from ..model.layers import sdpa_attention

    if name == "sdpa":
        return sdpa_attention
    if name != "sage":
        raise OptionError(f"attention must be one of {', '.join(ATTENTION_NAMES)}; got {name!r}")
    if importlib.util.find_spec("sageattention") is None:
        raise OptionError("--attention sage needs the sageattention package, which is not installed "
                          "(pip install sageattention); use --attention sdpa")
    if device.type != "cuda":
        raise OptionError(f"--attention sage runs on CUDA GPUs only, not on {device}; use --attention sdpa")
    if dtype not in (torch.float16, torch.bfloat16):
        raise OptionError(f"--attention sage computes in bfloat16 or float16, not {dtype}; use --dtype bfloat16")
    return sage_attention


def home_device(offload: str, device: torch.device) -> torch.device:
    """Where a model lives between its uses."""
    import torch

    if offload not in OFFLOAD_MODES:
        raise OptionError(f"offload must be one of {', '.join(OFFLOAD_MODES)}; got {offload!r}")
    return device if offload == "none" else torch.device("cpu")


def stream_layers(module, device: torch.device) -> None:
    """Keep ``module`` in CPU RAM and copy each layer to ``device`` when it runs (diffusers' group
    offloading, leaf level, in order: see the module doc for why without stream prefetch)."""
    import torch
    from diffusers.hooks import apply_group_offloading

    apply_group_offloading(module, onload_device=device, offload_device=torch.device("cpu"),
                           offload_type="leaf_level", use_stream=False)


@dataclass
class StageMover:
    """``RunHooks.load`` for ``model``/``blocks`` offloading: the VAE and (``model`` mode) the
    transformer are moved to the device for their stage and back to CPU RAM after it."""

    offload: str
    device: torch.device
    transformer: object
    vae: object

    def __call__(self, stage: str) -> None:
        import torch

        from .generation import TRANSFORMER_STAGE

        if self.offload == "none":
            return
        cpu = torch.device("cpu")
        on_transformer = stage == TRANSFORMER_STAGE
        self.vae.to(cpu if on_transformer else self.device)
        if self.offload == "model":
            self.transformer.to(self.device if on_transformer else cpu)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def load_text_encoder_for(folder, dtype: torch.dtype, offload: str, device: torch.device):
    """The folder's T5 for this offload mode: on ``device``, or with ``blocks`` in CPU RAM, streamed
    layer by layer to ``device``."""
    import torch

    from ..encoders.text import load_text_encoder

    if offload != "blocks":
        return load_text_encoder(folder, dtype, device)
    encoder = load_text_encoder(folder, dtype, torch.device("cpu"))
    stream_layers(encoder, device)
    return encoder


def prepare_transformer(transformer, storage: Optional[torch.dtype], compute: torch.dtype, offload: str,
                        device: torch.device) -> None:
    """Storage casting hooks first, then layer streaming (the order diffusers documents)."""
    from ..model.storage import enable_storage_casting

    if storage is not None:
        count = enable_storage_casting(transformer, storage, compute)
        logger.info("transformer: %d layers stored in %s, computed in %s", count, storage, compute)
    if offload == "blocks":
        stream_layers(transformer, device)


def add_memory_options(gen) -> None:
    """The CLI options for weight storage, offloading, attention kernel and step cache."""
    gen.add_argument("--weight-dtype", choices=CLI_WEIGHT_DTYPES, default="default",
                     help="storage of the transformer's large weights: default (the compute dtype) or fp8 "
                          "(half the memory of bf16, computed in --dtype; e4m3fn is the more precise)")
    gen.add_argument("--offload", choices=OFFLOAD_MODES, default="none",
                     help="none: every model on the device; model: each model on the device only for its "
                          "stage; blocks: also stream the transformer and T5 layer by layer from CPU RAM "
                          "(least GPU memory, slower)")
    gen.add_argument("--attention", choices=ATTENTION_NAMES, default="sdpa",
                     help="attention kernel: sdpa (torch) or sage (needs the sageattention package, CUDA)")
    gen.add_argument("--teacache", type=float, default=0.0, metavar="T",
                     help="TeaCache threshold: skip transformer evaluations that change little (0 = off, the "
                          "default; 0.10 to 0.20 are the published CogVideoX-5B settings, about 1.6x to 2.7x "
                          "faster; quality at each threshold was not measured here)")


def check_memory_options(memory: dict, device, dtype) -> None:
    """Refuse memory options this machine cannot honour before any model loads."""
    resolve_weight_dtype(memory["weight_dtype"])
    resolve_attention(memory["attention"], device, dtype)
