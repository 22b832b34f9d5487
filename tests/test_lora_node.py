"""Ingredients LoRA on the stand-in ComfyUI (issue 15, test d): kohya, PEFT/diffusers and
ComfyUI-native files made from the same low-rank deltas patch the MODEL identically, to
W + strength * alpha / rank * B @ A; foreign and misshapen layers are counted and named."""

from __future__ import annotations


import pytest
import torch
from safetensors.torch import save_file

from ingredients_core.weights.lora_keys import native_name

from tests.support import harness  # noqa: E402
from ingredients_core.testing import tiny_models  # noqa: E402


RANK, ALPHA, STRENGTH = 4, 8.0, 0.75
#: layers with a native name, layers named alike in every format (a conv among them), an ID layer
LAYERS = ("transformer_blocks.0.attn1.to_q", "transformer_blocks.0.attn1.to_k", "transformer_blocks.1.attn1.to_v",
          "transformer_blocks.1.attn1.to_out.0", "transformer_blocks.0.ff.net.0.proj", "transformer_blocks.1.ff.net.2",
          "transformer_blocks.0.norm1.linear", "time_embedding.linear_1", "norm_out.linear", "proj_out",
          "patch_embed.proj")
ID_LAYER = "router.0.to_q"


def deltas(shapes: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """layer -> (B (out, rank[, 1, 1]), A (rank, in...)), random, the same for every format."""
    g = torch.Generator().manual_seed(7)
    out = {}
    for layer in (*LAYERS, ID_LAYER):
        shape = shapes[layer + ".weight"]
        ones = (1,) * (len(shape) - 2)
        out[layer] = (torch.randn(shape[0], RANK, *ones, generator=g) * 0.1,
                      torch.randn(RANK, *shape[1:], generator=g) * 0.1)
    return out


def lora_files(shapes: dict) -> dict[str, dict[str, torch.Tensor]]:
    d = deltas(shapes)
    alpha = torch.tensor(ALPHA)
    kohya, peft, peft_no_alpha, native = {}, {}, {}, {}
    for layer, (b, a) in d.items():
        k = "lora_unet_" + layer.replace(".", "_")
        kohya.update({f"{k}.lora_up.weight": b, f"{k}.lora_down.weight": a, f"{k}.alpha": alpha})
        p = "transformer." + layer
        peft.update({f"{p}.lora_B.weight": b, f"{p}.lora_A.weight": a, f"{p}.alpha": alpha})
        # diffusers saves no alpha (scale 1): the same delta with alpha / rank (2, exact) folded into B
        peft_no_alpha.update({f"{layer}.lora_B.weight": b * (ALPHA / RANK), f"{layer}.lora_A.weight": a})
        if layer != ID_LAYER:  # native CogVideoX has no ID modules
            n = "diffusion_model." + (native_name(layer) or layer)
            native.update({f"{n}.lora_up.weight": b, f"{n}.lora_down.weight": a, f"{n}.alpha": alpha})
    foreign = dict(kohya)
    foreign.update({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(8, RANK),
                    "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(RANK, 8),
                    "lora_unet_blocks_0_q.lora_up.weight": torch.zeros(1920, RANK),  # a CogVideoX-2B layer
                    "lora_unet_blocks_0_q.lora_down.weight": torch.zeros(RANK, 1920)})
    unrelated = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, RANK),
                 "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(RANK, 8)}
    return dict(kohya=kohya, peft=peft, peft_no_alpha=peft_no_alpha, native=native, foreign=foreign,
                unrelated=unrelated)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from ingredients_core.weights.checkpoint import load_transformer

    shared = tiny_models.shared_models_dir(tmp_path_factory)
    root = tmp_path_factory.mktemp("lora_models")
    (root / "ingredients").symlink_to(shared / "ingredients", target_is_directory=True)
    shapes = {k: tuple(v.shape) for k, v in
              load_transformer(shared / "ingredients" / "Ingredients", dtype=torch.float32).state_dict().items()}
    files = lora_files(shapes)
    (root / "loras" / "cogvideox").mkdir(parents=True)
    for name, tensors in files.items():
        save_file({k: v.clone() for k, v in tensors.items()}, str(root / "loras" / "cogvideox" / f"{name}.safetensors"))
    with harness.pack_nodes(root) as nodes:
        yield dict(nodes=nodes, files=files)


@pytest.fixture(scope="module")
def model(setup):
    """Load Ingredients Model's MODEL (keys ``diffusion_model.<official key>``)."""
    return setup["nodes"]["IngredientsModelLoader"].execute(model_folder="Ingredients", dtype="float32",
                                                            routing_mode="official").args[1]


def apply(setup, model, name: str, strength: float = STRENGTH):
    result = setup["nodes"]["IngredientsLoraLoader"].execute(model=model, lora_name=f"cogvideox/{name}.safetensors",
                                                             strength_model=strength)
    return result.args[0], result.ui.as_dict()["text"][0]


def patched_state(patcher) -> dict[str, torch.Tensor]:
    """The weights as ComfyUI computes with them: the patcher loaded (its patches applied), copied."""
    patcher.load(torch.device("cpu"), full_load=True)
    state = {k: v.clone() for k, v in patcher.model.state_dict().items()}
    patcher.detach()
    return state


