"""LoRAs and ModelSave on the Ingredients MODEL in a real ComfyUI (issue 15 parts 1 and 5).

Runs where ``COMFYUI_PATH`` is set (see test_comfyui_real). One graph through ``/prompt``: the MODEL
saved by ComfyUI's own *ModelSave* as it is, in fp8, after *LoraLoaderModelOnly* with a kohya file
and after *Ingredients LoRA* with PEFT/diffusers and ComfyUI-native files; then the fp8 file loads
back through Load Ingredients Model's ``transformer_file`` and is saved again. The saved weights
are compared here: the LoRA ones with each other and with W + strength * alpha / rank * B @ A.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_comfyui_real import COMFYUI, real_server
from test_lora_node import ALPHA, LAYERS, RANK, STRENGTH, deltas, lora_files

pytestmark = pytest.mark.skipif(not COMFYUI, reason="COMFYUI_PATH is not set (see test_comfyui_real)")
PREFIX = "model.diffusion_model."


def loader(weight_dtype="default", transformer_file="folder's own") -> dict:
    return {"class_type": "IngredientsModelLoader",
            "inputs": dict(model_folder="Ingredients", dtype="float32", routing_mode="official",
                           weight_dtype=weight_dtype, transformer_file=transformer_file)}


def save(model: list, name: str) -> dict:
    return {"class_type": "ModelSave", "inputs": {"model": model, "filename_prefix": f"diffusion_models/{name}"}}


def lora(node: str, model: list, name: str) -> dict:
    return {"class_type": node, "inputs": {"model": model, "lora_name": f"{name}.safetensors",
                                           "strength_model": STRENGTH}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from ingredients_core.weights.checkpoint import load_transformer

    from ingredients_core.testing import tiny_models

    root = tmp_path_factory.mktemp("comfyui_lora")
    folder = tiny_models.make_tiny_model_folder(root / "models" / "ingredients" / "Ingredients")
    real_server.base_directory(root / "base")
    shapes = {k: tuple(v.shape) for k, v in load_transformer(folder, dtype=torch.float32).state_dict().items()}
    (root / "base" / "models" / "loras").mkdir(parents=True)
    for name, tensors in lora_files(shapes).items():
        save_file({k: v.clone() for k, v in tensors.items()}, 
                  str(root / "base" / "models" / "loras" / f"{name}.safetensors"))
    server = real_server.Server(root)
    server.start()
    try:
        graph = {"1": loader(), "2": save(["1", 1], "base"),
                 "3": lora("LoraLoaderModelOnly", ["1", 1], "kohya"),
                 "4": save(["3", 0], "kohya"), "5": lora("IngredientsLoraLoader", ["1", 1], "peft"),
                 "6": save(["5", 0], "peft"), "7": lora("IngredientsLoraLoader", ["1", 1], "native"),
                 "8": save(["7", 0], "native"), "9": loader("fp8_e4m3fn"), "10": save(["9", 1], "fp8")}
        first = execute(server, graph)
        output = root / "base" / "output" / "diffusion_models"
        saved = {name: output / f"{name}_00001_.safetensors" for name in ("base", "kohya", "peft", "native", "fp8")}
        models = root / "base" / "models" / "diffusion_models"
        models.mkdir(parents=True, exist_ok=True)
        shutil.copy(saved["fp8"], models / "ingredients_fp8.safetensors")
        second = execute(server, {"1": loader(transformer_file="diffusion_models/ingredients_fp8.safetensors"),
                                  "2": save(["1", 1], "reloaded")})
        saved["reloaded"] = output / "reloaded_00001_.safetensors"
        yield dict(saved=saved, shapes=shapes, entries=(first, second), log=server.log())
    finally:
        server.stop()


def execute(server, graph: dict) -> dict:
    status, answer = server.post_prompt(graph)
    assert status == 200, answer
    entry = server.wait_for(answer["prompt_id"])
    assert entry["status"]["status_str"] == "success", (entry["status"], server.log()[-4000:])
    return entry


def test_modelsave_writes_comfyuis_layout_and_fp8_reloads_bit_identical(run):
    fp8, reloaded = run["saved"]["fp8"], run["saved"]["reloaded"]
    with safe_open(str(fp8), framework="pt") as f:
        keys, metadata = set(f.keys()), f.metadata()
        stored = f.get_slice(PREFIX + "transformer_blocks.0.attn1.to_q.weight").get_dtype()
    assert {"v_pred", "ztsnr"} <= keys and all(k.startswith(PREFIX) for k in keys - {"v_pred", "ztsnr"})
    assert stored == "F8_E4M3" and metadata.get("modelspec.predict_key") == "v"
    first, second = load_file(str(fp8)), load_file(str(reloaded))
    assert first.keys() == second.keys()
    for key, tensor in first.items():
        assert tensor.dtype == second[key].dtype, key
        assert torch.equal(tensor.view(torch.uint8), second[key].view(torch.uint8)), key


def test_kohya_through_lora_loader_model_only_and_peft_native_through_the_pack_patch_alike(run):
    base, kohya, peft, native = (load_file(str(run["saved"][n])) for n in ("base", "kohya", "peft", "native"))
    by_hand = {}
    for layer, (b, a) in deltas(run["shapes"]).items():
        key = f"{PREFIX}{layer}.weight"
        by_hand[key] = base[key] + (STRENGTH * (ALPHA / RANK)) * (b.flatten(1) @ a.flatten(1)).reshape(base[key].shape)
    for key in base:
        assert torch.equal(peft[key], kohya[key]), key
        if key != f"{PREFIX}router.0.to_q.weight":  # native CogVideoX has no ID layers
            assert torch.equal(native[key], kohya[key]), key
        if key in by_hand:
            torch.testing.assert_close(kohya[key], by_hand[key], rtol=1e-6, atol=1e-7)
            assert not torch.equal(kohya[key], base[key]), key
        else:
            assert torch.equal(kohya[key], base[key]), key
    assert len(by_hand) == len(LAYERS) + 1


def test_the_pack_node_reports_on_its_ui(run):
    first, _ = run["entries"]
    text = first["outputs"]["5"]["text"][0]
    assert text.startswith(f"LoRA peft.safetensors: {len(LAYERS) + 1} of {len(LAYERS) + 1} layers applied")
