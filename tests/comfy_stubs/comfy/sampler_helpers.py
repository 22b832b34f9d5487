"""Stand-in for ``comfy.sampler_helpers``: conditioning conversion, model loading before sampling
(``load_models_gpu`` with the memory estimate of a cond+uncond batch) and the patcher's wrappers
merged into ``transformer_options`` (``prepare_model_patcher``). No hooks; MultiGPU clones as in 0.33.0 (``prepare_model_patcher_multigpu_clones``)."""

from __future__ import annotations

import uuid

import comfy.model_management
import comfy.patcher_extension


def convert_cond(cond):
    out = []
    for c in cond:
        temp = c[1].copy()
        model_conds = temp.get("model_conds", {})
        if c[0] is not None:
            temp["cross_attn"] = c[0]
        temp["model_conds"] = model_conds
        temp["uuid"] = uuid.uuid4()
        out.append(temp)
    return out


def estimate_memory(model, noise_shape, conds):
    memory_required = model.model.memory_required([noise_shape[0] * 2] + list(noise_shape[1:]))
    minimum_memory_required = model.model.memory_required([noise_shape[0]] + list(noise_shape[1:]))
    return memory_required, minimum_memory_required


def prepare_sampling(model, noise_shape, conds, model_options=None):  # 0.33.0 adds force_full_load, force_offload
    executor = comfy.patcher_extension.WrapperExecutor.new_executor(
        _prepare_sampling,
        comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING,
                                                 model_options or {}, is_model_options=True))
    return executor.execute(model, noise_shape, conds, model_options=model_options)


def _prepare_sampling(model, noise_shape, conds, model_options=None):
    models = model.get_additional_models()
    memory_required, minimum_memory_required = estimate_memory(model, noise_shape, conds)
    comfy.model_management.load_models_gpu([model] + models, memory_required=memory_required,
                                           minimum_memory_required=minimum_memory_required)
    return model.model, conds, models


def prepare_model_patcher_multigpu_clones(model_patcher, loaded_models: list, model_options: dict):
    """0.33.0: the loaded MultiGPU clones, and ``model_options["multigpu_clones"]`` {device: patcher}."""
    multigpu_patchers = [x for x in loaded_models if getattr(x, "is_multigpu_base_clone", False)]
    if multigpu_patchers:
        model_options["multigpu_clones"] = {model_patcher.load_device: model_patcher,
                                            **{x.load_device: x for x in multigpu_patchers}}
    return multigpu_patchers


def cleanup_models(conds, models):
    return None


def prepare_model_patcher(model, conds, model_options: dict):
    """Copies the patcher's wrappers and callbacks into ``model_options["transformer_options"]``."""
    options = model_options["transformer_options"]
    comfy.patcher_extension.merge_nested_dicts(options.setdefault("wrappers", {}), model.wrappers,
                                               copy_dict1=False)
    comfy.patcher_extension.merge_nested_dicts(options.setdefault("callbacks", {}), model.callbacks,
                                               copy_dict1=False)
    return {}
