"""Stand-in for ``comfy.cli_args``: ``args`` with ComfyUI's defaults for the flags the stand-ins read.

Flag names are ComfyUI's (``--fp8_e4m3fn-unet`` is ``args.fp8_e4m3fn_unet``). Tests set them and
call ``comfy.model_management.configure()`` (ComfyUI reads them once at start) or use
:func:`flags`, which does both and restores the defaults afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

BOOLEAN_FLAGS = (
    # dtypes per role
    "force_fp32", "force_fp16",
    "fp32_unet", "fp64_unet", "bf16_unet", "fp16_unet", "fp8_e4m3fn_unet", "fp8_e5m2_unet", "fp8_e8m0fnu_unet",
    "fp16_vae", "fp32_vae", "bf16_vae", "cpu_vae",
    "fp8_e4m3fn_text_enc", "fp8_e5m2_text_enc", "fp16_text_enc", "fp32_text_enc", "bf16_text_enc",
    "supports_fp8_compute",
    # memory
    "gpu_only", "highvram", "normalvram", "lowvram", "novram", "cpu", "disable_smart_memory",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="comfyui-stand-in")
    for name in BOOLEAN_FLAGS:
        parser.add_argument("--" + name.replace("_", "-"), dest=name, action="store_true")
    parser.add_argument("--reserve-vram", dest="reserve_vram", type=float, default=None)
    return parser


args = _parser().parse_args([])


def reset() -> None:
    """Every flag back to ComfyUI's default (none given)."""
    vars(args).update(vars(_parser().parse_args([])))


@contextlib.contextmanager
def flags(*names: str, **values) -> Iterator[argparse.Namespace]:
    """Run the block as if ComfyUI had been started with these flags (``"fp16_unet"``,
    ``reserve_vram=2.0``); the model-management stand-in is reconfigured on entry and exit."""
    import comfy.model_management as mm

    unknown = [n for n in (*names, *values) if not hasattr(args, n)]
    if unknown:
        raise AttributeError(f"the stand-in has no ComfyUI flag {unknown}")
    for name in names:
        setattr(args, name, True)
    vars(args).update(values)
    mm.configure()
    try:
        yield args
    finally:
        reset()
        mm.configure()
