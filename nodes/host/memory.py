"""ComfyUI's devices, dtypes and memory management, per model role.

- devices and dtypes as ComfyUI chooses them, per role (``--cpu`` gives the CPU and float32): the
  transformer follows the diffusion-model flags, the VAE, T5 and face models their own; a node's
  explicit choice wins over auto;
- memory: each ``nn.Module`` is wrapped in a ``ModelPatcher`` and loaded with ``load_models_gpu``
  before use; nothing is moved by hand. Small models load whole; the transformer (built from
  ``comfy.ops`` layers, :mod:`.layers`) loads as much as fits beside a run and streams the rest;
  its q-former has a patcher of its own;
- the output device (ComfyUI's intermediate device) where node outputs live.
"""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.model_patcher
import torch

from ...ingredients_core import InputError

logger = logging.getLogger(__name__)

ROLES = ("diffusion", "projector", "text", "vae", "face")
PROJECTOR = "local_facial_extractor"  # the transformer's q-former (Project IDs needs only it)
#: What ComfyUI raises when the GPU runs out of memory (torch's, not ComfyUI's ``OOM_EXCEPTION``,
#: which is ``Exception`` itself on torch builds without CUDA).
OUT_OF_MEMORY = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),)


# -- devices -------------------------------------------------------------------------------------
def devices(role: str) -> tuple[torch.device, torch.device]:
    """(load device, offload device) ComfyUI picks for a model of ``role``."""
    mm = comfy.model_management
    if role == "text":
        return mm.text_encoder_device(), mm.text_encoder_offload_device()
    if role == "vae":
        return mm.vae_device(), mm.vae_offload_device()
    if role in ("diffusion", "projector", "face"):
        return mm.get_torch_device(), mm.unet_offload_device()
    raise InputError(f"unknown model role {role!r}; expected one of {ROLES}")


# -- dtypes per role -----------------------------------------------------------------------------
# Each model takes its dtype from ComfyUI's picker for its role, so --fp16-unet never reaches the
# VAE and --fp8_e4m3fn-unet never reaches a face model. A node's explicit choice wins over auto.
DIFFUSION_DTYPES = [torch.bfloat16, torch.float32]  # fp16 only when asked for (node or --fp16-unet)
VAE_DTYPES = [torch.bfloat16, torch.float16, torch.float32]  # ComfyUI's working dtypes for the CogVideoX VAE
FLOAT8_DTYPES = tuple(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu")
                      if hasattr(torch, name))


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _named(choice: str) -> torch.dtype:
    dtype = getattr(torch, choice, None)
    if not isinstance(dtype, torch.dtype):
        raise InputError(f"dtype: {choice!r} is not a dtype; choose auto, bfloat16, float16 or float32")
    return dtype


def compute_dtype(device: torch.device) -> torch.dtype:
    """The best dtype plain torch layers compute in on ``device``: bf16, else fp16, else fp32."""
    mm = comfy.model_management
    if mm.should_use_bf16(device):
        return torch.bfloat16
    if mm.should_use_fp16(device):
        return torch.float16
    return torch.float32


def diffusion_dtypes(choice: str = "auto", model_params: int = 0) -> tuple[torch.dtype, torch.dtype]:
    """(weight/storage dtype, compute dtype) of the transformer on ComfyUI's diffusion device.

    ``auto``: ``unet_dtype`` (which honours --fp8_e4m3fn-unet, --fp8_e5m2-unet, --fp16-unet,
    --bf16-unet, --fp32-unet) with bf16 and fp32 as the supported dtypes; a named choice is the
    storage dtype. The compute dtype is ``unet_manual_cast`` of it (fp8 storage computes in bf16
    or fp32; fp16 computes in fp16 only where the device runs fp16 well).
    """
    mm = comfy.model_management
    device = mm.get_torch_device()
    if choice == "auto":
        weight = mm.unet_dtype(device, model_params=model_params, supported_dtypes=DIFFUSION_DTYPES)
    else:
        weight = _named(choice)
    supported = [torch.float16, *DIFFUSION_DTYPES] if weight == torch.float16 else DIFFUSION_DTYPES
    compute = mm.unet_manual_cast(weight, device, supported_dtypes=supported) or weight
    return weight, compute


def vae_dtype(choice: str = "auto") -> torch.dtype:
    """The VAE's dtype: ComfyUI's ``vae_dtype`` (--fp16-vae, --bf16-vae, --fp32-vae) or the choice."""
    if choice != "auto":
        return _named(choice)
    return comfy.model_management.vae_dtype(devices("vae")[0], VAE_DTYPES)


