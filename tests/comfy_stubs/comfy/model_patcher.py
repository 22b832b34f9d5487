"""Stand-in for ``comfy.model_patcher.ModelPatcher``: ComfyUI's loading and offloading of weights.

What the pack meets in ComfyUI, without hooks:

- the constructor writes ``model.device`` (which fails on modules whose ``device`` is a property);
- ``load`` follows ComfyUI's lowvram rules (``_load_list``): only modules whose parameters are all
  their own (leaves) or that have ``comfy_cast_weights`` are candidates, largest first; a module
  with ``comfy_cast_weights`` that does not fit the budget keeps its weights on the offload device
  and gets ``comfy_cast_weights = True`` (its forward casts the weights per call); a module without
  it is moved only when it fits; parameters of non-leaf modules are never moved by a partial load;
  a full load moves the whole model;
- ``partially_unload`` moves the smallest candidates back first, ``detach`` moves everything back;
- ``clone`` shares the model and copies ``model_options`` with ``comfy.utils``' list/dict deep copy
  (objects inside are shared, as in ComfyUI), the wrappers and additional models; wrappers are
  kept on the patcher (``add_wrapper_with_key``) and merged into ``transformer_options`` by the
  sampler; ``pre_run``/``cleanup`` set and clear ``model.current_patcher``; ``get_model_object`` and
  the sampler CFG functions (``set_model_sampler_cfg_function``, ``..._post_cfg_function``) as in ComfyUI;
- ``CoreModelPatcher`` is ``ModelPatcher`` (0.33.0 has the alias; its DynamicVRAM swap is GPU-only);
- weight patches (LoRA): ``add_patches`` records them, ``load`` applies them to a float32 copy of each
  weight (``comfy.lora.calculate_weight``) keeping the original, ``unpatch_model`` puts the originals
  back, and a clone with other patches that loads after another repatches (the real
  ``current_weight_patches_uuid`` rule; the real one patches offloaded layers per cast instead).
"""

from __future__ import annotations

import logging
import uuid

import comfy.lora
import comfy.model_management
import comfy.utils
import torch

logger = logging.getLogger(__name__)


def wipe_lowvram_weight(m) -> None:
    if hasattr(m, "prev_comfy_cast_weights"):
        m.comfy_cast_weights = m.prev_comfy_cast_weights
        del m.prev_comfy_cast_weights
    if hasattr(m, "weight_function"):
        m.weight_function = []
    if hasattr(m, "bias_function"):
        m.bias_function = []


def set_model_options_patch_replace(model_options, patch, name, block_name, number, transformer_index=None):
    to = model_options["transformer_options"].copy()
    to["patches_replace"] = dict(to.get("patches_replace", {}))
    to["patches_replace"][name] = dict(to["patches_replace"].get(name, {}))
    block = (block_name, number, transformer_index) if transformer_index is not None else (block_name, number)
    to["patches_replace"][name][block] = patch
    model_options["transformer_options"] = to
    return model_options


