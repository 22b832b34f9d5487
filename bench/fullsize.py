"""The full-size Ingredients transformer without a download, for ``gpu_check.py`` and ``bench_memory.py``.

- ``build_on_meta``: ``IngredientsTransformer(TransformerConfig())`` on the meta device with the
  layers the host hands in (``nodes/host/layers.py::transformer_layers``: ComfyUI's ``comfy.ops``), its
  large ``Linear`` layers in the storage dtype (fp8 or the compute dtype), the rest in the compute
  dtype: what ``checkpoint.load_transformer`` would build, with no bytes allocated;
- ``materialise``: random weights on a device (the golden rule of ``/work/shared/golden``: the
  scale of trained weights, without a checkpoint), converted to the storage dtype there;
- ``load_models_gpu_budget``: the bytes of weights ComfyUI's own ``load_models_gpu`` lets a card
  keep for the memory figures the pack's sampler passes it (``host.load_for_run``);
- ``timed_denoise``: the pack's sampling loop (``sampling.denoise``, CFG batch 2, routed IDs) on
  random inputs, seconds per step (synchronised).

Every ``core`` argument is a function giving an ``ingredients_core`` submodule (the pack's copy
under ComfyUI, the top-level package without it), so the model and the host share one module set.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

import torch

logger = logging.getLogger("bench.fullsize")

GiB = 1024 ** 3
MiB = 1024 ** 2


@dataclass(frozen=True)
class RunShape:
    """One generation's size: the official 49 x 480 x 720 with 2 IDs and CFG by default."""

    frames: int = 49
    height: int = 480
    width: int = 720
    ids: int = 2
    cfg: float = 6.0

    @property
    def batch(self) -> int:
        return 2 if self.cfg > 1.0 else 1


OFFICIAL = RunShape()
SMOKE = RunShape(frames=9, height=64, width=96)  # fits ``testing.tiny_transformer.tiny_config``


def smoke_config(core):
    """The tiny transformer config (learned positions for 9 x 64 x 96), for CPU smoke runs."""
    return core("testing.tiny_transformer").tiny_config()


