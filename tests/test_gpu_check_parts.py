"""The GPU check's pure parts (no ComfyUI, no GPU): the comfy_kitchen stand-in, the finder that
serves it, DynamicVRAM detection from a ComfyUI tree, and which checks each job reports."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import comfy_inproc as inproc  # noqa: E402
import comfy_kitchen_stand_in as kitchen  # noqa: E402
import comfy_start  # noqa: E402
import gpu_check_workers as workers  # noqa: E402


def test_kitchen_stand_in_reports_every_kernel_unavailable():
    assert kitchen.STAND_IN is True
    assert kitchen.int8_attention_is_available() is False
    assert kitchen.flash_attention_decode_is_available("cuda") is False
    for name in ("int8_attention", "prequantize_int8_attention", "int8_attention_from_prequantized",
                 "flash_attention_decode", "na3d", "rms_rope", "rms_rope_"):
        with pytest.raises(kitchen.KernelUnavailable, match=f"comfy_kitchen.{name} is unavailable.*stand-in"):
            getattr(kitchen, name)(1, 2)
    # what ComfyUI 0.33 probes to fall back: comfy/float.py and comfy/quant_ops.py
    assert not hasattr(kitchen, "stochastic_rounding_fp8")
    assert not hasattr(kitchen, "tensor")


def test_finder_serves_the_stand_in_file_without_submodules():
    finder = inproc._StandInFinder(["comfy_kitchen", "av"])
    spec = finder.find_spec("comfy_kitchen")
    assert Path(spec.origin) == BENCH / "comfy_kitchen_stand_in.py"
    assert spec.submodule_search_locations is None  # so ``import comfy_kitchen.tensor`` fails, as ComfyUI expects
    assert finder.find_spec("comfy_kitchen.tensor") is None
    assert finder.find_spec("av.container").name == "av.container"  # av: a package of stand-in names
    assert finder.find_spec("numpy") is None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.int8_attention_is_available() is False


def test_stand_in_notes_name_the_stand_in():
    assert "STAND-IN" in inproc.stand_in_note("comfy_kitchen")
    assert "bench/comfy_kitchen_stand_in.py" in inproc.stand_in_note("comfy_kitchen")


def test_dynamic_vram_is_read_from_the_comfyui_tree(tmp_path):
    (tmp_path / "new" / "comfy").mkdir(parents=True)
    (tmp_path / "new" / "comfy" / "cli_args.py").write_text("def enables_dynamic_vram():\n    return True\n")
    (tmp_path / "old" / "comfy").mkdir(parents=True)
    (tmp_path / "old" / "comfy" / "cli_args.py").write_text("args = None\n")
    assert comfy_start.has_dynamic_vram(tmp_path / "new")
    assert not comfy_start.has_dynamic_vram(tmp_path / "old")
    assert not comfy_start.has_dynamic_vram(tmp_path / "absent")


def test_each_job_names_its_checks():
    assert workers.job_checks("chain:default") == ["chain:default", "native:default:ksampler",
                                                   "native:default:custom_advanced"]
    assert workers.job_checks("item:fp8_8gb") == ["item:fp8_8gb", "item:fp8_8gb:MODEL"]
    assert workers.job_checks("item:sage_bf16") == ["item:sage_bf16"]