def set_model_options_post_cfg_function(model_options, post_cfg_function, disable_cfg1_optimization=False):
    model_options["sampler_post_cfg_function"] = model_options.get("sampler_post_cfg_function", []) + [post_cfg_function]
    if disable_cfg1_optimization:
        model_options["disable_cfg1_optimization"] = True
    return model_options


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.size = size
        self.model = model
        if not hasattr(self.model, "device") or self.model.device is None:
            self.model.device = offload_device
        self.load_device = load_device
        self.offload_device = offload_device
        self.weight_inplace_update = weight_inplace_update
        self.patches: dict = {}
        self.model_options = {"transformer_options": {}}
        self.force_cast_weights = False
        self.parent = None
        self.wrappers: dict = {}
        self.callbacks: dict = {}
        self.additional_models: dict = {}
        self.attachments: dict = {}
        self.object_patches: dict = {}
        self.object_patches_backup: dict = {}
        self.is_multigpu_base_clone = False
        self.cached_patcher_init = None  # 0.33.0: (factory, args) a loader registers for deepclone_multigpu
        for name, default in (("model_loaded_weight_memory", 0), ("lowvram_patch_counter", 0),
                              ("model_lowvram", False), ("current_weight_patches_uuid", None)):
            if not hasattr(self.model, name):
                setattr(self.model, name, default)
        comfy.model_management._patchers.add(self)

    def clone(self):  # 0.33 adds disable_dynamic, model_override, force_deepcopy; 0.3.64 has none
        n = self.__class__(self.model, self.load_device, self.offload_device, self.model_size(),
                           weight_inplace_update=self.weight_inplace_update)
        n.patches = {k: v[:] for k, v in self.patches.items()}
        n.patches_uuid = self._patches_uuid()
        n.model_options = comfy.utils.deepcopy_list_dict(self.model_options)
        n.parent = self
        n.force_cast_weights = self.force_cast_weights
        n.attachments = dict(self.attachments)
        n.object_patches = self.object_patches.copy()
        n.object_patches_backup = self.object_patches_backup  # shared by clones (0.33's model override)
        n.additional_models = {k: [m.clone() for m in c] for k, c in self.additional_models.items()}
        n.callbacks = {k: {k1: c1.copy() for k1, c1 in c.items()} for k, c in self.callbacks.items()}
        n.wrappers = {k: {k1: w1.copy() for k1, w1 in w.items()} for k, w in self.wrappers.items()}
        n.cached_patcher_init = self.cached_patcher_init
        n.is_multigpu_base_clone = self.is_multigpu_base_clone
        return n

    def is_dynamic(self) -> bool:
        return False

    def set_model_patch(self, patch, name):
        patches = self.model_options["transformer_options"].setdefault("patches", {})
        patches[name] = patches.get(name, []) + [patch]

    def set_model_patch_replace(self, patch, name, block_name, number, transformer_index=None):
        self.model_options = set_model_options_patch_replace(self.model_options, patch, name, block_name, number,
                                                             transformer_index=transformer_index)

    def set_model_attn1_replace(self, patch, block_name, number, transformer_index=None):
        self.set_model_patch_replace(patch, "attn1", block_name, number, transformer_index)

    def add_object_patch(self, name, obj):
        self.object_patches[name] = obj

    def add_wrapper(self, wrapper_type: str, wrapper):
        self.add_wrapper_with_key(wrapper_type, None, wrapper)

    def add_wrapper_with_key(self, wrapper_type: str, key: str, wrapper):
        self.wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)

    def remove_wrappers_with_key(self, wrapper_type: str, key: str):
        self.wrappers.get(wrapper_type, {}).pop(key, None)

    def get_wrappers(self, wrapper_type: str, key: str):
        return self.wrappers.get(wrapper_type, {}).get(key, [])

    def get_all_wrappers(self, wrapper_type: str):
        return [w for ws in self.wrappers.get(wrapper_type, {}).values() for w in ws]

    def set_additional_models(self, key: str, models: list):
        self.additional_models[key] = models

    def get_additional_models_with_key(self, key: str) -> list:
        return self.additional_models.get(key, [])[:]

    def remove_additional_models(self, key: str):
        self.additional_models.pop(key, None)

    def deepclone_multigpu(self, new_load_device=None, models_cache=None):
        """0.33.0: a clone owning a freshly loaded model from the loader's ``cached_patcher_init``
        (model options, wrappers and patches copied as by ``clone``), on ``new_load_device``."""
        if self.cached_patcher_init is None:
            raise RuntimeError(f"Cannot create multigpu deepclone of {self.model.__class__.__name__}: the loader "
                               "that produced this model does not support multigpu (cached_patcher_init is not "
                               "initialized).")
        fresh = self.cached_patcher_init[0](*self.cached_patcher_init[1])
        n = self.clone()
        n.model = fresh.model
        n.object_patches_backup = {}
        if new_load_device is not None:
            n.load_device = new_load_device
        n.remove_additional_models("multigpu")
        return n

    def get_additional_models(self) -> list:
        return [m for ms in self.additional_models.values() for m in ms]

    def pre_run(self):
        if hasattr(self.model, "current_patcher"):
            self.model.current_patcher = self

    def cleanup(self):
        if hasattr(self.model, "current_patcher"):
            self.model.current_patcher = None

    def get_free_memory(self, device):
        return comfy.model_management.get_free_memory(device)

    # sampling options; object patches (ModelSamplingDiscrete/SD3/Flux's "model_sampling") as in ComfyUI:
    # set on the model by patch_model, put back by unpatch_model
    def get_model_object(self, name: str):
        if name in self.object_patches:
            return self.object_patches[name]
        if name in self.object_patches_backup:
            return self.object_patches_backup[name]
        return comfy.utils.get_attr(self.model, name)

    def set_model_sampler_cfg_function(self, sampler_cfg_function, disable_cfg1_optimization=False):
        self.model_options["sampler_cfg_function"] = sampler_cfg_function
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True

    def set_model_sampler_post_cfg_function(self, post_cfg_function, disable_cfg1_optimization=False):
        self.model_options = set_model_options_post_cfg_function(self.model_options, post_cfg_function,
                                                                 disable_cfg1_optimization)

    def model_size(self) -> int:
        if self.size > 0:
            return self.size
        self.size = comfy.model_management.module_size(self.model)
        return self.size

    def loaded_size(self) -> int:
        return self.model.model_loaded_weight_memory

    def lowvram_patch_counter(self) -> int:
        return self.model.lowvram_patch_counter

    def current_loaded_device(self):
        return self.model.device

    def model_dtype(self):
        if hasattr(self.model, "get_dtype"):
            return self.model.get_dtype()
        return None

    def is_clone(self, other) -> bool:
        return hasattr(other, "model") and self.model is other.model

    def model_patches_models(self) -> list:
        return []

    def model_patches_to(self, device) -> None:
        return None

    def _load_list(self) -> list:
        loading = []
        for name, module in self.model.named_modules():
            own = [n for n, _ in module.named_parameters(recurse=False)]
            inherited = any(n not in own for n, _ in module.named_parameters(recurse=True))
            if not inherited and (hasattr(module, "comfy_cast_weights") or own):
                loading.append((comfy.model_management.module_size(module), name, module, own))
        return loading

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False) -> None:
        self._patch_weights()
        mem_counter, lowvram_counter, load_completely = 0, 0, []
        for module_mem, name, m, params in sorted(self._load_list(), key=lambda x: (x[0], x[1]), reverse=True):
            lowvram_weight = False
            if not full_load and hasattr(m, "comfy_cast_weights") and mem_counter + module_mem >= lowvram_model_memory:
                lowvram_weight = True
                lowvram_counter += 1
                if hasattr(m, "prev_comfy_cast_weights"):  # already offloaded
                    continue
            cast_weight = self.force_cast_weights
            if lowvram_weight:
                m.weight_function, m.bias_function = [], []
                cast_weight = True
            else:
                if hasattr(m, "comfy_cast_weights"):
                    wipe_lowvram_weight(m)
                if full_load or mem_counter + module_mem < lowvram_model_memory:
                    mem_counter += module_mem
                    load_completely.append(m)
            if cast_weight and hasattr(m, "comfy_cast_weights"):
                m.prev_comfy_cast_weights = m.comfy_cast_weights
                m.comfy_cast_weights = True
        for m in load_completely:
            m.comfy_patched_weights = True
            m.to(device_to)
        self.model.model_lowvram = lowvram_counter > 0
        if lowvram_counter > 0:
            logger.info("loaded partially %.1f MB, %d modules offloaded", mem_counter / 2 ** 20, lowvram_counter)
        elif full_load:
            self.model.to(device_to)
            mem_counter = self.model_size()
        self.model.device = device_to
        self.model.model_loaded_weight_memory = mem_counter

    def patch_model(self, device_to=None, lowvram_model_memory=0, load_weights=True, force_patch_weights=False):
        for k in self.object_patches:
            old = comfy.utils.set_attr(self.model, k, self.object_patches[k])
            if k not in self.object_patches_backup:
                self.object_patches_backup[k] = old
        if load_weights:
            self.load(device_to, lowvram_model_memory=lowvram_model_memory, force_patch_weights=force_patch_weights,
                      full_load=lowvram_model_memory == 0)
        return self.model

    def _restore_object_patches(self) -> None:
        for k in list(self.object_patches_backup):
            comfy.utils.set_attr(self.model, k, self.object_patches_backup[k])
        self.object_patches_backup.clear()

    def unpatch_model(self, device_to=None, unpatch_weights=True) -> None:
        self._restore_object_patches()
        if not unpatch_weights:
            return
        self._restore_weights()
        if self.model.model_lowvram:
            for m in self.model.modules():
                wipe_lowvram_weight(m)
            self.model.model_lowvram = False
            self.model.lowvram_patch_counter = 0
        if device_to is not None:
            self.model.to(device_to)
            self.model.device = device_to
        self.model.model_loaded_weight_memory = 0
        for m in self.model.modules():
            if hasattr(m, "comfy_patched_weights"):
                del m.comfy_patched_weights

    def partially_unload(self, device_to, memory_to_free=0) -> int:
        freed = 0
        for module_mem, name, m, _ in sorted(self._load_list(), key=lambda x: (x[0], x[1])):
            if memory_to_free < freed:
                break
            if getattr(m, "comfy_patched_weights", False):
                m.to(device_to)
                if hasattr(m, "comfy_cast_weights"):
                    m.prev_comfy_cast_weights = m.comfy_cast_weights
                    m.comfy_cast_weights = True
                m.comfy_patched_weights = False
                freed += module_mem
        self.model.model_lowvram = True
        self.model.model_loaded_weight_memory -= freed
        return freed

    def partially_load(self, device_to, extra_memory=0, force_patch_weights=False) -> int:
        if self.model.current_weight_patches_uuid not in (None, self._patches_uuid()):  # another clone's weights
            self.unpatch_model(self.offload_device)
        self._restore_object_patches()  # as the real partially_load: unpatch_model, then patch_model
        self.patch_model(load_weights=False)
        if not self.model.model_lowvram and self.model.model_loaded_weight_memory > 0:
            return 0
        current_used = self.model.model_loaded_weight_memory
        full_load = current_used + extra_memory > self.model_size()
        self.load(device_to, lowvram_model_memory=current_used + extra_memory,
                  force_patch_weights=force_patch_weights, full_load=full_load)
        return self.model.model_loaded_weight_memory - current_used

    def detach(self, unpatch_all=True):
        if unpatch_all:
            self.unpatch_model(self.offload_device, unpatch_weights=unpatch_all)
        return self.model

    # -- weight patches (LoRA, issue 15 part 5) --------------------------------------------------
    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        model_sd = self.model.state_dict()
        added = []
        for k in patches:
            key, offset, function = (k, None, None) if isinstance(k, str) else (k[0], k[1], (k[2:] or (None,))[0])
            if key in model_sd:
                added.append(k)
                self.patches.setdefault(key, []).append((strength_patch, patches[k], strength_model, offset, function))
        self.patches_uuid = uuid.uuid4()
        return added

    def patch_weight_to_device(self, key, device_to=None, inplace_update=False):
        if key not in self.patches:
            return
        module_name, _, name = key.rpartition(".")
        module = self.model.get_submodule(module_name)
        weight = getattr(module, name)
        backup = self._weight_backup()
        if key not in backup:
            backup[key] = weight
        temp = weight.to(device=device_to or weight.device, dtype=torch.float32, copy=True)
        out = comfy.lora.calculate_weight(self.patches[key], temp, key)
        setattr(module, name, torch.nn.Parameter(out.to(weight.dtype), requires_grad=False))

    def _patches_uuid(self):
        if not hasattr(self, "patches_uuid"):  # the real constructor draws one
            self.patches_uuid = uuid.uuid4()
        return self.patches_uuid

    def _weight_backup(self) -> dict:
        if not hasattr(self.model, "lora_weight_backup"):
            self.model.lora_weight_backup = {}  # shared by every clone of the model, as the real backup
        return self.model.lora_weight_backup

    def _patch_weights(self) -> None:
        for key in self.patches:
            if key not in self._weight_backup():
                self.patch_weight_to_device(key)
        self.model.current_weight_patches_uuid = self._patches_uuid()

    def _restore_weights(self) -> None:
        backup = self._weight_backup()
        for key, weight in backup.items():
            module_name, _, name = key.rpartition(".")
            setattr(self.model.get_submodule(module_name), name, weight)
        backup.clear()
        self.model.current_weight_patches_uuid = None


CoreModelPatcher = ModelPatcher
