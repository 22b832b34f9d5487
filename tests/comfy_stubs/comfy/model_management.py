"""Stand-in for ``comfy.model_management``: ComfyUI's devices, dtype pickers and model loading, small.

The logic follows ComfyUI 0.3.64 / 0.33.0 (read there; only CUDA-like GPUs are modelled, no
DirectML/XPU/MPS). Two machines:

- the default: a machine without a GPU (what ``--cpu`` gives): every device is the CPU;
- :func:`use_fake_gpu`: a GPU with ``total_vram`` bytes (the fake GPU of ``fake_gpu.py``, which
  reports ``device='meta'``): load devices are the GPU, offload and intermediate devices the CPU.

The flags come from ``comfy.cli_args.args``; :func:`configure` re-reads them as ComfyUI does at
start. ``load_models_gpu`` works out each model's budget as ComfyUI does (0.33's formula: no
128 MB floor) and loads it with ``ModelPatcher.partially_load``, evicting or partially unloading
other models (``free_memory``). Free GPU memory is the budget minus every parameter and buffer
that sits on the GPU. ``load_calls`` records every call, for tests.
"""

from __future__ import annotations

import enum
import logging
import weakref

import torch

from comfy.cli_args import args

logger = logging.getLogger(__name__)
GiB = 1024 ** 3


class VRAMState(enum.Enum):
    DISABLED = 0
    NO_VRAM = 1
    LOW_VRAM = 2
    NORMAL_VRAM = 3
    HIGH_VRAM = 4
    SHARED = 5


class CPUState(enum.Enum):
    GPU = 0
    CPU = 1
    MPS = 2


class InterruptProcessingException(Exception):
    pass


FLOAT8_TYPES = [torch.float8_e4m3fn, torch.float8_e5m2]
MIN_WEIGHT_MEMORY_RATIO = 0.0  # ComfyUI's value on NVIDIA
lowvram_available = True
interrupt_processing = False
load_calls: list[list] = []
current_loaded_models: list = []
_patchers: weakref.WeakSet = weakref.WeakSet()  # every ModelPatcher, to count what sits on the GPU


class _Machine:
    gpu = False
    total_vram = 16 * GiB
    total_ram = 64 * GiB
    fp16 = True  # should_use_fp16 on the GPU (compute capability >= 7, not a GTX 16xx)
    bf16 = True  # should_use_bf16 on the GPU (compute capability >= 8)
    fp8_compute = False


machine = _Machine()
cpu_state = CPUState.CPU
vram_state = VRAMState.DISABLED
EXTRA_RESERVED_VRAM = 400 * 1024 * 1024
DISABLE_SMART_MEMORY = False
FORCE_FP32 = False


# -- test controls (not in ComfyUI) --------------------------------------------------------------
def configure() -> None:
    """Derive the state from ``args`` and the machine, as ComfyUI does once at start."""
    global cpu_state, vram_state, EXTRA_RESERVED_VRAM, DISABLE_SMART_MEMORY, FORCE_FP32
    cpu_state = CPUState.CPU if (args.cpu or not machine.gpu) else CPUState.GPU
    vram_state = VRAMState.NORMAL_VRAM
    if args.lowvram:
        vram_state = VRAMState.LOW_VRAM
    elif args.novram:
        vram_state = VRAMState.NO_VRAM
    elif args.highvram or args.gpu_only:
        vram_state = VRAMState.HIGH_VRAM
    if cpu_state != CPUState.GPU:
        vram_state = VRAMState.DISABLED
    EXTRA_RESERVED_VRAM = 400 * 1024 * 1024 if args.reserve_vram is None else int(args.reserve_vram * GiB)
    DISABLE_SMART_MEMORY = args.disable_smart_memory
    FORCE_FP32 = args.force_fp32


def use_fake_gpu(total_vram: int = 16 * GiB, fp16: bool = True, bf16: bool = True, fp8_compute: bool = False):
    """A machine with one GPU (the fake GPU) of ``total_vram`` bytes and these capabilities."""
    unload_all_models()
    machine.gpu, machine.total_vram = True, int(total_vram)
    machine.fp16, machine.bf16, machine.fp8_compute = fp16, bf16, fp8_compute
    configure()


def use_cpu() -> None:
    """Back to the default machine: no GPU, every device the CPU."""
    unload_all_models()
    machine.gpu = False
    configure()


