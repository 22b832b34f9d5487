"""Build the example workflows in ComfyUI's real frontend and write them to ``workflows/``.

Run by hand against a running ComfyUI with the pack installed (any model folder named
``Ingredients`` makes the loaders' lists non-empty; the tiny one from ``tiny_models`` will do)::

    python tests/comfy_stubs/build_workflows.py http://127.0.0.1:8188

The frontend itself creates the nodes, sets the widgets, connects them and serialises the graph,
so the files are exactly what the current frontend saves. The video is saved with SaveAnimatedWEBP,
whose inputs are the same in ComfyUI 0.3.64 and 0.33 (CreateVideo and SaveVideo changed between
them); CreateVideo + SaveVideo take the frames just as well (``nodes``, ``links``, ``widgets_values``
with the hidden control value after the seed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import frontend

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
TWO_MEN = ("Two men in half bodies, are seated in a dimly lit room, possibly an office or meeting room, "
           "with a formal atmosphere.")
ONE_WOMAN = ("A woman with short hair stands by a window in soft morning light, turns towards the camera "
             "and smiles.")

COLUMNS = (0, 420, 900, 1300, 1700)


def _spec(people: int, prompt: str) -> dict:
    nodes = [
        dict(key="model", type="IngredientsModelLoader", pos=[COLUMNS[0], 0],
             widgets=dict(model_folder="Ingredients", dtype="auto", routing_mode="official")),
        dict(key="vae", type="IngredientsVAELoader", pos=[COLUMNS[0], 170],
             widgets=dict(model_folder="Ingredients", dtype="auto")),
        dict(key="t5", type="IngredientsT5Loader", pos=[COLUMNS[0], 310],
             widgets=dict(model_folder="Ingredients", dtype="auto")),
        dict(key="prompt", type="IngredientsEncodePrompt", pos=[COLUMNS[1], 0],
             widgets=dict(prompt=prompt, negative_prompt="")),
        dict(key="faces", type="IngredientsFaceEncoderLoader", pos=[COLUMNS[0], 450],
             widgets=dict(model_folder="Ingredients", provider="auto")),
        dict(key="ids", type="IngredientsIDList", pos=[COLUMNS[2], 520]),
        dict(key="canvas", type="IngredientsFaceCanvas", pos=[COLUMNS[3], 620]),
        dict(key="canvas_preview", type="PreviewImage", pos=[COLUMNS[4], 620]),
        dict(key="project", type="IngredientsProjectIDs", pos=[COLUMNS[3], 420]),
        dict(key="route", type="IngredientsRouteIDs", pos=[COLUMNS[3], 260],
             widgets=dict(routing_mode="from model", strength=1.0)),
        dict(key="sampler", type="IngredientsSampler", pos=[COLUMNS[2], 0],
             widgets=dict(width=720, height=480, frames=49, steps=50, cfg=6.0, seed=42,
                          control_after_generate="fixed", scheduler="dpm", dynamic_cfg=False)),
        dict(key="decode", type="IngredientsDecode", pos=[COLUMNS[3], 0], widgets=dict(tiling=True)),
        dict(key="save", type="SaveAnimatedWEBP", pos=[COLUMNS[4], 0],
             widgets=dict(filename_prefix="Ingredients", fps=8.0, lossless=False, quality=90, method="default")),
    ]
    links = [
        ("t5", "t5", "prompt", "t5"),
        ("model", "model", "sampler", "model"), ("prompt", "prompt", "sampler", "prompt"),
        ("vae", "vae", "sampler", "vae"), ("route", "routed_ids", "sampler", "routed_ids"),
        ("model", "model", "project", "model"), ("ids", "ids", "project", "ids"),
        ("project", "id_tokens", "route", "id_tokens"), ("ids", "ids", "canvas", "ids"),
        ("canvas", "canvas", "canvas_preview", "images"),
        ("vae", "vae", "decode", "vae"), ("sampler", "latents", "decode", "latents"),
        ("decode", "frames", "save", "images"),
    ]
    for i in range(1, people + 1):
        row = 520 + (i - 1) * 420
        nodes.append(dict(key=f"photo_{i}", type="LoadImage", pos=[COLUMNS[0], row + 130],
                          widgets=dict(image=f"person_{i}.png"), title=f"Photo(s) of person {i}"))
        nodes.append(dict(key=f"face_{i}", type="IngredientsEncodeFace", pos=[COLUMNS[1], row],
                          widgets=dict(face_choice="best", face_index=0, min_face_size=64)))
        links += [("faces", "face_encoder", f"face_{i}", "face_encoder"), (f"photo_{i}", "IMAGE", f"face_{i}", "image"),
                  (f"face_{i}", "face", "ids", f"face_{i}")]
    return dict(nodes=nodes, links=links)


EXAMPLES = {
    "ingredients_one_id.json": _spec(1, ONE_WOMAN),
    "ingredients_two_ids.json": _spec(2, TWO_MEN),
}


def main(url: str) -> int:
    with frontend.open_comfyui(url) as (page, log):
        for name, spec in EXAMPLES.items():
            workflow, _ = frontend.build(page, spec)
            (WORKFLOWS / name).write_text(json.dumps(workflow, indent=2) + "\n", encoding="utf-8")
            counts = f"{len(workflow['nodes'])} nodes, {len(workflow['links'])} links"
            sys.stdout.write(f"wrote {WORKFLOWS / name}: {counts}\n")
        problems = log.pack_errors()
    if problems:
        sys.stderr.write("console errors from the pack:\n" + "\n".join(problems) + "\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8188"))
