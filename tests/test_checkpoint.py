"""Loading layouts, config inference, dtype handling and key errors."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from ingredients_core.weights.checkpoint import infer_config, load_transformer
from ingredients_core.weights.checkpoint_files import CheckpointError, resolve
from ingredients_core.testing.tiny_transformer import tiny_config, tiny_state_dict
from ingredients_core.testing.weights import write_transformer_folder


@pytest.fixture(scope="module")
def state():
    return tiny_state_dict(tiny_config())


def _same_weights(model, state):
    sd = model.state_dict()
    return all(torch.equal(sd[k].float(), state[k].to(sd[k].dtype).float()) for k in state)


def test_model_folder_prefers_transformer_ema(tmp_path, state):
    cfg = tiny_config()
    write_transformer_folder(tmp_path / "transformer", {k: v * 0 for k, v in state.items()}, cfg.to_dict())
    write_transformer_folder(tmp_path / "transformer_ema", state, cfg.to_dict())
    assert resolve(tmp_path).weights[0].parent.name == "transformer_ema"
    assert _same_weights(load_transformer(tmp_path, dtype=torch.float32), state)


def test_sharded_folder_and_dtype(tmp_path, state):
    write_transformer_folder(tmp_path / "transformer", state, tiny_config().to_dict(), shards=3)
    model = load_transformer(tmp_path / "transformer", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in model.parameters())
    assert _same_weights(model, state)


def test_single_file_with_and_without_config(tmp_path, state):
    folder = write_transformer_folder(tmp_path / "t", state, tiny_config().to_dict())
    single = tmp_path / "ingredients_tiny.safetensors"
    shutil.copy(folder / "diffusion_pytorch_model.safetensors", single)
    with pytest.raises(CheckpointError, match="positional embedding"):
        load_transformer(single)  # tiny sample size cannot be inferred without config.json
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    assert _same_weights(load_transformer(single, dtype=torch.float32), state)


def test_infer_config_from_official_shapes(golden_dir):
    shapes = {k: tuple(v) for k, v in json.loads((golden_dir / "keys.json").read_text()).items()}
    # the golden model has learned positions for 9 x 64 x 96, which cannot be told from shapes alone
    shapes["patch_embed.pos_embedding"] = (1, 226 + 13 * 30 * 45, 3072)
    cfg = infer_config(shapes)
    assert (cfg.num_layers, cfg.cross_attn_interval, cfg.num_attention_heads, cfg.in_channels) == (2, 1, 48, 32)
    assert cfg.ids.token_dim == 2048 and cfg.text_embed_dim == 4096


def test_infer_config_recovers_interval(state):
    cfg = tiny_config(num_layers=4, cross_attn_interval=2, sample_height=60, sample_width=90, sample_frames=49)
    shapes = {k: tuple(v.shape) for k, v in tiny_state_dict(cfg).items()}
    inferred = infer_config(shapes)
    assert inferred.cross_attn_interval == 2 and inferred.num_layers == 4
    assert inferred.ids.heads == 16  # not visible in shapes: the official value
    assert dataclasses.replace(inferred.ids, heads=cfg.ids.heads) == cfg.ids


def test_missing_unexpected_and_wrong_shape_are_named(tmp_path, state):
    broken = dict(state)
    del broken["router.0.to_q.weight"]
    broken["lora_unet.extra.weight"] = torch.zeros(2)
    broken["proj_out.bias"] = torch.zeros(7)
    write_transformer_folder(tmp_path / "transformer", broken, tiny_config().to_dict())
    with pytest.raises(CheckpointError) as err:
        load_transformer(tmp_path)
    msg = str(err.value)
    assert "router.0.to_q.weight" in msg and "lora_unet.extra.weight" in msg
    assert "proj_out.bias: expected (64,), found (7,)" in msg


def test_bin_file_goes_through_weights_only(tmp_path, state):
    folder = tmp_path / "transformer"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    torch.save(state, folder / "diffusion_pytorch_model.bin")
    assert _same_weights(load_transformer(tmp_path, dtype=torch.float32), state)
    (folder / "diffusion_pytorch_model.bin").unlink()
    torch.save({"w": object()}, folder / "diffusion_pytorch_model.bin")  # a pickle that is not only tensors
    with pytest.raises(CheckpointError, match="weights_only"):
        load_transformer(tmp_path)


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist.*feizhengcong/Ingredients"):
        load_transformer(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no transformer weights"):
        load_transformer(tmp_path)


def test_truncated_safetensors(tmp_path, state):
    folder = write_transformer_folder(tmp_path / "transformer", state, tiny_config().to_dict())
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model.safetensors is unusable: .* download .* again"):
        load_transformer(tmp_path)


def test_interval_from_router_count_when_config_lacks_it(tmp_path):
    cfg = tiny_config(num_layers=4, cross_attn_interval=2)
    data = cfg.to_dict()
    del data["cross_attn_interval"]
    write_transformer_folder(tmp_path / "transformer", tiny_state_dict(cfg), data)
    assert load_transformer(tmp_path, dtype=torch.float32).config.cross_attn_interval == 2
    data["cross_attn_interval"] = 1
    (tmp_path / "transformer" / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="cross_attn_interval=1 gives 4 routed layers but the weights have 2"):
        load_transformer(tmp_path)


def test_wrapped_torch_state_dict(tmp_path, state):
    folder = tmp_path / "transformer"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, folder / "model.pt")
    assert _same_weights(load_transformer(tmp_path, dtype=torch.float32), state)
    torch.save([1, 2, 3], folder / "model.pt")
    with pytest.raises(CheckpointError, match="model.pt: expected a mapping of tensor names"):
        load_transformer(tmp_path)


def test_streamed_safetensors_equal_the_library_reader(tmp_path):
    from safetensors.torch import load_file, save_file

    from ingredients_core.weights.checkpoint_files import _iter_tensors

    tensors = {"a": torch.randn(3, 4).to(torch.bfloat16), "b": torch.randn(5, dtype=torch.float16),
               "c": torch.arange(6, dtype=torch.int64).view(2, 3), "d": torch.randn(2, 2, 2),
               "e": torch.zeros(0, 3), "f": torch.tensor([True, False])}
    save_file(tensors, str(tmp_path / "x.safetensors"), metadata={"format": "pt"})
    ours = dict(_iter_tensors((tmp_path / "x.safetensors",)))
    reference = load_file(str(tmp_path / "x.safetensors"))
    assert ours.keys() == reference.keys()
    for key, tensor in reference.items():
        assert ours[key].dtype == tensor.dtype and torch.equal(ours[key], tensor), key
    shapes = dict(_iter_tensors((tmp_path / "x.safetensors",), meta_only=True))
    assert shapes == {k: tuple(v.shape) for k, v in tensors.items()}
