"""The example workflows against the pack's own node schemas (no ComfyUI needed)."""

from __future__ import annotations

import copy

import pytest

from tests.support import harness  # noqa: E402
from tests.support import workflow_tools  # noqa: E402


WORKFLOWS = sorted((harness.REPO / "workflows").glob("*.json"))
OFFICIAL_TWO_ID_PROMPT = ("Two men in half bodies, are seated in a dimly lit room, possibly an office or meeting "
                          "room, with a formal atmosphere.")



def by_type(workflow: dict, node_type: str) -> list[dict]:
    return [n for n in workflow["nodes"] if n["type"] == node_type]


def test_examples_exist_for_one_and_two_people():
    names = {p.name for p in WORKFLOWS}
    assert {"ingredients_one_id.json", "ingredients_two_ids.json"} <= names


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_matches_node_definitions(path, definitions):
    workflow = workflow_tools.load(path)
    assert workflow_tools.check_workflow(workflow, definitions) == []
    ids = [n["id"] for n in workflow["nodes"]]
    assert len(set(ids)) == len(ids) and workflow["last_node_id"] >= max(ids)
    assert workflow["last_link_id"] >= max(link[0] for link in workflow["links"])


NATIVE_NAMES = ("ksampler", "easycache", "long_video")  # KSampler on the Ingredients MODEL
PACK_SAMPLER = [p for p in WORKFLOWS if not any(name in p.name for name in NATIVE_NAMES)]
NATIVE = [p for p in WORKFLOWS if p not in PACK_SAMPLER]


@pytest.mark.parametrize("path", PACK_SAMPLER, ids=lambda p: p.name)
def test_workflow_converts_to_api_format(path, definitions):
    workflow = workflow_tools.load(path)
    prompt = workflow_tools.to_api(workflow, definitions)
    sampler_id, sampler = next((k, v) for k, v in prompt.items() if v["class_type"] == "IngredientsSampler")
    assert sampler["inputs"]["seed"] == 42 and "control_after_generate" not in sampler["inputs"]
    assert {sampler["inputs"][k] for k in ("width", "height", "frames", "steps")} == {720, 480, 49, 50}
    for node in prompt.values():
        for value in node["inputs"].values():
            if isinstance(value, list):
                assert value[0] in prompt, f"{node['class_type']} links to missing node {value[0]}"
    loads = [n for n in prompt.values() if n["class_type"] == "LoadImage"]
    assert all(set(n["inputs"]) == {"image"} for n in loads)  # the upload button value is not an input
    assert any(v["class_type"] == "IngredientsDecode" and v["inputs"]["latents"] == [sampler_id, 0]
               for v in prompt.values())


def test_native_examples_exist():
    assert {p.name for p in NATIVE} == {"ingredients_two_ids_ksampler.json", "ingredients_two_ids_lora_easycache.json",
                                        "ingredients_two_ids_long_video.json"}


def _source(prompt: dict, link: list) -> str:
    return prompt[link[0]]["class_type"]


@pytest.mark.parametrize("path", NATIVE, ids=lambda p: p.name)
def test_native_example_runs_the_model_through_apply_ids_in_ksampler(path, definitions):
    """CLIPLoader (sd3) -> T5TokenizerOptions (226) -> CLIPTextEncode for the text; Image to Video for the
    canvas latent and the empty LATENT at the official size; the MODEL through Apply IDs (and, in the
    LoRA example, LoraLoaderModelOnly before it and EasyCache after it) into KSampler euler/simple."""
    prompt = workflow_tools.to_api(workflow_tools.load(path), definitions)
    nodes = {v["class_type"]: (k, v) for k, v in prompt.items()}
    _, ksampler = nodes["KSampler"]
    assert {k: ksampler["inputs"][k] for k in ("seed", "steps", "cfg", "sampler_name", "scheduler", "denoise")} == dict(
        seed=42, steps=50, cfg=6.0, sampler_name="euler", scheduler="simple", denoise=1.0)
    to_video_id, to_video = nodes["IngredientsImageToVideo"]
    long = "long_video" in path.name  # its frames come from Ingredients Long Video
    frames = [nodes["IngredientsLongVideo"][0], 1] if long else 49
    assert {k: to_video["inputs"][k] for k in ("width", "height", "frames", "encoding")} == dict(
        width=720, height=480, frames=frames, encoding="mean")
    assert [ksampler["inputs"][k] for k in ("positive", "negative", "latent_image")] == [
        [to_video_id, 0], [to_video_id, 1], [to_video_id, 2]]
    texts = [prompt[to_video["inputs"][k][0]] for k in ("positive", "negative")]
    assert [t["class_type"] for t in texts] == ["CLIPTextEncode"] * 2
    assert texts[0]["inputs"]["text"] == OFFICIAL_TWO_ID_PROMPT and texts[1]["inputs"]["text"] == ""
    options = prompt[texts[0]["inputs"]["clip"][0]]
    assert options["class_type"] == "T5TokenizerOptions" and options["inputs"]["min_length"] == 226
    assert prompt[options["inputs"]["clip"][0]]["inputs"]["type"] == "sd3"
    chain, link = [], ksampler["inputs"]["model"]
    while _source(prompt, link) != "IngredientsModelLoader":
        chain.append(_source(prompt, link))
        link = prompt[link[0]]["inputs"]["model"]
    assert link[1] == 1  # the loader's MODEL output
    lora = "easycache" in path.name
    assert chain == (["EasyCache", "IngredientsApplyIDs", "LoraLoaderModelOnly"] if lora else
                     ["IngredientsLongVideo", "IngredientsApplyIDs"] if long else ["IngredientsApplyIDs"])
    decode = nodes["IngredientsDecodeLatent"][1]
    assert decode["inputs"]["samples"] == [nodes["KSampler"][0], 0]


