"""Single-file checkpoints as ComfyUI's ModelSave writes them and as fp8 repacks come: key
prefixes, marker keys, fp8 storage kept, config inferred, clear errors."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from ingredients_core.weights.checkpoint import load_transformer
from ingredients_core.weights.checkpoint_files import CheckpointError
from ingredients_core.weights.checkpoint_keys import stored_dtype
from ingredients_core.testing.tiny_transformer import tiny_config, tiny_state_dict
from ingredients_core.testing.weights import write_transformer_folder

FP8 = [torch.float8_e4m3fn, torch.float8_e5m2]
MODELSAVE_METADATA = {"prompt": json.dumps({"1": {"class_type": "ModelSave"}}), "modelspec.predict_key": "v"}


def official_sized_config():
    """A tiny config whose every field can be told from its shapes (official sample size, 16 ID heads)."""
    return tiny_config(sample_height=60, sample_width=90, sample_frames=49, ids={"heads": 16})


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    cfg = official_sized_config()
    return write_transformer_folder(tmp_path_factory.mktemp("t") / "transformer", tiny_state_dict(cfg), cfg.to_dict())


def write_modelsave(path, state: dict, prefix: str = "model.diffusion_model.", markers: bool = True):
    """What ``comfy.sd.save_checkpoint`` writes for a v-prediction, zero-terminal-SNR MODEL whose
    ``diffusion_model`` has ``state``: prefixed keys, empty ``v_pred``/``ztsnr``, JSON metadata."""
    tensors = {prefix + k: v.contiguous() for k, v in state.items()}
    if markers:
        tensors.update(v_pred=torch.tensor([]), ztsnr=torch.tensor([]))
    save_file(tensors, str(path), metadata=MODELSAVE_METADATA)
    return path


def assert_bit_identical(loaded: dict, reference: dict) -> None:
    assert loaded.keys() == reference.keys()
    for key, tensor in reference.items():
        assert loaded[key].dtype == tensor.dtype, key
        assert torch.equal(loaded[key].view(torch.uint8), tensor.view(torch.uint8)), key


@pytest.mark.parametrize("fp8", FP8, ids=["e4m3fn", "e5m2"])
def test_modelsave_fp8_file_loads_back_bit_identical(tmp_path, folder, fp8):
    saved = load_transformer(folder, dtype=torch.float32, weight_dtype=fp8)  # the MODEL's weights, fp8 storage
    file = write_modelsave(tmp_path / "ingredients_fp8.safetensors", saved.state_dict())
    assert stored_dtype(file) == fp8
    loaded = load_transformer(file, dtype=torch.float32, keep_fp8=True)
    assert loaded.config == saved.config == official_sized_config()  # inferred: no config.json beside it
    assert_bit_identical(loaded.state_dict(), saved.state_dict())
    # the same file without keep_fp8 computes in float32 from the same values
    upcast = load_transformer(file, dtype=torch.float32)
    assert {p.dtype for p in upcast.parameters()} == {torch.float32}
    for key, tensor in saved.state_dict().items():
        assert torch.equal(upcast.state_dict()[key], tensor.float()), key


def test_bf16_repack_with_diffusion_model_prefix(tmp_path, folder):
    saved = load_transformer(folder, dtype=torch.bfloat16)
    file = write_modelsave(tmp_path / "repack.safetensors", saved.state_dict(), prefix="diffusion_model.",
                           markers=False)
    assert stored_dtype(file) == torch.bfloat16
    assert_bit_identical(load_transformer(file, dtype=torch.bfloat16, keep_fp8=True).state_dict(),
                         saved.state_dict())


def test_repack_with_fp8_norms_upcasts_them(tmp_path, folder):
    """A repack that stores everything in fp8, norms and embeddings too: the large Linear layers stay
    fp8, the rest comes in the compute dtype with the fp8 values."""
    state = {k: v.to(torch.float8_e4m3fn) for k, v in tiny_state_dict(official_sized_config()).items()}
    file = write_modelsave(tmp_path / "all_fp8.safetensors", state, prefix="", markers=False)
    loaded = load_transformer(file, dtype=torch.bfloat16, keep_fp8=True).state_dict()
    assert loaded["transformer_blocks.0.attn1.to_q.weight"].dtype == torch.float8_e4m3fn
    for key in ("transformer_blocks.0.norm1.norm.weight", "patch_embed.pos_embedding", "proj_out.weight",
                "transformer_blocks.0.attn1.norm_q.weight", "local_facial_extractor.latents"):
        assert loaded[key].dtype == torch.bfloat16, key
        assert torch.equal(loaded[key], state[key].to(torch.bfloat16)), key


def test_other_keys_are_named_and_markers_ignored(tmp_path, folder):
    state = dict(load_transformer(folder, dtype=torch.float32).state_dict())
    tensors = {"model.diffusion_model." + k: v for k, v in state.items()}
    tensors.update({"v_pred": torch.tensor([]), "first_stage_model.decoder.conv_in.weight": torch.zeros(2)})
    save_file(tensors, str(tmp_path / "checkpoint.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_transformer(tmp_path / "checkpoint.safetensors")
    assert "1 unexpected keys: first_stage_model.decoder.conv_in.weight" in str(err.value)
    assert "v_pred" not in str(err.value)
    loaded = load_transformer(tmp_path / "checkpoint.safetensors", dtype=torch.float32, strict=False)
    assert_bit_identical(loaded.state_dict(), state)


def test_scaled_fp8_is_refused_by_name(tmp_path, folder):
    weights = load_transformer(folder, dtype=torch.float32).state_dict()
    state = {k: v.to(torch.float8_e4m3fn) for k, v in weights.items()}
    state["transformer_blocks.0.attn1.to_q.scale_weight"] = torch.ones(1)
    write_modelsave(tmp_path / "scaled.safetensors", state)
    with pytest.raises(CheckpointError, match=r"per-tensor scales \(model\.diffusion_model\.transformer_blocks\.0"):
        load_transformer(tmp_path / "scaled.safetensors")


def test_unknown_dtype_still_gets_the_loaders_message(tmp_path):
    header = json.dumps({"w": {"dtype": "F4_E2M1", "shape": [2], "data_offsets": [0, 1]}}).encode()
    file = tmp_path / "odd.safetensors"
    file.write_bytes(struct.pack("<Q", len(header)) + header + b"\0")
    assert stored_dtype(file) is None
    with pytest.raises(CheckpointError, match=r"odd\.safetensors.*F4_E2M1"):
        load_transformer(file)
