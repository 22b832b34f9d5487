"""The subgraph blueprints (``subgraphs/*.json``) against the pack's node schemas (no ComfyUI needed).

A blueprint placed in a workflow is saved inside it (the whole subgraph), so the blueprints as first
shipped are kept in ``tests/fixtures/subgraphs/`` like the saved workflows of
``tests/fixtures/workflows/`` and must keep loading against the current schemas; the shipped ones must
keep the inputs (name, type, order) and output the fixtures expose.
"""

from __future__ import annotations


import pytest

from tests.support import blueprint_tools  # noqa: E402
from tests.support import harness  # noqa: E402
from tests.support import registry_metadata  # noqa: E402
from tests.support import workflow_tools  # noqa: E402


BLUEPRINTS = sorted((harness.REPO / "subgraphs").glob("*.json"))
FIXTURES = sorted((harness.REPO / "tests" / "fixtures" / "subgraphs").glob("*.json"))
CATEGORY = "Video generation and editing/Image to video"  # ComfyUI 0.33's "Image to Video (Wan 2.2)" has it
PEOPLE = {"Person to Video (Ingredients)": 1, "Two People to Video (Ingredients)": 2,
          "Three People to Video with Regions (Ingredients)": 3}
OFFICIAL = dict(width=720, height=480, frames=49, steps=50, cfg=6.0)



def test_the_blueprints_are_the_one_two_and_three_person_ones():
    assert sorted(p.stem for p in BLUEPRINTS) == sorted(PEOPLE)
    assert sorted(p.name for p in FIXTURES) == sorted(p.name for p in BLUEPRINTS)


@pytest.mark.parametrize("path", BLUEPRINTS + FIXTURES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_blueprint_matches_node_definitions(path, definitions):
    assert blueprint_tools.check_blueprint(workflow_tools.load(path), definitions) == []


@pytest.mark.parametrize("path", BLUEPRINTS, ids=lambda p: p.name)
def test_name_category_description_and_labels(path):
    graph = blueprint_tools.subgraph(workflow_tools.load(path))
    assert graph["name"] == path.stem and graph["category"] == CATEGORY
    assert "Ingredients" in graph["description"] and len(graph["description"]) > 60
    labels = [i.get("label") for i in graph["inputs"]]
    assert all(labels) and len(set(labels)) == len(labels), labels
    assert [(o["name"], o["type"]) for o in graph["outputs"]] == [("VIDEO", "VIDEO")]


@pytest.mark.parametrize("path", BLUEPRINTS, ids=lambda p: p.name)
def test_inputs_an_artist_sets(path):
    """A photo per person (and a mask per person in the regions one), the prompt, the negative prompt,
    seed, steps, size, the model folder for every loader, the model's weight_dtype and the T5's dtype."""
    graph, people = blueprint_tools.subgraph(workflow_tools.load(path)), PEOPLE[path.stem]
    exposed = {i["name"]: i["type"] for i in graph["inputs"]}
    photos = [n for n, t in exposed.items() if t == "IMAGE"]
    masks = [n for n, t in exposed.items() if t == "MASK"]
    assert len(photos) == people and len(masks) == (3 if "Regions" in path.stem else 0)
    assert {"prompt", "negative_prompt", "seed", "steps", "model_folder", "weight_dtype", "t5_dtype"} <= set(exposed)
    nodes = {n["id"]: n for n in graph["nodes"]}
    fed = {(nodes[link["target_id"]]["type"], nodes[link["target_id"]]["inputs"][link["target_slot"]]["name"])
           for link in graph["links"] if link["origin_id"] == blueprint_tools.INPUT_NODE
           and graph["inputs"][link["origin_slot"]]["name"] == "model_folder"}
    assert {t for t, _ in fed} == {"IngredientsModelLoader", "IngredientsVAELoader", "IngredientsT5Loader",
                                   "IngredientsFaceEncoderLoader"}


@pytest.mark.parametrize("path", BLUEPRINTS, ids=lambda p: p.name)
def test_api_prompt_has_the_official_defaults_and_ends_in_create_video(path, definitions):
    blueprint = workflow_tools.load(path)
    graph = blueprint_tools.subgraph(blueprint)
    photos = {i["name"]: ["100", 0] for i in graph["inputs"] if i["type"] in ("IMAGE", "MASK")}
    prompt = blueprint_tools.to_api(blueprint, definitions, photos)
    sampler = next(v["inputs"] for v in prompt.values() if v["class_type"] == "IngredientsSampler")
    assert {k: sampler[k] for k in OFFICIAL} == OFFICIAL and sampler["scheduler"] == "dpm"
    assert "patched_model" not in sampler  # the optional MODEL inputs stay unconnected
    project = next(v["inputs"] for v in prompt.values() if v["class_type"] == "IngredientsProjectIDs")
    assert "patched_model" not in project
    video = next(k for k, v in prompt.items() if v["class_type"] == "CreateVideo")
    assert prompt[video]["inputs"]["fps"] == 8.0
    output = next(link for link in graph["links"] if link["target_id"] == blueprint_tools.OUTPUT_NODE)
    assert f"{blueprint['nodes'][0]['id']}:{output['origin_id']}" == video
    loaders = [v["inputs"] for v in prompt.values() if v["class_type"].endswith("Loader")]
    assert {x["model_folder"] for x in loaders} == {"Ingredients"}
    assert sum(1 for v in prompt.values() if v["class_type"] == "IngredientsEncodeFace") == PEOPLE[path.stem]


@pytest.mark.parametrize("path", BLUEPRINTS, ids=lambda p: p.name)
def test_every_node_carries_its_registry_id_and_version(path):
    blueprint = workflow_tools.load(path)
    cnr_id, version = registry_metadata.pack_registry()
    assert blueprint["nodes"][0]["properties"]["cnr_id"] == cnr_id
    assert blueprint["nodes"][0]["properties"]["ver"] == version
    for node in blueprint_tools.subgraph(blueprint)["nodes"]:
        pack = node["type"].startswith("Ingredients")
        expected = (cnr_id, version) if pack else (registry_metadata.CORE_ID, node["properties"].get("ver"))
        assert (node["properties"]["cnr_id"], node["properties"]["ver"]) == expected and expected[1], node["type"]


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name)
def test_shipped_blueprint_keeps_the_inputs_it_was_first_saved_with(fixture):
    """Inputs are only appended: an artist's links to a placed blueprint are by slot."""
    before = blueprint_tools.subgraph(workflow_tools.load(fixture))
    now = blueprint_tools.subgraph(workflow_tools.load(harness.REPO / "subgraphs" / fixture.name))
    old = [(i["name"], i["type"]) for i in before["inputs"]]
    assert [(i["name"], i["type"]) for i in now["inputs"]][:len(old)] == old
    assert [(o["name"], o["type"]) for o in now["outputs"]][:len(before["outputs"])] == \
        [(o["name"], o["type"]) for o in before["outputs"]]


def test_a_changed_inner_widget_value_is_caught(definitions):
    blueprint = workflow_tools.load(BLUEPRINTS[0])
    sampler = next(n for n in blueprint_tools.subgraph(blueprint)["nodes"] if n["type"] == "IngredientsSampler")
    sampler["widgets_values"].insert(0, 16)  # what a widget inserted before width would do to the saved values
    assert blueprint_tools.check_blueprint(blueprint, definitions)
