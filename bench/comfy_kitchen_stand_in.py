"""STAND-IN for ``comfy_kitchen`` (comfy-kitchen, ComfyUI 0.33's optional kernel package: a 56 MiB
wheel that does not fit the 64 MiB the GPU check may carry). Not the real package: every kernel
reports itself unavailable, so ComfyUI takes its own non-kitchen paths.

``bench/comfy_inproc.py`` serves this file under the name ``comfy_kitchen`` only when the real
package is not installed, and ``bench/gpu_check.py`` prints that it did. What ComfyUI 0.33.0 uses of
comfy_kitchen, and what each use meets here:

- ``comfy/ldm/modules/attention.py`` imports it outright and asks ``int8_attention_is_available()``
  at import: False, so the int8 attention is neither registered nor picked (``--use-ck-attention``
  would stop ComfyUI with its own "unavailable" error); ``int8_attention``,
  ``prequantize_int8_attention`` and ``int8_attention_from_prequantized`` raise.
- ``comfy/quant_ops.py`` imports ``comfy_kitchen.tensor`` inside ``try``: there is no such
  submodule, so ComfyUI logs "Failed to import comfy_kitchen ... fp8 and fp4 support will not be
  available" and uses its own stand-in layout classes (quantized ``comfy_quant`` checkpoints only;
  plain fp8 weight storage with casts, what the pack uses, does not go through it).
- ``comfy/float.py`` probes ``stochastic_rounding_fp8``: absent (AttributeError), so ComfyUI uses
  its own stochastic rounding.
- ``comfy/text_encoders/llama.py``: ``flash_attention_decode_is_available(device)`` is False, so
  ``flash_attention_decode`` (which raises) is never called.
- ``comfy/ldm/lightricks/vae/na_diffusion_decoder.py`` (``na3d``, ``rms_rope_``) and
  ``comfy/ldm/joyimage/model.py`` (``rms_rope``) call kernels that have no fallback: they raise
  here (models the pack's checks never run).
"""

from __future__ import annotations

STAND_IN = True  # lets a caller tell this file from the real package


def int8_attention_is_available(*args, **kwargs) -> bool:
    """The real package: whether its int8 attention kernel runs here. The stand-in: never."""
    return False


def flash_attention_decode_is_available(*args, **kwargs) -> bool:
    """The real package: whether its decode-time flash attention runs on a device. The stand-in: never."""
    return False


class KernelUnavailable(RuntimeError):
    """A comfy_kitchen kernel was called on the stand-in."""


def _kernel(name: str):
    def unavailable(*args, **kwargs):
        raise KernelUnavailable(f"comfy_kitchen.{name} is unavailable: comfy_kitchen here is the GPU check's "
                                "stand-in (bench/comfy_kitchen_stand_in.py), not the comfy-kitchen package")

    unavailable.__name__ = unavailable.__qualname__ = name
    return unavailable


#: The kernels ComfyUI 0.33.0 calls (see above); each raises :class:`KernelUnavailable` here.
KERNELS = ("int8_attention", "prequantize_int8_attention", "int8_attention_from_prequantized",
           "flash_attention_decode", "na3d", "rms_rope", "rms_rope_")


def __getattr__(name: str):
    """``comfy_kitchen.<kernel>`` (also ``from comfy_kitchen import <kernel>``); anything else is absent."""
    if name in KERNELS:
        return _kernel(name)
    raise AttributeError(f"module 'comfy_kitchen' (the GPU check's stand-in) has no attribute {name!r}")
