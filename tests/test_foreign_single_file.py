"""Issue 19 item 4 (g): a ``transformer_file`` in ComfyUI's own CogVideoX key layout is told from its
keys (never its name) and refused naming the file, the layout and ComfyUI's loader for it."""

from __future__ import annotations

import re

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from tests.support import harness  # noqa: E402
from ingredients_core.testing import tiny_models  # noqa: E402


#: official -> ComfyUI's native CogVideoX names (comfy/ldm/cogvideo/model.py), as its UNETLoader files have them
RENAMES = [(r"^transformer_blocks\.(\d+)\.attn1\.to_([qkv])\.", r"blocks.\1.\2."),
           (r"^transformer_blocks\.(\d+)\.attn1\.norm_([qk])\.", r"blocks.\1.norm_\2."),
           (r"^transformer_blocks\.(\d+)\.attn1\.to_out\.0\.", r"blocks.\1.attn_out."),
           (r"^transformer_blocks\.(\d+)\.ff\.net\.0\.proj\.", r"blocks.\1.ff_proj."),
           (r"^transformer_blocks\.(\d+)\.ff\.net\.2\.", r"blocks.\1.ff_out."),
           (r"^transformer_blocks\.(\d+)\.", r"blocks.\1.")]


def comfy_name(key: str) -> str:
    for pattern, repl in RENAMES:
        new = re.sub(pattern, repl, key)
        if new != key:
            return new
    return key


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    root, source = tiny_models.beside_shared_models(tmp_path_factory, "foreign_file")
    with safe_open(str(source), "pt") as f:
        state = {"model.diffusion_model." + comfy_name(k): f.get_tensor(k) for k in f.keys()
                 if not k.startswith(("local_facial_extractor", "perceiver_cross_attention", "router"))}
    (root / "diffusion_models").mkdir()
    save_file(state, str(root / "diffusion_models" / "ingredients_v1.safetensors"))  # the name says nothing
    with harness.pack_nodes(root) as nodes:
        yield nodes, root


def test_g_comfyuis_cogvideox_layout_is_named_with_the_file_and_its_loader(nodes):
    nodes, root = nodes
    path = root / "diffusion_models" / "ingredients_v1.safetensors"
    with pytest.raises(ValueError) as error:
        harness.model_outputs(nodes, transformer_file="diffusion_models/ingredients_v1.safetensors")
    message = str(error.value)
    assert message.startswith(f"{path}: ComfyUI's CogVideoX layout (model.diffusion_model.blocks.0.")
    assert "load it with ComfyUI's own loader (UNETLoader)" in message
    assert "missing keys" not in message and "unexpected keys" not in message