# -- devices -------------------------------------------------------------------------------------
def get_torch_device() -> torch.device:
    return torch.device("cpu") if cpu_state == CPUState.CPU else torch.device("meta")


#: MultiGPU stand-in: devices beside get_torch_device() (e.g. torch.device("cpu", 0): a distinct dict key
#: whose tensors live on the CPU), listed by get_all_torch_devices as 0.33.0 lists a machine's GPUs.
extra_torch_devices: list = []


def get_all_torch_devices(exclude_current=False) -> list:
    devices = [get_torch_device(), *extra_torch_devices]
    return devices[1:] if exclude_current else devices


def set_torch_device(device) -> None:  # 0.33.0: the thread's CUDA device; nothing to do on the stand-in's
    return None


def is_device_cpu(device) -> bool:
    return getattr(device, "type", None) == "cpu"


def unet_offload_device() -> torch.device:
    return get_torch_device() if vram_state == VRAMState.HIGH_VRAM else torch.device("cpu")


def text_encoder_offload_device() -> torch.device:
    return get_torch_device() if args.gpu_only else torch.device("cpu")


def text_encoder_device() -> torch.device:
    if args.gpu_only:
        return get_torch_device()
    if vram_state in (VRAMState.HIGH_VRAM, VRAMState.NORMAL_VRAM) and should_use_fp16(prioritize_performance=False):
        return get_torch_device()
    return torch.device("cpu")


def vae_device() -> torch.device:
    return torch.device("cpu") if args.cpu_vae else get_torch_device()


def vae_offload_device() -> torch.device:
    return get_torch_device() if args.gpu_only else torch.device("cpu")


def intermediate_device() -> torch.device:
    return get_torch_device() if args.gpu_only else torch.device("cpu")


# -- dtypes --------------------------------------------------------------------------------------
def should_use_fp16(device=None, model_params=0, prioritize_performance=True, manual_cast=False) -> bool:
    if is_device_cpu(device):
        return False
    if args.force_fp16:
        return True
    if FORCE_FP32 or cpu_state == CPUState.CPU:
        return False
    return machine.fp16


def should_use_bf16(device=None, model_params=0, prioritize_performance=True, manual_cast=False) -> bool:
    if is_device_cpu(device) or FORCE_FP32 or cpu_state == CPUState.CPU:
        return False
    return machine.bf16


def supports_fp8_compute(device=None) -> bool:
    return bool(args.supports_fp8_compute or (cpu_state == CPUState.GPU and machine.fp8_compute))


def supports_dtype(device, dtype) -> bool:
    if dtype == torch.float32:
        return True
    if is_device_cpu(device):
        return False
    return dtype in (torch.float16, torch.bfloat16)


def unet_dtype(device=None, model_params=0, supported_dtypes=(torch.float16, torch.bfloat16, torch.float32),
               weight_dtype=None) -> torch.dtype:
    forced = [("fp32_unet", torch.float32), ("fp64_unet", torch.float64), ("bf16_unet", torch.bfloat16),
              ("fp16_unet", torch.float16), ("fp8_e4m3fn_unet", torch.float8_e4m3fn),
              ("fp8_e5m2_unet", torch.float8_e5m2)]
    for flag, dtype in forced:
        if getattr(args, flag):
            return dtype
    if weight_dtype in FLOAT8_TYPES and (supports_fp8_compute(device)
                                         or model_params * 2 > maximum_vram_for_weights(device)):
        return weight_dtype
    if weight_dtype == torch.float16 and torch.float16 in supported_dtypes and should_use_fp16(device, model_params):
        return torch.float16
    for manual_cast in (False, True):
        for dt in supported_dtypes:
            if dt == torch.float16 and should_use_fp16(device, model_params, manual_cast=manual_cast):
                return dt
            if dt == torch.bfloat16 and should_use_bf16(device, model_params, manual_cast=manual_cast):
                return dt
    return torch.float32


