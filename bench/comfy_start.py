"""What ComfyUI's ``main.py`` does at start around memory, for the in-process benches (``comfy_inproc``).

Read from ComfyUI 0.33.0's ``main.py``, ``cuda_malloc.py`` and ``comfy/cli_args.py`` (0.3.64 has steps
1 and, without DynamicVRAM, nothing of 2-3):

1. ``import cuda_malloc`` before torch: with a CUDA build of torch (always for CUDA >= 13) it sets
   ``PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync`` unless ``--disable-cuda-malloc``.
2. ``comfy_aimdo.control.init(simple_vram_headroom=--reserve-vram bytes, nvml_pressure=not
   --disable-nvml-pressure)`` before torch, when ``cli_args.enables_dynamic_vram()`` (true unless
   ``--disable-dynamic-vram``, ``--highvram``, ``--gpu-only``, ``--novram`` or ``--cpu``); older aimdo
   protocols (fewer keywords) tried in turn.
3. After ``comfy.model_management``: with ``--enable-dynamic-vram``, or when step 2 applies on an
   NVIDIA GPU (AMD with ROCm >= 7.14) and torch >= 2.8, ``comfy_aimdo.control.init_devices`` with
   (index, ``--vram-headroom`` bytes) per torch device; when that succeeds, aimdo logs at ComfyUI's
   console level, ``comfy.model_patcher.CoreModelPatcher`` becomes ``ModelPatcherDynamic`` and
   ``comfy.memory_management.aimdo_enabled`` is set. Otherwise ComfyUI keeps the legacy patcher.

:func:`report` says what happened, for the check's output.
"""

from __future__ import annotations

import importlib.util
import logging
import sys

logger = logging.getLogger("bench.comfy_start")

GiB = 1024 ** 3
_STATE: dict = {}  # this process's start, filled once by before_torch/after_model_management


def before_torch() -> None:
    """Steps 1-2 (``comfy.cli_args`` already parsed)."""
    from comfy.cli_args import args

    _STATE["torch_imported_first"] = "torch" in sys.modules
    if _STATE["torch_imported_first"]:
        logger.warning("torch was imported before ComfyUI's start (main.py never does): the CUDA allocator "
                       "backend and comfy-aimdo's hooks may not take effect")
    if importlib.util.find_spec("cuda_malloc") is not None:
        import cuda_malloc  # noqa: F401  (sets PYTORCH_CUDA_ALLOC_CONF from ComfyUI's flags)

        _STATE["cuda_malloc"] = bool(args.cuda_malloc)
    import comfy.cli_args as cli_args

    wants = getattr(cli_args, "enables_dynamic_vram", None)
    if wants is None:
        _STATE["dynamic_vram"] = "not in this ComfyUI (no comfy.cli_args.enables_dynamic_vram)"
        return
    _STATE["wants_dynamic"] = bool(wants())
    if not _STATE["wants_dynamic"]:
        return
    import comfy_aimdo.control as control

    headroom = None if args.reserve_vram is None else int(args.reserve_vram * GiB)
    attempts = (dict(simple_vram_headroom=headroom, nvml_pressure=not args.disable_nvml_pressure),
                dict(simple_vram_headroom=headroom), {})
    for keywords in attempts:  # aimdo 0.4.11+, 0.4.10, 0.4.9 protocols
        try:
            _STATE["aimdo_init"] = bool(control.init(**keywords))
            break
        except TypeError:
            continue


def _supported(mm) -> bool:
    if mm.is_nvidia():
        return True
    return bool(mm.is_amd() and getattr(mm, "rocm_version", (0, 0)) >= (7, 14))


def _set_aimdo_log_level(control, args) -> None:
    from comfy.cli_args import get_console_log_level

    level = get_console_log_level(args.verbose)
    setter = {"DEBUG": "set_log_debug", "DETAIL": "set_log_detail", "CRITICAL": "set_log_critical",
              "ERROR": "set_log_error", "WARNING": "set_log_warning"}.get(level, "set_log_info")
    getattr(control, setter, control.set_log_info)()


def after_model_management(mm) -> None:
    """Step 3."""
    if "wants_dynamic" not in _STATE:
        return
    from comfy.cli_args import args

    if not (args.enable_dynamic_vram or _STATE["wants_dynamic"]):
        _STATE["dynamic_vram"] = ("off: these flags turn it off (--cpu, --novram, --highvram, --gpu-only or "
                                  "--disable-dynamic-vram)")
        return
    if not (args.enable_dynamic_vram or _supported(mm)):
        _STATE["dynamic_vram"] = "off: ComfyUI turns it on only on NVIDIA (AMD ROCm >= 7.14) GPUs"
        return
    if not args.enable_dynamic_vram and mm.torch_version_numeric < (2, 8):
        _STATE["dynamic_vram"] = "off: torch < 2.8"
        return
    import comfy.memory_management
    import comfy.model_patcher
    import comfy_aimdo.control as control

    devices = mm.get_all_torch_devices()
    try:
        ready = control.init_devices((d.index, int(args.vram_headroom * GiB)) for d in devices)
    except TypeError:  # aimdo 0.4.9: device indices only
        ready = control.init_devices(d.index for d in devices)
    if not ready:
        _STATE["dynamic_vram"] = "off: comfy-aimdo did not initialise (no working aimdo library for this device)"
        return
    _set_aimdo_log_level(control, args)
    comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
    comfy.memory_management.aimdo_enabled = True
    _STATE["dynamic_vram"] = "on"
    logger.info("DynamicVRAM on (comfy-aimdo), as ComfyUI's main.py turns it on")


def report() -> dict:
    """What this process's start did: ``dynamic_vram`` ("on", or why off), ``core_patcher`` (the
    class ``comfy.model_patcher.CoreModelPatcher`` names now), ``cuda_malloc``, ``aimdo_init``,
    ``torch_imported_first``."""
    out = dict(_STATE)
    patcher = sys.modules.get("comfy.model_patcher")
    core = getattr(patcher, "CoreModelPatcher", None) if patcher else None
    out["core_patcher"] = core.__name__ if core is not None else "none (this ComfyUI has no CoreModelPatcher)"
    return out


def has_dynamic_vram(comfyui) -> bool:
    """Whether the ComfyUI tree at ``comfyui`` has DynamicVRAM (read from its source, nothing imported)."""
    from pathlib import Path

    cli_args = Path(comfyui) / "comfy" / "cli_args.py"
    return cli_args.is_file() and "def enables_dynamic_vram" in cli_args.read_text(encoding="utf-8")
