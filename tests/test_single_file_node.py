"""Load Ingredients Model's ``transformer_file``: what ModelSave writes from the MODEL (fp8 or bf16),
in ComfyUI's diffusion_models or checkpoints folder, loads back with the weights it was saved with
(the real ModelSave round trip is checked in real ComfyUI 0.33.0, see docs/native-model.md)."""

from __future__ import annotations

import sys

import pytest
import torch
from test_single_file import assert_bit_identical

from tests.support import harness  # noqa: E402


FP8_FILES = {"fp8_e4m3fn": "diffusion_models/ingredients_fp8_e4m3fn.safetensors",
             "fp8_e5m2": "diffusion_models/ingredients_fp8_e5m2.safetensors"}
BF16_FILE = "checkpoints/sub/ingredients_bf16.safetensors"



@pytest.fixture(scope="module")
def loader(models_dir):
    with harness.pack_nodes(models_dir) as nodes:
        yield nodes["IngredientsModelLoader"]


def modelsave_state(model) -> dict:
    """What ComfyUI's ModelSave writes for a MODEL (``comfy.sd.save_checkpoint``): the diffusion
    model's state dict under ``model.diffusion_model.``, ``v_pred`` for a v-prediction model and
    ``ztsnr`` for zero-terminal-SNR sampling (empty tensors)."""
    state = {"model." + k: v for k, v in model.model.state_dict().items() if k.startswith("diffusion_model.")}
    if model.model.model_type.name == "V_PREDICTION":
        state["v_pred"] = torch.tensor([])
    if getattr(model.model.model_sampling, "zsnr", False):
        state["ztsnr"] = torch.tensor([])
    return state


@pytest.fixture(scope="module")
def saved(models_dir, loader):
    """ModelSave files of the fp8 MODEL (diffusion_models/) and of the bf16 one, as a repack with the
    ``diffusion_model.`` prefix (checkpoints/); on the CPU both compute in float32, so their norms
    and embeddings are float32. Returns the transformers' state dicts."""
    from safetensors.torch import save_file

    states = {}
    files = [(name, weight_dtype, "float32") for weight_dtype, name in FP8_FILES.items()]
    for name, weight_dtype, dtype in (*files, (BF16_FILE, "default", "bfloat16")):
        model = load(loader, dtype=dtype, weight_dtype=weight_dtype, output=1)
        state = modelsave_state(model)
        assert "v_pred" in state
        if name == BF16_FILE:
            state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
        (models_dir / name).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(models_dir / name),
                  metadata={"prompt": "{}", "modelspec.predict_key": "v"})
        states[weight_dtype] = model.model.diffusion_model.state_dict()
    return states


def load(loader, output: int = 0, **inputs):
    """Load Ingredients Model's output: 0 the INGREDIENTS_MODEL, 1 the MODEL."""
    return loader.execute(model_folder="Ingredients", routing_mode="official", **inputs).args[output]


def forward(payload) -> torch.Tensor:
    g = torch.Generator().manual_seed(4)
    x, text = torch.randn(1, 3, 32, 8, 12, generator=g), torch.randn(1, 226, 32, generator=g)
    with torch.no_grad():
        return payload.transformer(x, text, torch.tensor([500]))


def test_transformer_file_is_appended_and_lists_both_folders(loader, saved):
    inputs = loader.define_schema().inputs
    assert [i.id for i in inputs] == ["model_folder", "dtype", "routing_mode", "weight_dtype", "transformer_file"]
    file_input = inputs[-1]
    assert file_input.optional and file_input.default == "folder's own" and file_input.tooltip
    assert file_input.options == ["folder's own", *FP8_FILES.values(), BF16_FILE]  # diffusion_models first


@pytest.mark.parametrize("weight_dtype", list(FP8_FILES))
def test_an_fp8_modelsave_file_stays_fp8_and_computes_like_the_model_it_came_from(loader, saved, weight_dtype):
    ops = sys.modules["comfy.ops"]
    original = load(loader, dtype="float32", weight_dtype=weight_dtype)
    from_file = load(loader, dtype="float32", transformer_file=FP8_FILES[weight_dtype])  # default: kept as stored
    assert_bit_identical(from_file.transformer.state_dict(), saved[weight_dtype])
    assert isinstance(from_file.transformer.transformer_blocks[0].attn1.to_q, ops.manual_cast.Linear)
    assert from_file.transformer.config == original.transformer.config  # the folder's transformer/config.json
    assert torch.equal(forward(from_file), forward(original))


def test_a_bf16_file_from_checkpoints_with_the_diffusion_model_prefix(loader, saved):
    from_file = load(loader, dtype="bfloat16", transformer_file=BF16_FILE)
    from_folder = load(loader, dtype="bfloat16")  # bf16 storage; on the CPU computed in float32
    assert_bit_identical(from_file.transformer.state_dict(), from_folder.transformer.state_dict())
    assert_bit_identical(from_file.transformer.state_dict(), saved["default"])
    assert from_file.transformer.transformer_blocks[0].ff.net[2].weight.dtype == torch.bfloat16
    assert torch.equal(forward(from_file), forward(from_folder))


def test_a_file_that_is_gone_names_the_input(loader):
    with pytest.raises(FileNotFoundError, match="transformer_file: no file 'diffusion_models/gone.safetensors'"):
        load(loader, dtype="float32", transformer_file="diffusion_models/gone.safetensors")
