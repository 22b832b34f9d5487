"""LoRAs on the MODEL, in one place: the files of ComfyUI's ``models/loras`` (listed and read as
ComfyUI reads them), ComfyUI's own key map of the MODEL, and the LoRA applied through ComfyUI's
``load_lora`` and ``add_patches`` on a clone, as LoraLoaderModelOnly does (the pack's own key map
is ``ingredients_core.weights.lora_keys``).
"""

from __future__ import annotations

import comfy.lora
import comfy.utils
import folder_paths

from .paths import filenames

LORAS_FOLDER = "loras"


def lora_names() -> list[str]:
    """The files of ComfyUI's ``models/loras`` (and its extra_model_paths.yaml entries)."""
    return filenames(LORAS_FOLDER)


def load_lora_file(name: str, input_name: str) -> dict:
    """{key: tensor} of a LoRA file, read as ComfyUI reads them (safetensors; torch files weights-only)."""
    path = folder_paths.get_full_path(LORAS_FOLDER, name)
    if path is None:
        raise FileNotFoundError(f"{input_name}: no LoRA {name!r} in ComfyUI's models/loras folders; pick one "
                                "from the list (press R to refresh it after adding files)")
    return comfy.utils.load_torch_file(path, safe_load=True)


def model_weight_shapes(model) -> dict[str, tuple[int, ...]]:
    """Shapes of a MODEL's state-dict keys (``diffusion_model.<key>``) without copying weights."""
    return {key: tuple(tensor.shape) for key, tensor in model.model.state_dict().items()}


def host_lora_key_map(model) -> dict:
    """ComfyUI's own LoRA key map of the MODEL (what LoraLoaderModelOnly understands)."""
    return comfy.lora.model_lora_keys_unet(model.model, {})


def apply_lora(model, lora: dict, key_map: dict, strength: float):
    """(a clone of the MODEL with the LoRA's weight patches at ``strength``, the number of weights
    patched), through ComfyUI's ``load_lora`` and ``add_patches`` as LoraLoaderModelOnly does."""
    patches = comfy.lora.load_lora(lora, key_map, log_missing=False)
    patched = model.clone()
    return patched, len(patched.add_patches(patches, strength))
