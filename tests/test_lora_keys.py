"""The pure LoRA key map: the three formats name the same weights; layers are grouped and matched."""

from __future__ import annotations

import torch

from ingredients_core.weights.lora_keys import lora_key_map, lora_layers, match, native_name
from ingredients_core.model.transformer import IngredientsTransformer
from ingredients_core.testing.tiny_transformer import tiny_config


def model_shapes() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = IngredientsTransformer(tiny_config())
    return {f"diffusion_model.{k}": tuple(v.shape) for k, v in model.state_dict().items()}


def test_native_names_of_comfyui_cogvideox():
    expected = {
        "transformer_blocks.3.attn1.to_q": "blocks.3.q", "transformer_blocks.3.attn1.to_k": "blocks.3.k",
        "transformer_blocks.3.attn1.to_v": "blocks.3.v", "transformer_blocks.3.attn1.norm_q": "blocks.3.norm_q",
        "transformer_blocks.3.attn1.norm_k": "blocks.3.norm_k",
        "transformer_blocks.3.attn1.to_out.0": "blocks.3.attn_out",
        "transformer_blocks.3.ff.net.0.proj": "blocks.3.ff_proj", "transformer_blocks.3.ff.net.2": "blocks.3.ff_out",
        "transformer_blocks.3.norm1.linear": "blocks.3.norm1.linear",
        "transformer_blocks.3.norm2.norm": "blocks.3.norm2.norm",
        "time_embedding.linear_1": "time_embedding_linear_1", "time_embedding.linear_2": "time_embedding_linear_2"}
    assert {k: native_name(k) for k in expected} == expected
    for same in ("patch_embed.proj", "patch_embed.text_proj", "norm_final", "norm_out.linear", "proj_out",
                 "router.0.to_q"):
        assert native_name(same) is None


def test_every_format_maps_to_the_same_weight():
    key_map = lora_key_map(model_shapes())
    target = "diffusion_model.transformer_blocks.1.attn1.to_out.0.weight"
    for name in ("lora_unet_transformer_blocks_1_attn1_to_out_0", "transformer.transformer_blocks.1.attn1.to_out.0",
                 "transformer_blocks.1.attn1.to_out.0", "base_model.model.transformer_blocks.1.attn1.to_out.0",
                 "diffusion_model.blocks.1.attn_out", "blocks.1.attn_out", "lora_unet_blocks_1_attn_out"):
        assert key_map[name] == target, name
    assert key_map["transformer.router.0.to_q"] == "diffusion_model.router.0.to_q.weight"
    assert key_map["lora_unet_time_embedding_linear_1"] == "diffusion_model.time_embedding.linear_1.weight"
    assert all(v.endswith(".weight") and v in model_shapes() for v in key_map.values())
    assert not any(k.endswith("pos_embedding") for k in key_map)  # buffers and biases are no LoRA layers


def test_layers_are_grouped_by_suffix():
    keys = ["transformer.transformer_blocks.0.attn1.to_q.lora_A.weight",
            "transformer.transformer_blocks.0.attn1.to_q.lora_B.weight",
            "lora_unet_proj_out.lora_up.weight", "lora_unet_proj_out.lora_down.weight", "lora_unet_proj_out.alpha",
            "blocks.0.q.diff_b", "something.odd"]
    assert lora_layers(keys) == {
        "transformer.transformer_blocks.0.attn1.to_q": keys[:2], "lora_unet_proj_out": keys[2:5],
        "blocks.0.q": ["blocks.0.q.diff_b"], "something": ["something.odd"]}


def test_match_counts_names_and_refuses_other_shapes():
    shapes = model_shapes()
    lora = {"lora_unet_proj_out.lora_up.weight": (64, 4), "lora_unet_proj_out.lora_down.weight": (4, 96),
            "blocks.0.q.lora_B.weight": (1920, 4), "blocks.0.q.lora_A.weight": (4, 1920),  # a 2B LoRA
            "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": (8, 4),
            "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 8),
            "diffusion_model.patch_embed.proj.lora_up.weight": (96, 4, 1, 1),
            "diffusion_model.patch_embed.proj.lora_down.weight": (4, 32, 2, 2)}
    fit = match(lora, shapes, lora_key_map(shapes))
    assert fit.key_map == {"lora_unet_proj_out": "diffusion_model.proj_out.weight",
                           "diffusion_model.patch_embed.proj": "diffusion_model.patch_embed.proj.weight"}
    assert fit.unmatched == ("lora_te_text_model_encoder_layers_0_mlp_fc1",)
    assert fit.wrong_shape == ("blocks.0.q: (1920, 1920) vs (96, 96)",)
    assert fit.summary("x.safetensors") == (
        "LoRA x.safetensors: 2 of 4 layers applied; 1 not matched (lora_te_text_model_encoder_layers_0_mlp_fc1); "
        "1 of another shape, left out (blocks.0.q: (1920, 1920) vs (96, 96))")