def unet_manual_cast(weight_dtype, inference_device,
                     supported_dtypes=(torch.float16, torch.bfloat16, torch.float32)) -> torch.dtype | None:
    """The compute dtype for weights stored in ``weight_dtype``; None: compute in the weight dtype."""
    if weight_dtype in (torch.float32, torch.float64):
        return None
    fp16_supported = should_use_fp16(inference_device, prioritize_performance=False)
    if fp16_supported and weight_dtype == torch.float16:
        return None
    bf16_supported = should_use_bf16(inference_device)
    if bf16_supported and weight_dtype == torch.bfloat16:
        return None
    fp16_supported = should_use_fp16(inference_device, prioritize_performance=True)
    for dt in supported_dtypes:
        if dt == torch.float16 and fp16_supported:
            return torch.float16
        if dt == torch.bfloat16 and bf16_supported:
            return torch.bfloat16
    return torch.float32


def text_encoder_dtype(device=None) -> torch.dtype:
    for flag, dtype in (("fp8_e4m3fn_text_enc", torch.float8_e4m3fn), ("fp8_e5m2_text_enc", torch.float8_e5m2),
                        ("fp16_text_enc", torch.float16), ("bf16_text_enc", torch.bfloat16),
                        ("fp32_text_enc", torch.float32)):
        if getattr(args, flag):
            return dtype
    return torch.float16  # ComfyUI's default on every device (its text encoders compute in fp32)


def vae_dtype(device=None, allowed_dtypes=()) -> torch.dtype:
    for flag, dtype in (("fp16_vae", torch.float16), ("bf16_vae", torch.bfloat16), ("fp32_vae", torch.float32)):
        if getattr(args, flag):
            return dtype
    for dt in allowed_dtypes:
        if dt == torch.float16 and should_use_fp16(device):
            return dt
        if dt == torch.bfloat16 and should_use_bf16(device):
            return dt
    return torch.float32


# -- memory --------------------------------------------------------------------------------------
def get_total_memory(dev=None, torch_total_too=False):
    dev = get_torch_device() if dev is None else dev
    total = machine.total_ram if is_device_cpu(dev) else machine.total_vram
    return (total, total) if torch_total_too else total


def _bytes_on(device: torch.device) -> int:
    seen, used = set(), 0
    for patcher in list(_patchers):
        for tensor in [*patcher.model.parameters(), *patcher.model.buffers()]:
            if tensor.device == device and id(tensor) not in seen:
                seen.add(id(tensor))
                used += tensor.nelement() * tensor.element_size()
    return used


def get_free_memory(dev=None, torch_free_too=False):
    dev = get_torch_device() if dev is None else dev
    free = machine.total_ram if is_device_cpu(dev) else machine.total_vram - _bytes_on(dev)
    return (free, 0) if torch_free_too else free


def extra_reserved_memory() -> int:
    return EXTRA_RESERVED_VRAM


def minimum_inference_memory() -> float:
    return 0.8 * GiB + extra_reserved_memory()


def maximum_vram_for_weights(device=None) -> float:
    return get_total_memory(device) * 0.88 - minimum_inference_memory()


def module_size(module: torch.nn.Module) -> int:
    return sum(t.nelement() * t.element_size() for t in module.state_dict().values())


def cast_to(weight, dtype=None, device=None, non_blocking=False, copy=False, stream=None):
    if device is None or weight.device == device:
        if not copy and (dtype is None or weight.dtype == dtype):
            return weight
        return weight.to(dtype=dtype, copy=copy)
    moved = torch.empty_like(weight, dtype=dtype, device=device)
    moved.copy_(weight, non_blocking=non_blocking)
    return moved


def cast_to_device(tensor, device, dtype, copy=False):
    return cast_to(tensor, dtype=dtype, device=device, copy=copy)


