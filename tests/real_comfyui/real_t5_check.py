"""With ComfyUI's real T5 (``comfy.text_encoders.t5``) and ``comfy.ops``, load a tiny model folder's
``text_encoder/`` through the pack's own ``host.native_t5`` and print, as JSON, how far its float32
embeddings are from transformers' ``T5EncoderModel`` (the official encoder) on the same tokens.

``python real_t5_check.py COMFYUI_PATH PACK_DIR MODEL_DIR`` (ComfyUI's interpreter).
"""

import importlib
import json
import sys

from real_tokenizer_check import load_pack


def main(comfyui: str, pack_dir: str, model_dir: str) -> dict:
    sys.path[0] = comfyui  # not this folder: its comfy stand-ins would shadow the real ones
    from comfy.cli_args import args

    args.cpu = True
    import torch

    text_node = load_pack(pack_dir)
    host = importlib.import_module(text_node.__name__.replace(".text", ".host"))
    core_text = importlib.import_module(text_node.__name__.replace(".nodes.text", ".ingredients_core.encoders.text"))
    tokenizer = core_text.load_tokenizer(model_dir)
    ids = core_text.tokenize_prompts(tokenizer, ["Two women at a table.", ""])
    result = {}
    for name, dtype in (("float32", torch.float32), ("float16", torch.float16), ("float8_e4m3fn", torch.float8_e4m3fn)):
        model = host.native_t5(core_text.text_encoder_config(model_dir), core_text.text_encoder_tensors(model_dir),
                               dtype)
        with torch.no_grad():
            ours, _ = model(ids, None, dtype=host.T5_COMPUTE_DTYPE)
        result[name] = ours
    official = core_text.encode_prompts(tokenizer, core_text.load_text_encoder(model_dir, torch.float32, "cpu"),
                                        ["Two women at a table.", ""], "cpu", torch.float32)
    scale = float(official.abs().max())
    return {name: float((ours.float() - official).abs().max()) / scale for name, ours in result.items()}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
