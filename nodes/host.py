"""Every contact with ComfyUI itself, in one place.

The node files import ``comfy_api`` schema classes and this module; nothing else in the pack
touches ComfyUI. What lives here:

- model folders: ``models/ingredients`` (registered here), ``models/insightface`` and
  ``models/text_encoders``, with every path ``extra_model_paths.yaml`` adds;
- memory: each ``nn.Module`` is wrapped in a ``ModelPatcher`` and loaded with ``load_models_gpu``
  before use; nothing is moved by hand. Small models load whole; the transformer is built from
  ``comfy.ops`` layers and calls ComfyUI's ``optimized_attention``, so ComfyUI loads as much of it
  as fits (from a memory estimate of the run), streams the rest, casts fp8 weights per layer and
  picks the attention kernel (``--use-sage-attention``, ...); its q-former has a patcher of its own;
- devices and dtypes as ComfyUI chooses them, per role (``--cpu`` gives the CPU and float32):
  the transformer follows the diffusion-model flags, the VAE, T5 and face models their own;
- the progress bar, latent previews (a CogVideoX latent format) and interrupts.

Heavy work never happens at import: ComfyUI has already imported these modules when the pack loads.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import comfy.latent_formats
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.utils
import folder_paths
import latent_preview
import torch
from ..ingredients_core import InputError

logger = logging.getLogger(__name__)

INGREDIENTS_FOLDER = "ingredients"
INSIGHTFACE_FOLDER = "insightface"
TEXT_ENCODERS_FOLDER = "text_encoders"
ROLES = ("diffusion", "projector", "text", "vae", "face")
PROJECTOR = "local_facial_extractor"  # the transformer's q-former (Project IDs needs only it)
#: What ComfyUI raises when the GPU runs out of memory (torch's, not ComfyUI's ``OOM_EXCEPTION``,
#: which is ``Exception`` itself on torch builds without CUDA).
OUT_OF_MEMORY = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),)


# -- model folders -------------------------------------------------------------------------------
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


#: ComfyUI's folders of single-file diffusion models, where ModelSave writes and fp8 repacks go.
SINGLE_FILE_FOLDERS = ("diffusion_models", "checkpoints")


def single_file_names() -> list[str]:
    """``folder/name`` for every ``.safetensors`` file ComfyUI lists in :data:`SINGLE_FILE_FOLDERS`."""
    names = []
    for folder in SINGLE_FILE_FOLDERS:
        try:
            files = folder_paths.get_filename_list(folder)
        except KeyError:  # a host without that folder kind
            continue
        names.extend(f"{folder}/{name}" for name in files if name.lower().endswith(".safetensors"))
    return names


def single_file_path(name: str, input_name: str) -> Path:
    """The file for a :func:`single_file_names` value, or FileNotFoundError naming the input."""
    folder, _, rest = name.partition("/")
    path = folder_paths.get_full_path(folder, rest) if folder in SINGLE_FILE_FOLDERS else None
    if path is None:
        folders = " or ".join(SINGLE_FILE_FOLDERS)
        raise FileNotFoundError(f"{input_name}: no file {name!r} in ComfyUI's models/{folders} folders (or their "
                                "extra_model_paths.yaml entries); pick one from the list")
    return Path(path)


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
    :data:`T5_COMPUTE_DTYPE` as ComfyUI computes its text encoders, so fp8 storage works."""
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


# -- T5 on ComfyUI's own T5 ----------------------------------------------------------------------
T5_COMPUTE_DTYPE = torch.float32  # ComfyUI computes its text encoders in float32 (fp16 T5 overflows)
T5_ACTIVATIONS = {"gelu_new": "gelu_pytorch_tanh", "gelu_pytorch_tanh": "gelu_pytorch_tanh", "relu": "relu"}


