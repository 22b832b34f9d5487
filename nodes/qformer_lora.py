"""LoRA layers of the q-former (``local_facial_extractor``) on a MODEL: they change the ID tokens, so
they act where Project IDs projects (its ``patched_model`` input), never in the MODEL's forward.

Plain Python on ComfyUI's patcher (``patches``: weight key -> list of (strength_patch, patch,
strength_model, offset, function)); no ComfyUI import.
"""

from __future__ import annotations

from ..ingredients_core import InputError

QFORMER = "diffusion_model.local_facial_extractor."


def is_qformer_key(key: str) -> bool:
    """Whether a MODEL weight key (``diffusion_model.<official key>``) belongs to the q-former."""
    return key.startswith(QFORMER)


def qformer_patches(patcher) -> tuple:
    """A signature of the q-former weight patches a MODEL carries (which patch at which strengths per
    key; the same patch objects on every clone), () when it has none."""
    patches = getattr(patcher, "patches", None) or {}
    return tuple(sorted((key, tuple((p[0], p[2], id(p[1])) for p in patches[key]))
                        for key in patches if is_qformer_key(key) and patches[key]))


def projecting_patcher(model, patched_model):
    """The patcher Project IDs loads to project with: ``patched_model`` when it carries q-former
    patches (ComfyUI applies them when it loads it); else the q-former's own patcher, unless another
    clone of the MODEL has its weight patches on the modules now (then the loader's MODEL, whose load
    puts the original weights back) or there is none (DynamicVRAM)."""
    if patched_model is not None and qformer_patches(patched_model):
        return patched_model
    if model.projector is None:
        return model.patcher
    current = getattr(model.patcher.model, "current_weight_patches_uuid", None)
    if current is not None and current != getattr(model.patcher, "patches_uuid", None):
        return model.patcher
    return model.projector


def check_tokens_have_model_qformer(tokens, model) -> None:
    """Refuse ID tokens projected without the q-former LoRA patches the MODEL carries (they would
    change nothing)."""
    patches = qformer_patches(model)
    if patches and tuple(getattr(tokens, "qformer_patches", ())) != patches:
        raise InputError(f"routed_ids: this MODEL carries LoRA patches on {len(patches)} q-former weights "
                         "(local_facial_extractor, from Ingredients LoRA or a LoRA loader) that the ID tokens were "
                         "not projected with, so they would change nothing: connect this MODEL to the patched_model "
                         "input of Ingredients Project IDs.")