def test_long_video_example_samples_97_frames_of_two_people_in_three_windows(definitions):
    """Issue 21: the KSampler example at 97 frames, Ingredients Long Video (overlap 16, pyramid) on the
    MODEL after Apply IDs; the video's frames reach Image to Video from its frames output, and the
    widget under that link holds the same 97."""
    workflow = workflow_tools.load(harness.REPO / "workflows" / "ingredients_two_ids_long_video.json")
    prompt = workflow_tools.to_api(workflow, definitions)
    long, = [v for v in prompt.values() if v["class_type"] == "IngredientsLongVideo"]
    assert {k: long["inputs"][k] for k in ("frames", "overlap", "fuse_method")} == dict(
        frames=97, overlap=16, fuse_method="pyramid")
    to_video, = by_type(workflow, "IngredientsImageToVideo")
    assert to_video["widgets_values"][2] == 97
    assert [v["inputs"]["images"] for v in prompt.values() if v["class_type"] == "SaveAnimatedWEBP"] == [
        [next(k for k, v in prompt.items() if v["class_type"] == "IngredientsDecodeLatent"), 0]]
    assert len(by_type(workflow, "IngredientsEncodeFace")) == 2
    plan = harness.pack_module("nodes.native_windows").plan
    config = type("Official", (), {"sample_frames": 49})  # the released checkpoint's length
    assert len(plan(config, long["inputs"]["frames"], long["inputs"]["overlap"]).windows) == 3


def test_two_id_example_uses_the_official_prompt_and_two_slots():
    workflow = workflow_tools.load(harness.REPO / "workflows" / "ingredients_two_ids.json")
    prompt_node, = by_type(workflow, "IngredientsEncodePrompt")
    assert prompt_node["widgets_values"][0] == OFFICIAL_TWO_ID_PROMPT
    id_list, = by_type(workflow, "IngredientsIDList")
    connected = [i["name"] for i in id_list["inputs"] if i.get("link") is not None]
    assert connected == ["face_1", "face_2"] and len(by_type(workflow, "IngredientsEncodeFace")) == 2
    sampler, = by_type(workflow, "IngredientsSampler")
    assert sampler["widgets_values"][5:7] == [42, "fixed"]  # the seed, then its hidden control value


def test_three_id_example_steers_each_person_to_a_third_and_saves_the_routing_maps(definitions):
    workflow = workflow_tools.load(harness.REPO / "workflows" / "ingredients_three_ids_masks.json")
    prompt = workflow_tools.to_api(workflow, definitions)
    route = next(v for v in prompt.values() if v["class_type"] == "IngredientsRouteIDs")
    ids = next(v for v in prompt.values() if v["class_type"] == "IngredientsIDList")
    assert [k for k in ids["inputs"] if k.startswith("face_")] == ["face_1", "face_2", "face_3"]
    offsets = [prompt[route["inputs"][f"mask_{i}"][0]]["inputs"]["x"] for i in (1, 2, 3)]
    assert offsets == [0, 240, 480] and route["inputs"]["mask_mode"] in ("soft", "hard")
    sampler_id = next(k for k, v in prompt.items() if v["class_type"] == "IngredientsSampler")
    maps_id, maps = next((k, v) for k, v in prompt.items() if v["class_type"] == "IngredientsRoutingMaps")
    assert maps["inputs"]["routing"] == [sampler_id, 1]
    assert any(v["class_type"] == "SaveAnimatedWEBP" and v["inputs"]["images"] == [maps_id, 0]
               for v in prompt.values())


def test_workflows_saved_before_the_routing_widgets_get_their_defaults(definitions):
    workflow = workflow_tools.load(harness.REPO / "workflows" / "ingredients_two_ids.json")
    route = next(v for v in workflow_tools.to_api(workflow, definitions).values()
                 if v["class_type"] == "IngredientsRouteIDs")
    assert route["inputs"]["mask_mode"] == "soft" and route["inputs"]["strength_4"] == 1.0
    assert route["inputs"]["end_1"] == 1.0 and "mask_1" not in route["inputs"]


@pytest.mark.parametrize("mutation, expected", [
    (lambda w: by_type(w, "IngredientsSampler")[0]["widgets_values"].pop(6), "widget values for"),
    (lambda w: by_type(w, "IngredientsSampler")[0]["widgets_values"].__setitem__(2, 5000), "frames: 5000 outside"),
    (lambda w: by_type(w, "IngredientsSampler")[0]["widgets_values"].__setitem__(6, "sometimes"), "control value"),
    (lambda w: by_type(w, "IngredientsRouteIDs")[0]["widgets_values"].__setitem__(0, "random"), "not in"),
    (lambda w: by_type(w, "IngredientsRouteIDs")[0]["widgets_values"].pop(1), "1 widget values for 16"),
    (lambda w: w["links"][0].__setitem__(5, "INGREDIENTS_MODEL"), "is recorded as INGREDIENTS_MODEL"),
    (lambda w: w["nodes"][0].__setitem__("type", "IngredientsOldLoader"), "unknown node type"),
])
def test_checker_catches_broken_workflows(definitions, mutation, expected):
    workflow = copy.deepcopy(workflow_tools.load(harness.REPO / "workflows" / "ingredients_two_ids.json"))
    mutation(workflow)
    problems = workflow_tools.check_workflow(workflow, definitions)
    assert any(expected in p for p in problems), problems