def _comfy_t5_config(config: dict) -> dict:
    """An HF T5 config as ComfyUI's T5 reads it: ``gelu_new`` is the tanh GELU ComfyUI calls
    ``gelu_pytorch_tanh`` (T5 v1.1's ``feed_forward_proj`` "gated-gelu" means it); ``is_gated_act``
    from ``feed_forward_proj`` when absent. ComfyUI's T5 fixes its relative positions at 32 buckets
    over 128 tokens; a config that asks for others is refused, as is any other activation."""
    projection = config.get("feed_forward_proj", "relu")
    act = config.get("dense_act_fn") or ("gelu_new" if projection == "gated-gelu" else projection.split("-")[-1])
    where = "text_encoder/config.json"
    if act not in T5_ACTIVATIONS:
        raise InputError(f"{where}: activation {act!r} is not one ComfyUI's T5 has ({', '.join(T5_ACTIVATIONS)}); "
                         "use CLIPLoader with this T5 instead")
    buckets = (config.get("relative_attention_num_buckets", 32), config.get("relative_attention_max_distance", 128))
    if buckets != (32, 128):
        raise InputError(f"{where}: relative attention of {buckets[0]} buckets over {buckets[1]} tokens; ComfyUI's "
                         "T5 has 32 over 128 (T5 v1.1 XXL's)")
    gated = config.get("is_gated_act", projection.startswith("gated"))
    return dict(config, dense_act_fn=T5_ACTIVATIONS[act], is_gated_act=gated, model_type=config.get("model_type", "t5"))


