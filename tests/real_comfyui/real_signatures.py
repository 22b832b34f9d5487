"""Print, as JSON, the signatures of the real ComfyUI APIs the stand-ins imitate.

Run with ComfyUI's interpreter: ``python real_signatures.py COMFYUI_PATH`` (used by
``test_comfyui_real``, which compares them with the stand-ins here): the V3 schema classes, and the
model-management, model-patcher, ``comfy.ops`` and attention functions the pack and its tests call.
"""

import importlib
import inspect
import json
import sys

# module -> attribute paths whose parameters the stand-ins must take in the same order (a prefix of
# the real parameters: ComfyUI adds optional ones at the end between versions)
HOST_FUNCTIONS = {
    "comfy.model_management": [
        "get_torch_device", "unet_offload_device", "text_encoder_device", "text_encoder_offload_device",
        "vae_device", "vae_offload_device", "intermediate_device", "unet_dtype", "unet_manual_cast",
        "text_encoder_dtype", "vae_dtype", "should_use_fp16", "should_use_bf16", "supports_dtype",
        "supports_fp8_compute", "load_models_gpu", "free_memory", "unload_all_models", "loaded_models",
        "get_free_memory", "minimum_inference_memory", "extra_reserved_memory", "module_size", "cast_to",
        "throw_exception_if_processing_interrupted", "cast_to_device", "dtype_size", "get_all_torch_devices",
        "set_torch_device"],
    "comfy.model_patcher": [
        "ModelPatcher.__init__", "ModelPatcher.model_size", "ModelPatcher.loaded_size", "ModelPatcher.load",
        "ModelPatcher.partially_load", "ModelPatcher.partially_unload", "ModelPatcher.detach",
        "ModelPatcher.clone", "ModelPatcher.set_model_patch", "ModelPatcher.add_wrapper",
        "ModelPatcher.add_wrapper_with_key", "ModelPatcher.remove_wrappers_with_key", "ModelPatcher.get_wrappers",
        "ModelPatcher.get_all_wrappers", "ModelPatcher.set_additional_models", "ModelPatcher.pre_run",
        "ModelPatcher.cleanup", "ModelPatcher.is_dynamic", "ModelPatcher.get_free_memory",
        "ModelPatcher.add_patches", "ModelPatcher.patch_weight_to_device", "CoreModelPatcher.__init__",
        "ModelPatcher.deepclone_multigpu", "ModelPatcher.get_additional_models_with_key",
        "ModelPatcher.remove_additional_models"],
    "comfy.model_base": [
        "model_sampling", "convert_tensor", "BaseModel.__init__", "BaseModel.apply_model", "BaseModel._apply_model",
        "BaseModel.get_dtype", "BaseModel.get_dtype_inference", "BaseModel.concat_cond", "BaseModel.extra_conds",
        "BaseModel.extra_conds_shapes", "BaseModel.process_latent_in", "BaseModel.process_latent_out",
        "BaseModel.memory_required"],
    "comfy.model_sampling": [
        "rescale_zero_terminal_snr_sigmas", "reshape_sigma", "EPS.calculate_input", "EPS.calculate_denoised",
        "EPS.noise_scaling", "EPS.inverse_noise_scaling", "V_PREDICTION.calculate_denoised",
        "ModelSamplingDiscrete.__init__", "ModelSamplingDiscrete._register_schedule",
        "ModelSamplingDiscrete.set_sigmas", "ModelSamplingDiscrete.timestep", "ModelSamplingDiscrete.sigma",
        "ModelSamplingDiscrete.percent_to_sigma"],
    "comfy.supported_models_base": ["BASE.__init__", "BASE.process_unet_state_dict",
                                    "BASE.process_unet_state_dict_for_saving", "BASE.set_inference_dtype"],
    "comfy.conds": ["CONDRegular.__init__", "CONDRegular.process_cond", "CONDRegular.can_concat",
                    "CONDRegular.concat", "CONDRegular.size", "CONDNoiseShape.process_cond",
                    "CONDCrossAttn.can_concat", "CONDCrossAttn.concat"],
    "comfy.patcher_extension": [
        "add_wrapper", "add_wrapper_with_key", "get_all_wrappers", "copy_nested_dicts", "merge_nested_dicts",
        "WrapperExecutor.__init__", "WrapperExecutor.execute", "WrapperExecutor.new_executor",
        "WrapperExecutor.new_class_executor"],
    "comfy.utils": ["deepcopy_list_dict", "load_torch_file"],
    "comfy.lora": ["model_lora_keys_unet", "load_lora", "calculate_weight"],
    "folder_paths": ["add_model_folder_path", "get_folder_paths", "get_filename_list", "get_full_path",
                     "get_full_path_or_raise"],
    "comfy.ops": [
        "cast_bias_weight", "cast_to_input", "pick_operations",
        *(f"{ops}.{layer}.forward_comfy_cast_weights" for ops in ("disable_weight_init", "manual_cast")
          for layer in ("Linear", "Conv2d", "Conv3d", "GroupNorm", "LayerNorm", "RMSNorm", "Embedding"))],
    "comfy.ldm.modules.attention": ["optimized_attention"],
    "node_helpers": ["conditioning_set_values"],
}

