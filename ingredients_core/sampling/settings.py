"""Per-run generation settings and where a run computes, checked before anything loads.

:class:`GenerationSettings` holds what a user sets for one video; :func:`resolve_device` and
:func:`resolve_dtype` turn ``auto``/names into torch values, with a clear :class:`SettingsError`
for a device this machine cannot use.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..encoders.vae import latent_frame_count
from .. import ERROR_NAMESPACE

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

DTYPE_NAMES = ("auto", "float32", "float16", "bfloat16")
MAX_TEACACHE = 1.0
FF_CHUNK = 4096  # feed-forward tokens per piece: same result, a smaller peak


class SettingsError(ValueError):
    """Generation settings that cannot work; the message says what to use instead."""

    __module__ = ERROR_NAMESPACE


@dataclass(frozen=True)
class GenerationSettings:
    """Per-run settings. Defaults are the official ones (480 x 720, 49 frames, 50 DPM steps, CFG 6).

    ``local_face_scale`` None keeps the checkpoint's value. ``dtype``/``device`` say where the models
    are loaded (:func:`load_bundle`); "auto" picks CUDA when present, bfloat16 on CUDA and float32 on
    the CPU; :func:`generate` refuses a bundle loaded elsewhere.

    Differences from the official ``infer.py`` run:

    - ``vae_tiling`` is on by default to keep decoding memory low; the official script decodes
      untiled (set ``vae_tiling=False``, CLI ``--no-vae-tiling``, for its exact decode). Tiling
      changes pixels slightly where tiles are blended; slicing only matters for batches.
    - ``seed`` 0 is an ordinary seed here; the official ``infer.py`` treats seed 0 as "no seed"
      (a random one each run).
    - The scheduler names (``dpm``, ``ddim``) are :data:`ingredients_core.sampling.official.SCHEDULERS`.
    - ``teacache`` > 0 skips transformer evaluations whose change TeaCache estimates below the
      threshold (:mod:`ingredients_core.sampling.step_cache`); 0, the default, computes every step.
    - ``ff_chunk``: the feed-forward runs over at most this many tokens at a time (each token on its
      own, so the result is the same up to float rounding; the peak activation memory at 49 x 480 x
      720 drops by about a quarter); None runs it over all tokens at once.
    """

    height: int = 480
    width: int = 720
    frames: int = 49
    steps: int = 50
    cfg: float = 6.0
    seed: int = 42
    scheduler: str = "dpm"
    dynamic_cfg: bool = False
    local_face_scale: float | None = None
    dtype: str = "auto"
    device: str = "auto"
    fps: int = 8
    vae_tiling: bool = True
    vae_slicing: bool = False
    teacache: float = 0.0
    ff_chunk: int | None = FF_CHUNK

    def validate(self) -> None:
        """Raise :class:`SettingsError` for values no model can use."""
        if self.frames < 1 or (self.frames - 1) % 4:
            raise SettingsError(
                f"frames must be 4k+1 (1, 5, 9, ..., 49): the VAE packs 4 frames per latent frame "
                f"after the first; got {self.frames}"
            )
        for name in ("height", "width"):
            value = getattr(self, name)
            if value < 16 or value % 16:
                raise SettingsError(f"{name} must be a positive multiple of 16 pixels; got {value}")
        if self.steps < 1:
            raise SettingsError(f"steps must be at least 1; got {self.steps}")
        if self.cfg < 0:
            raise SettingsError(f"cfg must be 0 or more (1 or less disables guidance); got {self.cfg}")
        from .official import SCHEDULERS

        if self.scheduler not in SCHEDULERS:
            raise SettingsError(f"scheduler must be one of {SCHEDULERS}; got {self.scheduler!r}")
        if self.dtype not in DTYPE_NAMES:
            raise SettingsError(f"dtype must be one of {DTYPE_NAMES}; got {self.dtype!r}")
        if not 0 <= self.seed < 2**64:
            raise SettingsError(f"seed must be in [0, 2**64); got {self.seed}")
        if self.fps < 1:
            raise SettingsError(f"fps must be at least 1; got {self.fps}")
        if self.local_face_scale is not None and self.local_face_scale < 0:
            raise SettingsError(f"local_face_scale must be 0 or more; got {self.local_face_scale}")
        if self.ff_chunk is not None and self.ff_chunk < 1:
            raise SettingsError(f"ff_chunk must be a positive token count or None (no chunking); got {self.ff_chunk}")
        if not 0.0 <= self.teacache <= MAX_TEACACHE:
            raise SettingsError(f"teacache must be between 0 (off) and {MAX_TEACACHE}; got {self.teacache} "
                                "(published CogVideoX-5B settings: 0.10 to 0.20)")

    def check_model(self, config) -> None:
        """Check the size against a transformer config (learned positional embeddings fix it)."""
        if not getattr(config, "use_learned_positional_embeddings", False):
            return
        height, width = config.sample_height * 8, config.sample_width * 8
        latent = latent_frame_count(config.sample_frames, config.temporal_compression_ratio)
        if (self.height, self.width, self.frames) != (height, width, config.sample_frames):
            raise SettingsError(
                f"this checkpoint has learned positional embeddings for exactly {config.sample_frames} "
                f"frames at {height}x{width} (latent {latent}x{config.sample_height}x"
                f"{config.sample_width}); got {self.frames} frames at {self.height}x{self.width}. "
                f"Use height={height}, width={width}, frames={config.sample_frames}."
            )

    def replace(self, **changes: Any) -> GenerationSettings:
        return dataclasses.replace(self, **changes)

    def sized_for(self, config) -> GenerationSettings:
        """These settings at the size a checkpoint with learned positional embeddings requires
        (480 x 720, 49 frames for the official model); unchanged for other checkpoints."""
        if not getattr(config, "use_learned_positional_embeddings", False):
            return self
        return self.replace(height=config.sample_height * 8, width=config.sample_width * 8,
                            frames=config.sample_frames)


def resolve_device(name: str, require_available: bool = False) -> torch.device:
    """"auto" -> CUDA when available, else the CPU; anything else as torch understands it.

    A name torch does not know raises :class:`SettingsError`. With ``require_available``, so does a
    device this machine cannot compute on (``cuda`` without CUDA, ``cuda:3`` with two GPUs, ``mps``
    without Metal, ``meta``).
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise SettingsError(f"device {name!r} is not a device name torch knows; use auto, cpu, cuda or "
                            "cuda:N") from error
    if not require_available or device.type == "cpu":
        return device
    problem = None
    if device.type == "cuda" and not torch.cuda.is_available():
        problem = "this torch has no usable CUDA GPU (a CPU-only build, or no NVIDIA driver)"
    elif device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        problem = f"this machine has {torch.cuda.device_count()} CUDA GPU(s), counted from cuda:0"
    elif device.type == "mps" and not torch.backends.mps.is_available():
        problem = "Metal (mps) is not available here"
    elif device.type == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        problem = "no Intel GPU (xpu) is available here"
    elif device.type not in ("cuda", "mps", "xpu"):
        problem = f"models cannot run on a {device.type!r} device here"
    if problem:
        raise SettingsError(f"device {name!r}: {problem}; use --device auto or cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """"auto" -> bfloat16 on CUDA (the official dtype), float32 elsewhere."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPE_NAMES:
        raise SettingsError(f"dtype must be one of {DTYPE_NAMES}; got {name!r}")
    return getattr(torch, name)


def _indexed(device: torch.device) -> torch.device:
    """A bare ``cuda`` device as the GPU it means now (the current device index)."""
    import torch

    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are the same; bare ``cuda`` counts as the current GPU."""
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return a.index in (None, b.index) or b.index is None
    return _indexed(a) == _indexed(b)