# -- memory accounting -----------------------------------------------------------------------------
def activation_bytes(core, config, shape: RunShape, element_size: int, batch: int | None = None) -> int:
    """``memory.transformer_activation_bytes`` for ``shape`` (both CFG halves unless ``batch``), with
    the default feed-forward chunk the pack runs with."""
    memory, vae = core("memory"), core("vae")
    size = memory.forward_size(config, batch or shape.batch, vae.latent_frame_count(shape.frames),
                               shape.height // 8, shape.width // 8, shape.ids)
    return memory.transformer_activation_bytes(size, element_size, core("settings").FF_CHUNK)


def load_models_gpu_budget(mm, free_bytes: int, minimum_memory_required: int) -> int:
    """``lowvram_model_memory`` of ComfyUI's ``load_models_gpu`` (0.3.64 and 0.33.0, NORMAL/LOW_VRAM on
    an NVIDIA GPU, where MIN_WEIGHT_MEMORY_RATIO is 0; nothing else loaded) for ``free_bytes`` of free
    VRAM and the ``minimum_memory_required`` a caller passes (``host.load_for_run`` passes the
    activation estimate of the whole CFG forward; ComfyUI adds its extra reserve and keeps at least
    ``minimum_inference_memory()`` free)."""
    minimum = max(mm.minimum_inference_memory(), minimum_memory_required + mm.extra_reserved_memory())
    return int(max(0, free_bytes - minimum))


# -- the model ---------------------------------------------------------------------------------------
def build_on_meta(core, config, layers: dict | None, storage: torch.dtype, compute: torch.dtype):
    """The transformer on the meta device in its storage/compute dtypes (no memory used)."""
    transformer = core("model.transformer")
    names = core("model.storage").storage_module_names
    with torch.device("meta"):
        model = transformer.IngredientsTransformer(config, **(layers or {}))
    model.to(dtype=compute)
    if storage != compute:
        modules = dict(model.named_modules())
        for name in names(model):
            modules[name].to(dtype=storage)
    return model.eval().requires_grad_(False)


def _golden_scale(name: str, tensor: torch.Tensor) -> tuple[float, float]:
    """(offset, scale) of the golden weight rule for this tensor: norms 1 + 0.05 x, biases 0.02 x,
    the rest x / sqrt(fan in)."""
    if tensor.dim() == 1 and name.endswith(".weight") and "norm" in name:
        return 1.0, 0.05
    if name.endswith(".bias"):
        return 0.0, 0.02
    fan_in = math.prod(tensor.shape[1:]) if tensor.dim() == 4 else (tensor.shape[-1] if tensor.dim() > 1 else 1)
    return 0.0, 1.0 / math.sqrt(fan_in)


@torch.no_grad()
def materialise(model: torch.nn.Module, device: torch.device, seed: int = 0) -> torch.nn.Module:
    """Give a meta model random weights on ``device``: each tensor drawn in bf16 on the device, then
    converted to its own dtype (fp8 clamped to its finite range first)."""
    model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        offset, scale = _golden_scale(name, tensor)
        draw = torch.empty(tensor.shape, dtype=torch.bfloat16, device=device).normal_(generator=generator)
        draw = draw.mul_(scale).add_(offset)
        if tensor.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            limit = torch.finfo(tensor.dtype).max
            draw = draw.float().clamp_(-limit, limit)
        tensor.copy_(draw)
    return model


def dtype_of(name: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
            "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}[name]


# -- the timed loop ------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_inputs(config, shape: RunShape, device: torch.device, dtype: torch.dtype, seed: int = 0) -> dict:
    """Random latents, image latents, prompt embeddings and ID tokens for ``shape``."""
    g = torch.Generator(device=device).manual_seed(seed)
    frames = (shape.frames - 1) // 4 + 1
    latent = (1, frames, config.out_channels, shape.height // 8, shape.width // 8)
    text = (1, config.max_text_seq_length, config.text_embed_dim)

    def draw(*size):
        return torch.randn(size, generator=g, device=device, dtype=torch.float32).to(dtype)

    return dict(latents=draw(*latent), image_latents=draw(*latent), prompt_embeds=draw(*text),
                negative_embeds=draw(*text),
                id_tokens=draw(shape.ids, config.ids.num_tokens, config.ids.token_dim))


def timed_denoise(core, model, shape: RunShape, steps: int, device: torch.device, dtype: torch.dtype,
                  cache=None, probe=None) -> list[float]:
    """Seconds of each step of ``sampling.denoise`` (dpm, the CogVideoX-5B-I2V schedule); ``probe()``
    is called at the end of every step (after the synchronisation)."""
    sampling = core("sampling")
    schedule = core("testing.make_tiny").COGVIDEOX_I2V_SCHEDULER_CONFIG
    inputs = run_inputs(model.config, shape, device, dtype)
    scheduler = sampling.make_scheduler("dpm", schedule)
    stamps: list[float] = []

    def step(info) -> None:
        sync(device)
        stamps.append(time.perf_counter())
        if probe is not None:
            probe()

    sync(device)
    stamps.append(time.perf_counter())
    with torch.no_grad():
        latents = sampling.denoise(model, scheduler, inputs["latents"], inputs["image_latents"],
                                   inputs["prompt_embeds"], inputs["negative_embeds"], inputs["id_tokens"],
                                   steps=steps, cfg=shape.cfg, generator=torch.Generator(device=device).manual_seed(1),
                                   callback=step, height=shape.height, width=shape.width, device=device,
                                   dtype=dtype, cache=cache, ff_chunk=core("settings").FF_CHUNK)
    if not torch.isfinite(latents).all():
        logger.warning("the random-weight run produced non-finite latents (timings are still valid)")
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def per_step(seconds: list[float]) -> float:
    """Median seconds per step without the first (warm-up) step (all steps when there is one)."""
    rest = sorted(seconds[1:] or seconds)
    mid = len(rest) // 2
    return rest[mid] if len(rest) % 2 else (rest[mid - 1] + rest[mid]) / 2


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def teacache_figures(cache, seconds: list[float]) -> dict:
    """Skipped evaluations and step times of a TeaCache run; ``speedup``: a computed step's time
    over the mean step time (all after the warm-up step), within this one run."""
    later = list(enumerate(seconds))[1:] or list(enumerate(seconds))
    computed = [s for i, s in later if i not in cache.skipped_steps]
    skipped = [s for i, s in later if i in cache.skipped_steps]
    mean = sum(s for _, s in later) / len(later)
    computed_s = per_step([0.0, *computed]) if computed else None
    return dict(threshold=cache.threshold, steps=cache.steps, skipped=cache.skipped, computed=cache.evaluations,
                skipped_steps=cache.skipped_steps, mean_step_s=mean, computed_step_s=computed_s,
                skipped_step_s=per_step([0.0, *skipped]) if skipped else None,
                speedup=computed_s / mean if computed_s else None)


class SageFallbacks(logging.Handler):
    """Counts ComfyUI's "Error running sage attention ... using pytorch attention instead"."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.count, self.first = 0, None

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "sage attention" in message:
            self.count += 1
            self.first = self.first or " ".join(message.split())[:200]


class DeviceUse:
    """The device's used memory (total - free, every process and allocator: what DynamicVRAM's
    comfy-aimdo keeps its weights in, which ``max_memory_allocated`` does not see) and aimdo's own
    VRAM: maxima of samples taken every ``interval`` seconds by a thread between :meth:`start` and
    :meth:`stop`, and at every :meth:`sample` call (step ends). Close to the peak, not exact."""

    def __init__(self, device: torch.device, interval: float = 0.01):
        self.device, self.interval = device, interval
        self.used = self.aimdo = None
        self._stop = threading.Event()
        self._thread = None

    def sample(self) -> None:
        if self.device.type != "cuda":
            return
        free, total = torch.cuda.mem_get_info(self.device)
        self.used = max(self.used or 0, int(total - free))
        control = _aimdo_control()
        if control is not None and getattr(control, "lib", None) is not None:
            self.aimdo = max(self.aimdo or 0, int(control.get_total_vram_usage()))

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> "DeviceUse":
        if self.device.type == "cuda" and self._thread is None:
            self._thread = threading.Thread(target=self._poll, name="device-use", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.sample()

    def figures(self) -> dict:
        return dict(device_used_peak=self.used, aimdo_vram_peak=self.aimdo)


def _aimdo_control():
    import sys

    return sys.modules.get("comfy_aimdo.control")