def forward(patcher) -> torch.Tensor:
    """The MODEL's denoised x0 (``apply_model``, as a sampler calls it) with its patches loaded."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([patcher])
    g = torch.Generator().manual_seed(3)
    x, image = torch.randn(1, 16, 3, 8, 12, generator=g), torch.randn(1, 16, 3, 8, 12, generator=g)
    text = torch.randn(1, 226, 32, generator=g)
    sigma = patcher.model.model_sampling.sigma(torch.tensor([400.0]))
    with torch.no_grad():
        return patcher.model.apply_model(x, sigma, c_concat=image, c_crossattn=text,
                                         transformer_options=patcher.model_options["transformer_options"])


def test_the_node_lists_loras_and_has_tooltips(setup):
    inputs = setup["nodes"]["IngredientsLoraLoader"].define_schema().inputs
    assert [i.id for i in inputs] == ["model", "lora_name", "strength_model"] and all(i.tooltip for i in inputs)
    assert "cogvideox/peft.safetensors" in inputs[1].options


def test_three_formats_from_the_same_deltas_patch_identically(setup, model):
    base = patched_state(model)
    kohya, text = apply(setup, model, "kohya")
    assert text.startswith(f"LoRA cogvideox/kohya.safetensors: {len(LAYERS) + 1} of {len(LAYERS) + 1} layers applied")
    states = {name: patched_state(apply(setup, model, name)[0]) for name in ("peft", "peft_no_alpha", "native")}
    states["kohya"] = patched_state(kohya)
    id_key = f"diffusion_model.{ID_LAYER}.weight"
    for name, state in states.items():
        for key in base:
            reference = base if name == "native" and key == id_key else states["kohya"]  # native has no ID layers
            assert torch.equal(state[key], reference[key]), (name, key)
    # by hand: W + strength * alpha / rank * B @ A (ComfyUI's order: float32, then the weight's dtype)
    for layer, (b, a) in deltas({k[len("diffusion_model."):]: v.shape for k, v in base.items()}).items():
        key = f"diffusion_model.{layer}.weight"
        expected = base[key] + (STRENGTH * (ALPHA / RANK)) * (b.flatten(1) @ a.flatten(1)).reshape(base[key].shape)
        assert torch.equal(states["kohya"][key], expected), layer
        assert not torch.equal(states["kohya"][key], base[key])
    untouched = [k for k in base if not any(k == f"diffusion_model.{layer}.weight" for layer in (*LAYERS, ID_LAYER))]
    assert all(torch.equal(states["kohya"][k], base[k]) for k in untouched)
    assert torch.equal(patched_state(model)["diffusion_model.proj_out.weight"], base["diffusion_model.proj_out.weight"])


def test_patched_forwards_are_identical_and_the_base_comes_back(setup, model):
    base = forward(model)
    outputs = {name: forward(apply(setup, model, name)[0]) for name in ("kohya", "peft", "peft_no_alpha")}
    assert not torch.equal(outputs["kohya"], base)
    assert torch.equal(outputs["peft"], outputs["kohya"]) and torch.equal(outputs["peft_no_alpha"], outputs["kohya"])
    assert torch.equal(forward(model), base)  # the clone's patches never reach the MODEL it came from


def test_foreign_and_misshapen_layers_are_counted_and_named(setup, model, caplog):
    patched, text = apply(setup, model, "foreign")
    total = len(LAYERS) + 1 + 2
    assert text.startswith(f"LoRA cogvideox/foreign.safetensors: {len(LAYERS) + 1} of {total} layers applied; "
                           "1 not matched (lora_te_text_model_encoder_layers_0_mlp_fc1); 1 of another shape, left out "
                           "(lora_unet_blocks_0_q: (1920, 1920) vs (96, 96))")
    assert "lora_te_text_model_encoder_layers_0_mlp_fc1" in caplog.text
    assert patched_state(patched).keys() == patched_state(model).keys()


def test_a_lora_for_another_model_is_an_error_naming_the_formats(setup, model):
    with pytest.raises(ValueError, match=r"lora_name: none of the 1 layers of cogvideox/unrelated.safetensors fit.*"
                                         r"Understood: kohya .*PEFT/diffusers .*ComfyUI-native"):
        apply(setup, model, "unrelated")


def test_strength_zero_returns_the_model_itself(setup, model):
    same, text = apply(setup, model, "kohya", strength=0.0)
    assert same is model and "not applied" in text


def test_a_model_of_another_family_is_refused_naming_the_fix(setup, model):
    import comfy.model_patcher

    other = comfy.model_patcher.ModelPatcher(torch.nn.Linear(2, 2), torch.device("cpu"), torch.device("cpu"))
    with pytest.raises(ValueError, match="not the Ingredients model: connect the MODEL output of Load Ingredients"):
        setup["nodes"]["IngredientsLoraLoader"].execute(model=other, lora_name="cogvideox/kohya.safetensors",
                                                        strength_model=1.0)