def dtype_size(dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


class LoadedModel:
    """One patcher in ``current_loaded_models`` (held weakly, as in ComfyUI)."""

    def __init__(self, model):
        self._model = weakref.ref(model)
        self.device = model.load_device
        self.currently_used = True

    @property
    def model(self):
        return self._model()

    def is_dead(self) -> bool:
        return self.model is None

    def model_memory(self):
        return self.model.model_size()

    def model_loaded_memory(self):
        return self.model.loaded_size()

    def model_offloaded_memory(self):
        return self.model.model_size() - self.model.loaded_size()

    def model_memory_required(self, device):
        return self.model_offloaded_memory() if device == self.model.current_loaded_device() else self.model_memory()

    def model_load(self, lowvram_model_memory=0, force_patch_weights=False):
        self.model.partially_load(self.device, lowvram_model_memory or 1e32, force_patch_weights=force_patch_weights)
        return self.model.model

    def model_unload(self, memory_to_free=None, unpatch_weights=True) -> bool:
        """Free ``memory_to_free`` bytes by a partial unload if that is enough, else unload fully."""
        if memory_to_free is not None and memory_to_free < self.model.loaded_size():
            if self.model.partially_unload(self.model.offload_device, memory_to_free) >= memory_to_free:
                return False
        self.model.detach(unpatch_weights)
        return True

    def __eq__(self, other):
        return self.model is other.model


def _drop_dead() -> None:
    current_loaded_models[:] = [m for m in current_loaded_models if not m.is_dead()]


def free_memory(memory_required, device, keep_loaded=()):
    """Unload (or partially unload) models on ``device`` until ``memory_required`` bytes are free;
    the models with the least offloaded memory go first, as in ComfyUI."""
    _drop_dead()
    candidates = [(-m.model_offloaded_memory(), m.model_memory(), i) for i, m in enumerate(current_loaded_models)
                  if m.device == device and m not in keep_loaded]
    unloaded = []
    for *_, i in sorted(candidates):
        memory_to_free = None
        if not DISABLE_SMART_MEMORY:
            free = get_free_memory(device)
            if free > memory_required:
                break
            memory_to_free = memory_required - free
        current_loaded_models[i].currently_used = False
        if current_loaded_models[i].model_unload(memory_to_free):
            unloaded.append(i)
    return [current_loaded_models.pop(i) for i in sorted(unloaded, reverse=True)]


def _budget(loaded: LoadedModel, minimum_memory_required: float, force_full_load: bool) -> float:
    """Bytes of weights this model may put on its device (0 = all of them), as ComfyUI computes it."""
    device = loaded.model.load_device
    state = VRAMState.DISABLED if is_device_cpu(device) else vram_state
    budget = 0
    if lowvram_available and state in (VRAMState.LOW_VRAM, VRAMState.NORMAL_VRAM) and not force_full_load:
        loaded_memory = loaded.model_loaded_memory()
        free = get_free_memory(device) + loaded_memory
        budget = max(0, free - minimum_memory_required,
                     min(free * MIN_WEIGHT_MEMORY_RATIO, free - minimum_inference_memory())) - loaded_memory
        budget = 0.1 if budget == 0 else budget
    if state == VRAMState.NO_VRAM:
        budget = 0.1
    return budget


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False) -> None:
    load_calls.append(list(models))
    inference_memory = minimum_inference_memory()
    extra_mem = max(inference_memory, memory_required + extra_reserved_memory())
    if minimum_memory_required is None:
        minimum_memory_required = extra_mem
    else:
        minimum_memory_required = max(inference_memory, minimum_memory_required + extra_reserved_memory())
    _drop_dead()
    to_load = []
    for patcher in dict.fromkeys(models):
        loaded = next((m for m in current_loaded_models if m.model is patcher), None) or LoadedModel(patcher)
        loaded.currently_used = True
        to_load.append(loaded)
    for loaded in to_load:  # already-loaded models (and clones) are taken out of the list, then re-added
        for other in [m for m in current_loaded_models if loaded.model.is_clone(m.model)]:
            current_loaded_models.remove(other)
            other.model.detach(unpatch_all=False)
    required: dict[torch.device, float] = {}
    for loaded in to_load:
        required[loaded.device] = required.get(loaded.device, 0) + loaded.model_memory_required(loaded.device)
    for device, needed in required.items():
        if not is_device_cpu(device):
            free_memory(needed * 1.1 + extra_mem, device)
            if get_free_memory(device) < minimum_memory_required:
                free_memory(minimum_memory_required, device)
    for loaded in to_load:
        loaded.model_load(_budget(loaded, minimum_memory_required, force_full_load), force_patch_weights)
        current_loaded_models.insert(0, loaded)


def loaded_models(only_currently_used=False):
    return [m.model for m in current_loaded_models if m.currently_used or not only_currently_used]


def unload_all_models() -> None:
    for device in {m.device for m in current_loaded_models}:
        free_memory(1e30, device)


def throw_exception_if_processing_interrupted() -> None:
    global interrupt_processing
    if interrupt_processing:
        interrupt_processing = False
        raise InterruptProcessingException()


configure()


def soft_empty_cache(force=False) -> None:
    """ComfyUI returns the CUDA cache to the driver; the stand-in machines keep no cache."""
    return None
