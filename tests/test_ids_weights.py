"""Issue 19 item 4 (c, f): the ID tokens know which weights projected them. Apply IDs and the pack's
sampler compare the loader's weights identity (folder, transformer_file, storage dtype), not the
folder; q-former LoRA layers act through Project IDs' patched_model input, Ingredients LoRA counts
them apart, and Apply IDs refuses a MODEL whose q-former LoRA the tokens were projected without."""

from __future__ import annotations


import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tests.support import harness  # noqa: E402
from ingredients_core.testing import tiny_models  # noqa: E402


QFORMER_LAYER = "local_facial_extractor.layers.0.0.to_q"
BLOCK_LAYER = "transformer_blocks.0.attn1.to_q"


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    root, source = tiny_models.beside_shared_models(tmp_path_factory, "ids_weights")
    with safe_open(str(source), "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    other = dict(state, **{"proj_out.weight": state["proj_out.weight"] + 0.01})  # other weights, same folder
    (root / "diffusion_models").mkdir()
    save_file(other, str(root / "diffusion_models" / "other.safetensors"))
    g = torch.Generator().manual_seed(2)
    lora = {}
    for layer in (QFORMER_LAYER, BLOCK_LAYER):
        out, inp = state[layer + ".weight"].shape
        lora[f"transformer.{layer}.lora_B.weight"] = torch.randn(out, 2, generator=g)
        lora[f"transformer.{layer}.lora_A.weight"] = torch.randn(2, inp, generator=g)
    (root / "loras").mkdir()
    save_file(lora, str(root / "loras" / "qformer.safetensors"))
    with harness.pack_nodes(root) as nodes:
        yield nodes


def run(node, **inputs):
    return node.execute(**inputs)


def _faces(config):
    ids, g = config.ids, torch.Generator().manual_seed(5)
    faces = [(torch.randn(1, ids.id_cond_dim, generator=g),
              [torch.randn(1, 17, ids.vit_dim, generator=g) for _ in range(ids.num_vit_scales)]) for _ in range(2)]
    return harness.pack_module("nodes.payloads").IngredientsIDs(tuple(faces))


def _project(nodes, payload, **extra):
    return run(nodes["IngredientsProjectIDs"], model=payload, ids=_faces(payload.transformer.config), **extra).args[0]


def _route(nodes, tokens):
    return run(nodes["IngredientsRouteIDs"], id_tokens=tokens, routing_mode="from model", strength=1.0).args[0]


def test_f_apply_ids_and_the_sampler_compare_the_weights_not_the_folder(nodes):
    own = harness.model_outputs(nodes)
    other = harness.model_outputs(nodes, transformer_file="diffusion_models/other.safetensors")
    assert own["payload"].folder == other["payload"].folder
    routed = _route(nodes, _project(nodes, own["payload"]))
    run(nodes["IngredientsApplyIDs"], model=own["model"], routed_ids=routed)  # same weights: accepted
    again = harness.model_outputs(nodes)  # a second load of the same weights is the same identity
    run(nodes["IngredientsApplyIDs"], model=again["model"], routed_ids=routed)
    want = (r"routed_ids: the ID tokens were projected with Ingredients \(its own transformer, float32 weights\), "
            r"{} holds Ingredients \(transformer_file diffusion_models/other.safetensors, float32 weights\).*same Load Ingredients "
            r"Model \(same model_folder, transformer_file, dtype and weight_dtype\)")
    with pytest.raises(ValueError, match=want.format("this MODEL")):
        run(nodes["IngredientsApplyIDs"], model=other["model"], routed_ids=routed)
    # the Ingredients Sampler puts the IDs on its MODEL with Apply IDs' own function: one check for both
    assert harness.pack_module("nodes.sampling").put_ids is harness.pack_module("nodes.apply_ids").put_ids


def test_c_qformer_lora_layers_act_through_project_ids(nodes):
    own = harness.model_outputs(nodes)
    result = run(nodes["IngredientsLoraLoader"], model=own["model"], lora_name="qformer.safetensors",
                 strength_model=1.0)
    patched, text = result.args[0], result.ui.as_dict()["text"][0]
    assert text.startswith("LoRA qformer.safetensors: 1 of 2 layers applied to the MODEL, 1 q-former layers "
                           "(local_facial_extractor) for Project IDs: connect this MODEL to its patched_model input")
    plain = _project(nodes, own["payload"])
    with_lora = _project(nodes, own["payload"], patched_model=patched)
    assert with_lora.qformer_patches and not plain.qformer_patches
    assert not torch.allclose(with_lora.tokens, plain.tokens)  # the q-former layer changed the ID tokens
    assert torch.equal(_project(nodes, own["payload"]).tokens, plain.tokens)  # the original weights came back
    # without q-former patches on it, patched_model projects as the loader's model does
    assert torch.equal(_project(nodes, own["payload"], patched_model=own["model"]).tokens, plain.tokens)
    with pytest.raises(ValueError, match=r"routed_ids: this MODEL carries LoRA patches on 1 q-former weights .*"
                                         "connect this MODEL to the patched_model input of Ingredients Project IDs"):
        run(nodes["IngredientsApplyIDs"], model=patched, routed_ids=_route(nodes, plain))
    run(nodes["IngredientsApplyIDs"], model=patched, routed_ids=_route(nodes, with_lora))
    run(nodes["IngredientsApplyIDs"], model=own["model"], routed_ids=_route(nodes, with_lora))


def test_c_project_ids_refuses_the_model_of_another_loader(nodes):
    own, other = harness.model_outputs(nodes), harness.model_outputs(nodes)
    with pytest.raises(ValueError, match="patched_model: this MODEL holds another transformer than model"):
        _project(nodes, own["payload"], patched_model=other["model"])
