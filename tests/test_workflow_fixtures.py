"""Workflows as users saved them stay loadable: tests/fixtures/workflows/ against the CURRENT schemas.

The fixtures are the example workflows as the frontend saved them before registry metadata was added
(copies, never regenerated). Loaded against today's node definitions, every saved widget value must
land on the input it was saved for: widget values are positional, so an input inserted before old
ones, a reorder or a removed widget would shift them. What a value was saved for comes from the
fixture itself: the frontend's own ``widgets_values_named`` where it wrote one, otherwise the node's
saved widget inputs (``inputs[*].widget``) in order, with the hidden control value after the seed.
"""

from __future__ import annotations

import copy

import pytest

from tests.support import harness  # noqa: E402
from tests.support import workflow_tools  # noqa: E402


FIXTURES = sorted((harness.REPO / "tests" / "fixtures" / "workflows").glob("*.json"))
HIDDEN = ("control_after_generate", "upload")  # frontend-only widget values, never sent to /prompt



def from_saved_inputs(node: dict) -> dict:
    """name -> value from the node's saved widget inputs in order; an INT followed by a control value
    (fixed/increment/decrement/randomize) is a seed with its hidden control value."""
    values = list(node.get("widgets_values") or [])
    named = {}
    for name in [i["name"] for i in node.get("inputs", []) if i.get("widget")]:
        named[name] = values.pop(0)
        if values and type(named[name]) is int and values[0] in workflow_tools.CONTROL_VALUES:
            named["control_after_generate"] = values.pop(0)
    assert values == [], f"node {node['id']} ({node['type']}): widget values left over: {values}"
    return named


def saved_values(node: dict) -> dict:
    return dict(node["widgets_values_named"]) if "widgets_values_named" in node else from_saved_inputs(node)


def _linked(workflow: dict, node: dict) -> dict:
    links = {link[0]: link for link in workflow["links"]}
    return {i["name"]: [str(links[i["link"]][1]), links[i["link"]][2]]
            for i in node.get("inputs", []) if i.get("link") is not None}


def _options(definition: dict) -> dict:
    sections = definition["input"]
    return {name: (spec[1] if len(spec) > 1 else {}) for section in ("required", "optional")
            for name, spec in sections.get(section, {}).items()}


def test_the_fixtures_are_the_four_examples_as_saved():
    assert [p.name for p in FIXTURES] == ["ingredients_one_id.json", "ingredients_three_ids_masks.json",
                                          "ingredients_two_ids.json", "ingredients_two_ids_identity_check.json"]
    for path in FIXTURES:  # the old saved form: no registry metadata
        assert not any("cnr_id" in n.get("properties", {}) for n in workflow_tools.load(path)["nodes"]), path.name


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_the_named_values_agree_with_the_saved_widget_inputs(path):
    nodes = [n for n in workflow_tools.load(path)["nodes"] if "widgets_values_named" in n]
    for node in nodes:
        assert from_saved_inputs(node) == node["widgets_values_named"], node["type"]


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_saved_values_land_on_the_inputs_they_were_saved_for(path, definitions):
    workflow = workflow_tools.load(path)
    assert workflow_tools.check_workflow(workflow, definitions) == []
    prompt = workflow_tools.to_api(workflow, definitions)
    for node in workflow["nodes"]:
        sent, saved, linked = prompt[str(node["id"])]["inputs"], saved_values(node), _linked(workflow, node)
        label = f"{path.name} node {node['id']} ({node['type']})"
        for name, value in saved.items():
            if name in HIDDEN:
                assert name not in sent, f"{label}: {name} sent to /prompt"
            else:
                assert sent[name] == linked.get(name, value), f"{label}: {name} = {sent[name]!r}, saved {value!r}"
        assert {k: v for k, v in sent.items() if k in linked} == linked, label
        options, optional = _options(definitions[node["type"]]), workflow_tools._optional(definitions[node["type"]])
        for name in set(sent) - set(saved) - set(linked):  # gained after the fixture was saved
            assert name in optional and sent[name] == options[name]["default"], f"{label}: new input {name}"


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_the_seed_and_scheduler_keep_their_saved_values(path, definitions):
    workflow = workflow_tools.load(path)
    sampler = next(n for n in workflow["nodes"] if n["type"] == "IngredientsSampler")
    saved_order = [i["name"] for i in sampler["inputs"] if i.get("widget")]
    values = sampler["widgets_values"]
    seed_at = saved_order.index("seed")
    sent = workflow_tools.to_api(workflow, definitions)[str(sampler["id"])]["inputs"]
    assert sent["seed"] == values[seed_at]  # the value before the hidden control value
    assert sent["scheduler"] == values[seed_at + 2]  # after seed and its control value
    assert values[seed_at + 1] in workflow_tools.CONTROL_VALUES and values[seed_at + 1] not in sent.values()


def _with_sampler_input(definitions: dict, name: str, spec: list, before: str | None) -> dict:
    """The definitions with a FLOAT widget added to the sampler (appended optional, or inserted)."""
    changed = copy.deepcopy(definitions)
    sampler = changed["IngredientsSampler"]
    section = "optional" if before is None else "required"
    sampler["input"].setdefault(section, {})[name] = spec
    order = sampler["input_order"].setdefault(section, [])
    order.insert(order.index(before) if before else len(order), name)
    return changed


def test_an_appended_optional_widget_keeps_old_values_in_place(definitions):
    workflow = workflow_tools.load(FIXTURES[0])
    grown = _with_sampler_input(definitions, "eta", ["FLOAT", {"default": 0.25, "min": 0.0, "max": 1.0}], None)
    assert workflow_tools.check_workflow(workflow, grown) == []
    before = workflow_tools.to_api(workflow, definitions)
    after = workflow_tools.to_api(workflow, grown)
    sampler = next(k for k, v in after.items() if v["class_type"] == "IngredientsSampler")
    assert after[sampler]["inputs"].pop("eta") == 0.25 and after == before


def test_an_inserted_widget_shifts_the_saved_values_and_is_caught(definitions):
    workflow = workflow_tools.load(FIXTURES[0])
    inserted = _with_sampler_input(definitions, "eta", ["FLOAT", {"default": 0.25, "min": 0.0, "max": 1.0}], "seed")
    problems = workflow_tools.check_workflow(workflow, inserted)
    assert any("IngredientsSampler" in p for p in problems), problems


def test_a_widget_converted_to_a_socket_takes_the_link_and_keeps_its_slot(definitions):
    """A widget fed by a link keeps its place in widgets_values: the values after it still land."""
    workflow = workflow_tools.load(harness.REPO / "tests" / "fixtures" / "workflows" / "ingredients_two_ids_identity_check.json")
    check = next(n for n in workflow["nodes"] if n["type"] == "IngredientsIdentityCheck")
    sampler = next(n for n in workflow["nodes"] if n["type"] == "IngredientsSampler")
    slot = next(i for i, s in enumerate(sampler["inputs"]) if s["name"] == "cfg")
    link_id = workflow["last_link_id"] + 1
    workflow["links"].append([link_id, check["id"], 1, sampler["id"], slot, "FLOAT"])  # output 1: official
    sampler["inputs"][slot]["link"] = link_id
    assert workflow_tools.check_workflow(workflow, definitions) == []
    sent = workflow_tools.to_api(workflow, definitions)[str(sampler["id"])]["inputs"]
    saved = saved_values(sampler)
    assert sent["cfg"] == [str(check["id"]), 1]
    assert all(sent[name] == value for name, value in saved.items() if name not in HIDDEN + ("cfg",))
