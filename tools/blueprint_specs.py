"""What the pack's subgraph blueprints (``subgraphs/*.json``) hold, for ``build_blueprints.py``.

Each spec is the graph of an example workflow without its photos, previews and saver, ending in
ComfyUI's *Create Video*, plus the subgraph's face to an artist: its name, category and description
(in the style of ComfyUI's own ``blueprints/``), the inputs it exposes (each with a label and the
inner widgets or slots it feeds) and its VIDEO output. The defaults are the official ones: 50 steps,
cfg 6, 49 frames of 720 x 480, 8 fps; the model folder ``Ingredients``.
"""

from __future__ import annotations

from .native_workflows import COLUMNS
from .sampler_workflows import ONE_WOMAN, THREE_PEOPLE, TWO_MEN, sampler_spec

CATEGORY = "Video generation and editing/Image to video"
FPS = 8.0  # CogVideoX-5B's 49 frames are 6 seconds at 8 fps
LOADERS = ("model", "vae", "t5", "faces")
LEFT_OUT = ("canvas", "canvas_preview", "save")  # the example's canvas preview and saver


def _core_graph(prompt: str) -> tuple[list[dict], list[tuple]]:
    """The official example's graph (``sampler_spec``) without people, canvas preview and saver, ending
    in Create Video; the model loader's weight dtype is set, as the blueprint exposes it. The seed is an
    input of the blueprint: the value the artist sets is the one used, so the inner control stays "fixed"."""
    spec = sampler_spec(0, prompt)
    nodes = [node for node in spec["nodes"] if node["key"] not in LEFT_OUT]
    links = [link for link in spec["links"] if link[0] not in LEFT_OUT and link[2] not in LEFT_OUT]
    next(node for node in nodes if node["key"] == "model")["widgets"]["weight_dtype"] = "default"
    nodes.append(dict(key="video", type="CreateVideo", pos=[COLUMNS[4], 0], widgets=dict(fps=FPS)))
    return nodes, links + [("decode", "frames", "video", "images")]


def _people(nodes: list, links: list, people: int) -> list[dict]:
    """An Encode Face per person; the exposed photo input of each."""
    inputs = []
    for i in range(1, people + 1):
        nodes.append(dict(key=f"face_{i}", type="IngredientsEncodeFace", pos=[COLUMNS[1], 400 + (i - 1) * 240],
                          widgets=dict(face_choice="best", face_index=0, min_face_size=64)))
        links += [("faces", "face_encoder", f"face_{i}", "face_encoder"), (f"face_{i}", "face", "ids", f"face_{i}")]
        label = "photo of the person" if people == 1 else f"photo of person {i}"
        inputs.append(dict(name=f"person_{i}", type="IMAGE", label=label, targets=[(f"face_{i}", "image")]))
    return inputs


def _settings() -> list[dict]:
    """The widgets every blueprint exposes, in the order the node shows them (after the photos)."""
    return [
        dict(name="prompt", type="STRING", label="prompt", targets=[("prompt", "prompt")]),
        dict(name="negative_prompt", type="STRING", label="negative prompt", targets=[("prompt", "negative_prompt")]),
        dict(name="seed", type="INT", label="seed", targets=[("sampler", "seed")]),
        dict(name="steps", type="INT", label="steps", targets=[("sampler", "steps")]),
        dict(name="width", type="INT", label="width", targets=[("sampler", "width")]),
        dict(name="height", type="INT", label="height", targets=[("sampler", "height")]),
        dict(name="frames", type="INT", label="frames (at most 49)", targets=[("sampler", "frames")]),
        dict(name="model_folder", type="COMBO", label="Ingredients model folder",
             targets=[(key, "model_folder") for key in LOADERS]),
        dict(name="weight_dtype", type="COMBO", label="model weights (fp8 halves the memory)",
             targets=[("model", "weight_dtype")]),
        dict(name="t5_dtype", type="COMBO", label="text encoder (T5) precision", targets=[("t5", "dtype")]),
    ]


def _blueprint(name: str, description: str, people: int, prompt: str) -> dict:
    nodes, links = _core_graph(prompt)
    inputs = _people(nodes, links, people)
    return dict(name=name, category=CATEGORY, description=description, nodes=nodes, links=links,
                inputs=inputs + _settings(), outputs=[dict(name="VIDEO", type="VIDEO", source=("video", "VIDEO"))])


def _three_with_regions() -> dict:
    spec = _blueprint(
        "Three People to Video with Regions (Ingredients)",
        "Image-to-video of three people with Ingredients (CogVideoX-5B): a photo and a mask per person "
        "(white where that person should appear) keep each identity in its own part of the frame.",
        3, THREE_PEOPLE)
    route = next(n for n in spec["nodes"] if n["key"] == "route")
    route["widgets"].update(mask_mode="soft", mask_strength=5.0)
    masks = [dict(name=f"region_{i}", type="MASK", label=f"where person {i} appears (mask)",
                  targets=[("route", f"mask_{i}")]) for i in (1, 2, 3)]
    spec["inputs"] = spec["inputs"][:3] + masks + spec["inputs"][3:]
    return spec


BLUEPRINTS = {
    "Person to Video (Ingredients)": _blueprint(
        "Person to Video (Ingredients)",
        "Image-to-video of one person with Ingredients (CogVideoX-5B): a photo of the person's face and a "
        "prompt give a 6-second video in which that person keeps their identity.",
        1, ONE_WOMAN),
    "Two People to Video (Ingredients)": _blueprint(
        "Two People to Video (Ingredients)",
        "Image-to-video of two people with Ingredients (CogVideoX-5B): a photo per person and a prompt "
        "give a 6-second video in which both keep their identities, each routed to their own face.",
        2, TWO_MEN),
    "Three People to Video with Regions (Ingredients)": _three_with_regions(),
}
