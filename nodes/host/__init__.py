"""The host room: every contact with ComfyUI itself, in one place.

This package is the only part of the pack that imports ComfyUI (``comfy``, ``folder_paths``,
``node_helpers``, ``latent_preview``, ``server``, ``execution``, ``nodes``), at the top of a file or
inside a function; the other node files import the ``comfy_api`` schema classes and this package
(``from . import host``, then ``host.load(...)``), never ComfyUI (``tests/test_layering.py`` checks
it). What each file holds:

- ``paths.py``: ComfyUI's model folders: ``models/ingredients`` and ``models/insightface`` registered
  (the folder names are the library's, ``ingredients_core.weights.model_folders``), their search
  paths with every ``extra_model_paths.yaml`` entry, single-file diffusion models;
- ``memory.py``: devices and dtypes per role as ComfyUI picks them (its flags apply), ``ModelPatcher``
  wrapping and ``load_models_gpu`` (nothing is moved by hand), the output device;
- ``layers.py``: the folder's T5 on ComfyUI's own T5, and the ``comfy.ops`` layers and
  ``optimized_attention`` the transformer is built with;
- ``progress.py``: the progress bar, latent previews, Cancel, and the CogVideoX latent format;
- ``model.py``: the transformer as a native ``MODEL`` (model config, ``BaseModel``, the patcher);
- ``patches.py``: the MODEL patches: the IDs, TeaCache, context windows;
- ``sampler.py``: the official DDIM/DPM as a ComfyUI ``SAMPLER``, ``sample_custom``, dynamic CFG;
- ``lora.py``: LoRA files of ``models/loras``, listed, read and applied to the MODEL;
- ``conditioning.py``: values put on a CONDITIONING, and ComfyUI's own CogVideoX VAE.

The names below are the room's interface; the node files use only these. Heavy work never happens
at import: ComfyUI has already imported its modules when the pack loads.
"""

from .conditioning import comfy_vae_encode, conditioning_with, is_cogvideox_vae
from .layers import T5_COMPUTE_DTYPE, native_t5, run_t5, supports_fp8_compute, transformer_layers
from .lora import apply_lora, host_lora_key_map, load_lora_file, lora_names, model_weight_shapes
from .memory import (
    FLOAT8_DTYPES,
    OUT_OF_MEMORY,
    devices,
    diffusion_dtypes,
    dtype_name,
    face_dtype,
    free_cache,
    is_dynamic,
    load,
    load_device,
    load_for_run,
    load_part,
    manage,
    manage_projector,
    output_device,
    patcher_class,
    text_encoder_dtype,
    vae_dtype,
)
from .model import IDS_KEY, IngredientsBaseModel, IngredientsModelConfig, model_patcher, transformer_of
from .patches import WRAPPER_KEY, apply_ids, ids_patch, teacache_report, with_context_windows, with_teacache
from .paths import (
    INGREDIENTS_FOLDER,
    INSIGHTFACE_FOLDER,
    TEXT_ENCODERS_FOLDER,
    model_roots,
    register_model_folders,
    single_file_names,
    single_file_path,
)
from .progress import COGVIDEOX_RGB_FACTORS, IngredientsLatentFormat, check_interrupt, step_reporter
from .sampler import DynamicCFG, model_sampling, official_sampler, sample, with_dynamic_cfg

__all__ = [
    "COGVIDEOX_RGB_FACTORS", "FLOAT8_DTYPES", "IDS_KEY", "INGREDIENTS_FOLDER", "INSIGHTFACE_FOLDER",
    "OUT_OF_MEMORY", "T5_COMPUTE_DTYPE", "TEXT_ENCODERS_FOLDER", "WRAPPER_KEY", "DynamicCFG",
    "IngredientsBaseModel", "IngredientsLatentFormat", "IngredientsModelConfig", "apply_ids", "apply_lora",
    "check_interrupt", "comfy_vae_encode", "conditioning_with", "devices", "diffusion_dtypes", "dtype_name",
    "face_dtype", "free_cache", "host_lora_key_map", "ids_patch", "is_cogvideox_vae", "is_dynamic", "load",
    "load_device", "load_for_run", "load_lora_file", "load_part", "lora_names", "manage", "manage_projector",
    "model_patcher", "model_roots", "model_sampling", "model_weight_shapes", "native_t5", "official_sampler",
    "output_device", "patcher_class", "register_model_folders", "run_t5", "sample", "single_file_names",
    "single_file_path", "step_reporter", "supports_fp8_compute", "teacache_report", "text_encoder_dtype",
    "transformer_layers", "transformer_of", "vae_dtype", "with_context_windows", "with_dynamic_cfg", "with_teacache",
]
