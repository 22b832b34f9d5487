"""Specs of the native-path example workflows (the Ingredients MODEL in ComfyUI's own KSampler), for
``build_workflows.py``: the same people and prompt as ``ingredients_two_ids.json``.

The text comes from ComfyUI's own nodes: *CLIPLoader* type ``sd3`` with a t5xxl file, then
*T5TokenizerOptions* (min_length 226: the model reads 226 T5 tokens; ComfyUI 0.21 and later can use
CLIPLoader type ``cogvideox`` instead of the pair) and *CLIPTextEncode*; every node here exists in
ComfyUI 0.3.64 and 0.33. KSampler runs euler + simple (DDIM with eta 0), 50 steps, cfg 6.
"""

from __future__ import annotations

COLUMNS = (0, 420, 900, 1300, 1700, 2150)
T5_FILE = "t5xxl_fp16.safetensors"
LORA_FILE = "cogvideox_5b_lora.safetensors"
#: Ingredients IDs and the MODEL into Project IDs, its tokens into Route IDs (every example's ID chain).
ID_LINKS = [("model", "model", "project", "model"), ("ids", "ids", "project", "ids"),
            ("project", "id_tokens", "route", "id_tokens")]


def people_nodes(nodes: list, links: list, people: int, first_row: int = 640) -> None:
    """A photo and an Encode Face node per person, linked to the face encoder and to Ingredients IDs
    (every example workflow's people, also ``build_workflows``')."""
    for i in range(1, people + 1):
        row = first_row + (i - 1) * 420
        nodes.append(dict(key=f"photo_{i}", type="LoadImage", pos=[COLUMNS[0], row + 130],
                          widgets=dict(image=f"person_{i}.png"), title=f"Photo(s) of person {i}"))
        nodes.append(dict(key=f"face_{i}", type="IngredientsEncodeFace", pos=[COLUMNS[1], row],
                          widgets=dict(face_choice="best", face_index=0, min_face_size=64)))
        links += [("faces", "face_encoder", f"face_{i}", "face_encoder"), (f"photo_{i}", "IMAGE", f"face_{i}", "image"),
                  (f"face_{i}", "face", "ids", f"face_{i}")]


def ksampler_spec(prompt: str, people: int = 2) -> dict:
    """Load Ingredients Model's MODEL through Apply IDs into KSampler; CLIPTextEncode for the text;
    Ingredients Image to Video for the canvas latent and the empty LATENT; Decode LATENT; save."""
    nodes = [
        dict(key="model", type="IngredientsModelLoader", pos=[COLUMNS[0], 0],
             widgets=dict(model_folder="Ingredients", dtype="auto", routing_mode="official")),
        dict(key="vae", type="IngredientsVAELoader", pos=[COLUMNS[0], 190],
             widgets=dict(model_folder="Ingredients", dtype="auto")),
        dict(key="clip", type="CLIPLoader", pos=[COLUMNS[0], 330], widgets=dict(clip_name=T5_FILE, type="sd3"),
             title="Load T5-XXL (CLIPLoader, type sd3)"),
        dict(key="t5_options", type="T5TokenizerOptions", pos=[COLUMNS[0], 480],
             widgets=dict(min_padding=0, min_length=226), title="226 T5 tokens (T5TokenizerOptions)"),
        dict(key="positive", type="CLIPTextEncode", pos=[COLUMNS[1], 0], widgets=dict(text=prompt), title="Prompt"),
        dict(key="negative", type="CLIPTextEncode", pos=[COLUMNS[1], 260], widgets=dict(text=""),
             title="Negative prompt"),
        dict(key="faces", type="IngredientsFaceEncoderLoader", pos=[COLUMNS[0], 600],
             widgets=dict(model_folder="Ingredients", provider="auto")),
        dict(key="ids", type="IngredientsIDList", pos=[COLUMNS[2], 640]),
        dict(key="project", type="IngredientsProjectIDs", pos=[COLUMNS[3], 640]),
        dict(key="route", type="IngredientsRouteIDs", pos=[COLUMNS[3], 760],
             widgets=dict(routing_mode="from model", strength=1.0)),
        dict(key="apply", type="IngredientsApplyIDs", pos=[COLUMNS[3], 460]),
        dict(key="to_video", type="IngredientsImageToVideo", pos=[COLUMNS[2], 0],
             widgets=dict(width=720, height=480, frames=49, batch_size=1, encoding="mean", canvas_seed=42)),
        dict(key="canvas_preview", type="PreviewImage", pos=[COLUMNS[2], 420]),
        dict(key="ksampler", type="KSampler", pos=[COLUMNS[4], 0],
             widgets=dict(seed=42, control_after_generate="fixed", steps=50, cfg=6.0, sampler_name="euler",
                          scheduler="simple", denoise=1.0)),
        dict(key="decode", type="IngredientsDecodeLatent", pos=[COLUMNS[5], 0], widgets=dict(tiling=True)),
        dict(key="save", type="SaveAnimatedWEBP", pos=[COLUMNS[5], 160],
             widgets=dict(filename_prefix="Ingredients_native", fps=8.0, lossless=False, quality=90,
                          method="default")),
    ]
    links = [
        ("clip", "CLIP", "t5_options", "clip"),
        ("t5_options", "CLIP", "positive", "clip"), ("t5_options", "CLIP", "negative", "clip"),
        ("positive", "CONDITIONING", "to_video", "positive"), ("negative", "CONDITIONING", "to_video", "negative"),
        ("ids", "ids", "to_video", "ids"), ("vae", "vae", "to_video", "vae"),
        ("to_video", "canvas", "canvas_preview", "images"),
        *ID_LINKS,
        ("model", "MODEL", "apply", "model"), ("route", "routed_ids", "apply", "routed_ids"),
        ("apply", "MODEL", "ksampler", "model"),
        ("to_video", "positive", "ksampler", "positive"), ("to_video", "negative", "ksampler", "negative"),
        ("to_video", "latent", "ksampler", "latent_image"),
        ("vae", "vae", "decode", "vae"), ("ksampler", "LATENT", "decode", "samples"),
        ("decode", "frames", "save", "images"),
    ]
    people_nodes(nodes, links, people)
    return dict(nodes=nodes, links=links)