def native_t5(config: dict, tensors, storage: torch.dtype) -> torch.nn.Module:
    """ComfyUI's T5 encoder (``comfy.text_encoders.t5.T5`` on ``comfy.ops.manual_cast``, so ComfyUI
    can load it partially and it computes from fp8 weights) for an HF T5 config, the checkpoint
    ``tensors`` converted one at a time to ``storage`` on the offload device."""
    from comfy.text_encoders.t5 import T5

    from ..ingredients_core.model.storage import convert

    _, offload = devices("text")
    with torch.device("meta"):
        model = T5(_comfy_t5_config(config), storage, None, comfy.ops.manual_cast)
    expected = set(model.state_dict())
    params = {}
    for key, tensor in tensors:
        key = "shared.weight" if key == "encoder.embed_tokens.weight" else key  # tied embedding
        if key in expected and key not in params:
            params[key] = convert(tensor, storage if tensor.is_floating_point() else tensor.dtype, offload)
    missing = sorted(expected - set(params))
    if missing:
        raise InputError(f"text_encoder: {len(missing)} T5 weights missing ({', '.join(missing[:6])}); "
                         "download the complete text_encoder/ folder")
    model.load_state_dict(params, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def run_t5(patcher, model: torch.nn.Module, input_ids: torch.Tensor, memory_required: int) -> torch.Tensor:
    """Hidden states (N, tokens, D) in float32 on the output device; ComfyUI loads what fits."""
    load_for_run(patcher, memory_required, memory_required)
    with torch.no_grad():
        hidden, _ = model(input_ids.to(patcher.load_device), None, dtype=T5_COMPUTE_DTYPE)
    return hidden.float().to(output_device())


# -- the transformer on ComfyUI's layers and attention ---------------------------------------------
def optimized_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """ComfyUI's attention backend of the moment (sage, flash, xformers, split, sub-quadratic or
    SDPA, as its flags pick) for q, k, v (B, heads, N, d) -> (B, N, heads * d). Looked up per
    call, so a node that patches ComfyUI's attention applies here too."""
    import comfy.ldm.modules.attention as attention

    return attention.optimized_attention(q, k, v, heads, skip_reshape=True)


def transformer_layers(weight_dtype: torch.dtype, compute: torch.dtype, fast_fp8: bool = False) -> dict:
    """``operations`` and ``attention`` to build the transformer with: ``comfy.ops`` picked for
    its storage and compute dtypes (casting layers when they differ; fp8 matrix multiplies with
    ``fast_fp8`` where the GPU has them), and :func:`optimized_attention`."""
    operations = comfy.ops.pick_operations(weight_dtype, compute, load_device=devices("diffusion")[0],
                                           fp8_optimizations=fast_fp8)
    return {"operations": operations, "attention": optimized_attention}


def supports_fp8_compute() -> bool:
    return bool(comfy.model_management.supports_fp8_compute(devices("diffusion")[0]))


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


# -- LoRAs on a MODEL -----------------------------------------------------------------------------
LORAS_FOLDER = "loras"


def lora_names() -> list[str]:
    """The files of ComfyUI's ``models/loras`` (and its extra_model_paths.yaml entries)."""
    try:
        return folder_paths.get_filename_list(LORAS_FOLDER)
    except KeyError:
        return []


def load_lora_file(name: str, input_name: str) -> dict:
    """{key: tensor} of a LoRA file, read as ComfyUI reads them (safetensors; torch files weights-only)."""
    path = folder_paths.get_full_path(LORAS_FOLDER, name)
    if path is None:
        raise FileNotFoundError(f"{input_name}: no LoRA {name!r} in ComfyUI's models/loras folders; pick one "
                                "from the list (press R to refresh it after adding files)")
    return comfy.utils.load_torch_file(path, safe_load=True)


# -- interrupts, progress, previews --------------------------------------------------------------
def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception when the user pressed Cancel."""
    comfy.model_management.throw_exception_if_processing_interrupted()


#: Linear CogVideoX latent-to-RGB coefficients (16 x 3) that kijai's CogVideoXWrapper publishes for its
#: sampler previews, for model-space latents (as ComfyUI's previewer receives them).
COGVIDEOX_RGB_FACTORS = (
    (0.11946, 0.09919, -0.00483), (-0.00120, 0.05497, 0.02132), (-0.01409, -0.00870, -0.02099),
    (0.03064, 0.12186, 0.01396), (0.09274, 0.03029, 0.05083), (0.03791, 0.04935, 0.05856),
    (0.01775, 0.00884, 0.03601), (0.10610, 0.02340, 0.05715), (0.12736, -0.01096, 0.04327),
    (-0.01874, 0.08221, 0.10613), (0.00843, 0.07624, 0.09296), (0.12938, 0.12360, 0.04479),
    (0.04566, 0.04106, -0.01770), (0.00019, -0.01397, 0.05330), (0.08082, 0.11548, -0.02146),
    (-0.01518, -0.00580, 0.07217),
)


class IngredientsLatentFormat(comfy.latent_formats.LatentFormat):
    """CogVideoX latents as ComfyUI's samplers see them (the MODEL's latent format, and the Sampler's
    previews): 16 channels, 3-D, 8x spatial and 4x temporal compression, scaled by the VAE's
    ``scaling_factor`` (0.7 for the 5B VAE). Preview colours: :data:`COGVIDEOX_RGB_FACTORS` by default
    (ComfyUI 0.33 ships none for CogVideoX; a rough sketch of the denoised frame, as every Latent2RGB
    preview); the Sampler passes factors fitted to its run's face canvas instead."""

    latent_channels = 16
    latent_dimensions = 3
    spacial_downscale_ratio = 8
    temporal_downscale_ratio = 4

    def __init__(self, rgb_factors: Sequence[Sequence[float]] | None = COGVIDEOX_RGB_FACTORS,
                 rgb_bias: Sequence[float] | None = None, scale_factor: float = 0.7):
        self.scale_factor = scale_factor
        self.latent_rgb_factors = [list(row) for row in rgb_factors] if rgb_factors is not None else None
        self.latent_rgb_factors_bias = list(rgb_bias) if rgb_bias is not None else None


def step_reporter(total: int, device: torch.device, rgb_factors=None, rgb_bias=None,
                  scale_factor: float = 0.7) -> Callable[[int, torch.Tensor], None]:
    """A per-step callback: checks for interrupts, moves the progress bar, sends a preview.

    The returned function takes (finished step count, latents (B, F, C, h, w)).
    """
    bar = comfy.utils.ProgressBar(total)
    latent_format = IngredientsLatentFormat(rgb_factors, rgb_bias, scale_factor)
    previewer = latent_preview.get_previewer(device, latent_format) if rgb_factors is not None else None

    def report(done: int, latents: torch.Tensor) -> None:
        check_interrupt()
        preview = None
        if previewer is not None:
            preview = previewer.decode_latent_to_preview_image("JPEG", latents.permute(0, 2, 1, 3, 4))
        bar.update_absolute(done, total, preview)

    return report