def text_encoder_dtype(choice: str = "auto") -> torch.dtype:
    """The storage dtype of the folder's T5: ComfyUI's ``text_encoder_dtype`` (--fp16-text-enc,
    --bf16-text-enc, --fp32-text-enc, --fp8_e4m3fn-text-enc, --fp8_e5m2-text-enc; fp16 by default)
    or the node's choice. It runs on ComfyUI's own T5 with casting layers, computing in
    :data:`.layers.T5_COMPUTE_DTYPE` as ComfyUI computes its text encoders, so fp8 storage works."""
    if choice != "auto":
        return _named(choice)
    return comfy.model_management.text_encoder_dtype(devices("text")[0])


def face_dtype() -> torch.dtype:
    """EVA-CLIP's dtype: what the face models' device computes in (never the diffusion flags)."""
    return compute_dtype(devices("face")[0])


# -- memory management ---------------------------------------------------------------------------
class HostedModule(torch.nn.Module):
    """Holds one or more modules for a ``ModelPatcher``.

    ComfyUI writes ``model.device`` on the modules it manages; diffusers, transformers and the
    Ingredients transformer expose ``device`` as a read-only property, so they are held as
    children of this plain module instead of being handed over directly.
    """

    def __init__(self, **modules: torch.nn.Module):
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)
        self.device = None


# One holder class per role, named so that ComfyUI's log ("Requested to load ...") says what loads.
_HOLDERS = {role: type(name, (HostedModule,), {"__module__": __name__}) for role, name in (
    ("projector", "IngredientsIDProjector"), ("text", "IngredientsT5"),
    ("vae", "IngredientsVAE"), ("face", "IngredientsFaceModels"))}


def patcher_class():
    """``CoreModelPatcher`` where the host has it (0.33.0; with DynamicVRAM on NVIDIA it is
    ``ModelPatcherDynamic``, on the CPU it reroutes to ``ModelPatcher``), else ``ModelPatcher``."""
    return getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)


def manage(role: str, **modules: torch.nn.Module):
    """A patcher for the modules (kept on the offload device until :func:`load`)."""
    load_device, offload_device = devices(role)
    holder = _HOLDERS[role](**modules)
    return patcher_class()(holder, load_device=load_device, offload_device=offload_device)


def load(*patchers, memory_required: int = 0) -> None:
    """Let ComfyUI put the models wholly on their load device (freeing others as it sees fit;
    ``memory_required``: bytes the run needs beside the weights)."""
    comfy.model_management.load_models_gpu(list(patchers), memory_required=memory_required, force_full_load=True)


def load_for_run(patcher, memory_required: int, minimum_memory_required: int) -> None:
    """Let ComfyUI load as much of the model as fits beside a run's activations and stream the
    rest (``--lowvram``, ``--novram``, ``--reserve-vram`` apply), as its own sampler does:
    ``memory_required`` for the run as asked, ``minimum_memory_required`` for the smallest run
    that works (the sampler's loop batches both CFG halves, so for it the two are the same).
    ComfyUI adds its own reserve (``--reserve-vram``) and keeps at least its inference minimum free."""
    comfy.model_management.load_models_gpu([patcher], memory_required=memory_required,
                                           minimum_memory_required=minimum_memory_required)


def free_cache() -> None:
    """Return cached GPU memory to the driver (after an out-of-memory error)."""
    comfy.model_management.soft_empty_cache()


def manage_projector(transformer: torch.nn.Module):
    """A patcher of the transformer's q-former alone, so Project IDs loads 0.15 B parameters
    instead of 6.4 B. The q-former is also part of the MODEL (its state dict is the whole
    checkpoint), whose patcher may move it: load it with :func:`load_part`."""
    return manage("projector", projector=getattr(transformer, PROJECTOR))


def is_dynamic(patcher) -> bool:
    """Whether ComfyUI streams this patcher's weights itself (0.33's ``ModelPatcherDynamic``,
    DynamicVRAM on NVIDIA): its per-layer state must then belong to this one patcher alone."""
    return bool(getattr(patcher, "is_dynamic", lambda: False)())


def load_part(patcher) -> None:
    """Load a patcher whose modules are also part of another patcher's model (the q-former in the
    MODEL). When the other one has moved them off the load device ComfyUI still counts this one as
    loaded; it is then detached and loaded again, so its modules are where it says."""
    load(patcher)
    if not is_dynamic(patcher) and any(p.device != patcher.load_device for p in patcher.model.parameters()):
        logger.debug("the q-former was moved by the MODEL's patcher; loading it again")
        patcher.detach()
        load(patcher)


def load_device(patcher) -> torch.device:
    return patcher.load_device


def output_device() -> torch.device:
    """Where node outputs (IMAGE, cached tensors) live: ComfyUI's intermediate device."""
    return comfy.model_management.intermediate_device()