def lora_easycache_spec(prompt: str) -> dict:
    """The KSampler example with a LoRA (core LoraLoaderModelOnly: kohya-format files) on the MODEL
    before Apply IDs, and EasyCache (core, default settings) after it."""
    spec = ksampler_spec(prompt)
    spec["nodes"] += [
        dict(key="lora", type="LoraLoaderModelOnly", pos=[COLUMNS[1], 500],
             widgets=dict(lora_name=LORA_FILE, strength_model=1.0)),
        dict(key="cache", type="EasyCache", pos=[COLUMNS[4], 560],
             widgets=dict(reuse_threshold=0.2, start_percent=0.15, end_percent=0.95, verbose=False)),
    ]
    links = [link for link in spec["links"] if link[2:] not in (("apply", "model"), ("ksampler", "model"))]
    spec["links"] = links + [("model", "MODEL", "lora", "model"), ("lora", "MODEL", "apply", "model"),
                             ("apply", "MODEL", "cache", "model"), ("cache", "MODEL", "ksampler", "model")]
    for node in spec["nodes"]:
        if node["key"] == "save":
            node["widgets"]["filename_prefix"] = "Ingredients_native_lora"
    return spec


def long_video_spec(prompt: str) -> dict:
    """The KSampler example at 97 frames: Ingredients Long Video after Apply IDs samples the MODEL in
    windows of the checkpoint's 49 frames (overlap 16: three windows); its frames output sets Image to
    Video's frames."""
    spec = ksampler_spec(prompt)
    spec["nodes"].append(dict(key="long", type="IngredientsLongVideo", pos=[COLUMNS[3], 160],
                              widgets=dict(frames=97, overlap=16, fuse_method="pyramid")))
    for node in spec["nodes"]:
        if node["key"] == "to_video":
            node["widgets"]["frames"] = 97
        if node["key"] == "save":
            node["widgets"]["filename_prefix"] = "Ingredients_long_video"
    spec["links"] = [link for link in spec["links"] if link[2:] != ("ksampler", "model")] + [
        ("apply", "MODEL", "long", "model"), ("long", "MODEL", "ksampler", "model"),
        ("long", "frames", "to_video", "frames")]
    return spec
