"""Specs of the example workflows on the Ingredients Sampler (the pack's own sampling node), for
``build_workflows`` and, without photos, previews and saver, for the blueprints (``blueprint_specs``)."""

from __future__ import annotations

from .native_workflows import COLUMNS, ID_LINKS, people_nodes

TWO_MEN = ("Two men in half bodies, are seated in a dimly lit room, possibly an office or meeting room, "
           "with a formal atmosphere.")
ONE_WOMAN = ("A woman with short hair stands by a window in soft morning light, turns towards the camera "
             "and smiles.")

THREE_PEOPLE = ("Three friends in half bodies sit side by side on a sofa in a bright living room, talking "
                "and laughing together.")

#: Encode Prompt, the loaders and Route IDs into the Sampler, then the ID chain (also the blueprints').
SAMPLER_LINKS = [
    ("t5", "t5", "prompt", "t5"),
    ("model", "model", "sampler", "model"), ("prompt", "prompt", "sampler", "prompt"),
    ("vae", "vae", "sampler", "vae"), ("route", "routed_ids", "sampler", "routed_ids"),
] + ID_LINKS


def sampler_spec(people: int, prompt: str) -> dict:
    """Loaders, Encode Prompt, the people, Ingredients IDs / Project IDs / Route IDs, Ingredients Sampler,
    Decode and Save Animated WEBP, with the face canvas previewed (the official example's graph)."""
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
    links = SAMPLER_LINKS + [("ids", "ids", "canvas", "ids"), ("canvas", "canvas", "canvas_preview", "images"),
                             ("vae", "vae", "decode", "vae"), ("sampler", "latents", "decode", "latents"),
                             ("decode", "frames", "save", "images")]
    people_nodes(nodes, links, people, first_row=520)
    return dict(nodes=nodes, links=links)


def three_ids_masks_spec() -> dict:
    """Three people, each steered to a third of the 720 x 480 video by a mask made with core mask
    nodes (a black mask plus a white 240 x 480 strip at x = 0, 240, 480), and the routing maps saved."""
    spec = sampler_spec(3, THREE_PEOPLE)
    nodes = {n["key"]: n for n in spec["nodes"]}
    nodes["project"]["pos"] = [COLUMNS[3], 260]
    nodes["route"]["pos"] = [COLUMNS[3], 400]
    nodes["route"]["widgets"].update(mask_mode="soft", mask_strength=5.0)
    nodes["canvas"]["pos"], nodes["canvas_preview"]["pos"] = [COLUMNS[3], 1200], [COLUMNS[4], 1200]
    spec["nodes"] += [
        dict(key="black", type="SolidMask", pos=[COLUMNS[2], 760], widgets=dict(value=0.0, width=720, height=480),
             title="Mask: nobody (720 x 480)"),
        dict(key="strip", type="SolidMask", pos=[COLUMNS[2], 920], widgets=dict(value=1.0, width=240, height=480),
             title="Mask: one third"),
        dict(key="routing_maps", type="IngredientsRoutingMaps", pos=[COLUMNS[5], 0],
             widgets=dict(steps="mean", layer=-1, opacity=0.55)),
        dict(key="save_maps", type="SaveAnimatedWEBP", pos=[COLUMNS[5], 220],
             widgets=dict(filename_prefix="Ingredients_routing", fps=8.0, lossless=False, quality=90,
                          method="default")),
    ]
    spec["links"] += [("sampler", "routing", "routing_maps", "routing"), ("decode", "frames", "routing_maps", "frames"),
                      ("routing_maps", "maps", "save_maps", "images")]
    for i in (1, 2, 3):
        spec["nodes"].append(dict(key=f"mask_{i}", type="MaskComposite", pos=[COLUMNS[2], 1080 + (i - 1) * 190],
                                  widgets=dict(x=240 * (i - 1), y=0, operation="add"),
                                  title=f"Region of person {i}"))
        spec["links"] += [("black", "MASK", f"mask_{i}", "destination"), ("strip", "MASK", f"mask_{i}", "source"),
                          (f"mask_{i}", "MASK", "route", f"mask_{i}")]
    return spec


def two_ids_checked_spec() -> dict:
    """The official two-person example with the identity check after Decode (routing from the sampler)."""
    spec = sampler_spec(2, TWO_MEN)
    spec["nodes"].append(dict(key="identity", type="IngredientsIdentityCheck", pos=[COLUMNS[5], 0],
                              widgets=dict(frames_to_sample=24, threshold=0.35)))
    spec["links"] += [("faces", "face_encoder", "identity", "face_encoder"), ("ids", "ids", "identity", "ids"),
                      ("decode", "frames", "identity", "frames"), ("sampler", "routing", "identity", "routing")]
    return spec
