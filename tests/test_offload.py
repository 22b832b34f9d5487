"""Memory options of the host-free path: fp8 weights, offloading, attention choice, TeaCache."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from test_cli import FACE, _args
from test_cli import photos as photos  # noqa: F401  (fixture)
from test_pipeline import _face

from ingredients_core.standalone import cli
from ingredients_core.sampling import pipeline as P
from ingredients_core.faces import encoder as face_encoder
from ingredients_core.sampling.offload import (
    OptionError,
    resolve_attention,
    resolve_weight_dtype,
)
from ingredients_core.testing.make_tiny import make_tiny_model

PROMPT = "two friends talk on a sunny beach"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("offload_model"))


@pytest.fixture(autouse=True)
def given_detection(monkeypatch):
    monkeypatch.setattr(face_encoder, "detect_faces", lambda model, bgr: [FACE])


def _generate(tiny_dir, **memory):
    bundle = P.load_bundle(tiny_dir, device="cpu", dtype="float32", **memory)
    settings = P.GenerationSettings(steps=3, seed=5).sized_for(bundle.transformer.config)
    return P.generate(bundle, [_face(1), _face(2)], PROMPT, settings=settings), bundle


def test_offloading_changes_nothing_in_the_result(tiny_dir):
    plain, _ = _generate(tiny_dir)
    for offload in ("model", "blocks"):
        result, bundle = _generate(tiny_dir, offload=offload)
        assert torch.equal(result.latents, plain.latents), offload
    # blocks: diffusers' group offloading hooks sit on every layer of the transformer
    from diffusers.hooks import HookRegistry

    hooked = [m for m in bundle.transformer.modules() if isinstance(getattr(m, "_diffusers_hook", None), HookRegistry)]
    assert len(hooked) > len(bundle.transformer.transformer_blocks)


def test_fp8_weights_run_and_stay_fp8(tiny_dir):
    plain, _ = _generate(tiny_dir)
    result, bundle = _generate(tiny_dir, weight_dtype="fp8_e4m3fn", offload="blocks")
    block = bundle.transformer.transformer_blocks[0]
    assert block.attn1.to_q.weight.dtype == torch.float8_e4m3fn
    assert bundle.transformer.norm_final.weight.dtype == torch.float32
    assert torch.isfinite(result.frames).all() and not torch.equal(result.latents, plain.latents)
    error = (result.latents - plain.latents).abs().max() / plain.latents.abs().max()
    assert error < 0.2


def test_memory_option_errors_name_the_fix():
    with pytest.raises(OptionError, match="weight dtype must be one of default, fp8_e4m3fn, fp8_e5m2"):
        resolve_weight_dtype("int4")
    with pytest.raises(OptionError, match="--attention sdpa"):
        resolve_attention("sage", torch.device("cpu"), torch.bfloat16)
    assert resolve_weight_dtype("default") is None


@pytest.mark.skipif(importlib.util.find_spec("sageattention") is not None, reason="sageattention is installed")
def test_cli_sage_without_package_is_a_one_line_error(tiny_dir, photos, tmp_path, capsys):  # noqa: F811
    code = cli.main(_args(tiny_dir, photos, tmp_path / "sage.mp4", "--attention", "sage"))
    err = capsys.readouterr().err
    assert code == 1 and "sageattention" in err and "--attention sdpa" in err and "Traceback" not in err
    assert not (tmp_path / "sage.mp4").exists()


def test_cli_memory_flags_and_teacache_summary(tiny_dir, photos, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "fp8.mp4"
    code = cli.main(_args(tiny_dir, photos, out, "--weight-dtype", "fp8_e5m2", "--offload", "model",
                          "--teacache", "0.2", "--steps", "4"))
    captured = capsys.readouterr().out
    assert code == 0 and out.is_file()
    assert "TeaCache (threshold 0.2):" in captured and "of 4 transformer evaluations skipped" in captured
    code = cli.main(_args(tiny_dir, photos, tmp_path / "bad.mp4", "--teacache", "3"))
    assert code == 1 and "teacache must be between 0 (off) and 1.0" in capsys.readouterr().err
