"""Print, as JSON, the signatures of the real ComfyUI V3 classes the stand-ins imitate.

Run with ComfyUI's interpreter: ``python real_signatures.py COMFYUI_PATH`` (used by
``test_comfyui_real``, which compares them with ``comfy_api/latest`` here).
"""

import inspect
import json
import sys


def signatures(io, ui) -> dict:
    out = {name: list(inspect.signature(getattr(io, name).__init__).parameters)
           for name in ("Input", "WidgetInput", "Output", "NodeOutput")}
    for name in ("Boolean", "Int", "Float", "String", "Combo"):
        out[f"{name}.Input"] = list(inspect.signature(getattr(io, name).Input.__init__).parameters)
    out["PreviewImage"] = list(inspect.signature(ui.PreviewImage.__init__).parameters)
    out["Schema"] = list(io.Schema.__dataclass_fields__)
    return out


if __name__ == "__main__":
    sys.path[0] = sys.argv[1]  # not this folder: its comfy stand-ins would shadow the real ones
    from comfy.cli_args import args

    args.cpu = True  # comfy.model_management on CUDA-less torch needs this before import
    from comfy_api.latest import io, ui

    print(json.dumps(signatures(io, ui)))