# sampling a MODEL (issue 15, part 4): the guider, samplers and schedulers the stand-ins imitate
HOST_FUNCTIONS.update({
    "comfy.samplers": [
        "calc_cond_batch", "cfg_function", "sampling_function", "simple_scheduler", "calculate_sigmas",
        "ksampler", "sampler_object", "encode_model_conds", "process_conds", "KSAMPLER.__init__", "KSAMPLER.sample",
        "CFGGuider.__init__", "CFGGuider.set_conds", "CFGGuider.set_cfg", "CFGGuider.predict_noise",
        "CFGGuider.inner_sample", "CFGGuider.outer_sample", "CFGGuider.sample", "sample", "KSampler.__init__",
        "KSampler.sample"],
    "comfy.sample": ["prepare_noise", "sample", "sample_custom"],
    "comfy.sampler_helpers": ["convert_cond", "prepare_sampling", "cleanup_models", "prepare_model_patcher",
                              "prepare_model_patcher_multigpu_clones"],
    "comfy.k_diffusion.sampling": ["to_d", "default_noise_sampler", "sample_euler"],
})
HOST_FUNCTIONS["comfy.model_patcher"] = HOST_FUNCTIONS["comfy.model_patcher"] + [
    "ModelPatcher.get_model_object", "ModelPatcher.set_model_sampler_cfg_function",
    "ModelPatcher.set_model_sampler_post_cfg_function", "set_model_options_post_cfg_function"]


def signatures(io, ui) -> dict:
    out = {name: list(inspect.signature(getattr(io, name).__init__).parameters)
           for name in ("Input", "WidgetInput", "Output", "NodeOutput")}
    for name in ("Boolean", "Int", "Float", "String", "Combo"):
        out[f"{name}.Input"] = list(inspect.signature(getattr(io, name).Input.__init__).parameters)
    out["PreviewImage"] = list(inspect.signature(ui.PreviewImage.__init__).parameters)
    out["Schema"] = list(io.Schema.__dataclass_fields__)
    return out


# present in ComfyUI 0.33.0, absent in 0.3.64 (the pack never needs them there): checked where they exist
NEWER_ONLY = {"comfy.model_patcher:ModelPatcher.is_dynamic", "comfy.model_patcher:ModelPatcher.get_free_memory",
              "comfy.model_patcher:CoreModelPatcher.__init__", "comfy.model_base:BaseModel.get_dtype_inference",
              "comfy.utils:deepcopy_list_dict",  # and MultiGPU CFG Split (0.33; comfy.multigpu is not listed)
              "comfy.model_management:get_all_torch_devices", "comfy.model_management:set_torch_device",
              "comfy.model_patcher:ModelPatcher.deepclone_multigpu",
              "comfy.model_patcher:ModelPatcher.get_additional_models_with_key",
              "comfy.model_patcher:ModelPatcher.remove_additional_models",
              "comfy.sampler_helpers:prepare_model_patcher_multigpu_clones"}  # 0.3.64's clone deep-copies model_options with copy.deepcopy


def host_signatures() -> dict:
    """``"module:attr.path"`` -> positional parameter names (``*args``/``**kwargs`` left out); a
    :data:`NEWER_ONLY` path the module lacks is left out."""
    out = {}
    for module_name, paths in HOST_FUNCTIONS.items():
        module = importlib.import_module(module_name)
        for path in paths:
            target = module
            for part in path.split("."):
                target = getattr(target, part, None) if target is not None else None
            if target is None and f"{module_name}:{path}" in NEWER_ONLY:
                continue
            parameters = inspect.signature(target).parameters.values()
            out[f"{module_name}:{path}"] = [p.name for p in parameters
                                            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return out


if __name__ == "__main__":
    sys.path[0] = sys.argv[1]  # not this folder: its comfy stand-ins would shadow the real ones
    from comfy.cli_args import args

    args.cpu = True  # comfy.model_management on CUDA-less torch needs this before import
    from comfy_api.latest import io, ui

    print(json.dumps({**signatures(io, ui), **host_signatures()}))
