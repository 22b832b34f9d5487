"""The example workflow with the identity check, against the pack's node schemas (no ComfyUI needed)."""

from __future__ import annotations

import json

import pytest

from tests.support import harness  # noqa: E402
from tests.support import workflow_tools  # noqa: E402


WORKFLOW = harness.REPO / "workflows" / "ingredients_two_ids_identity_check.json"


@pytest.fixture(scope="module")
def definitions(tmp_path_factory):
    harness.load_pack(tmp_path_factory.mktemp("no_models"))
    try:
        yield workflow_tools.node_definitions(harness.pack_module("nodes.extension").NODES)
    finally:
        harness.unload_pack()


def test_identity_check_follows_decode_with_the_runs_people_and_routing(definitions):
    workflow = json.loads(WORKFLOW.read_text(encoding="utf-8"))
    assert workflow_tools.check_workflow(workflow, definitions) == []
    prompt = workflow_tools.to_api(workflow, definitions)
    by_class = {node["class_type"]: key for key, node in prompt.items()}
    check = prompt[by_class["IngredientsIdentityCheck"]]["inputs"]
    assert check["frames"] == [by_class["IngredientsDecode"], 0]
    assert check["routing"] == [by_class["IngredientsSampler"], 1]
    assert check["ids"] == [by_class["IngredientsIDList"], 0]
    assert check["face_encoder"] == [by_class["IngredientsFaceEncoderLoader"], 0]
    assert (check["frames_to_sample"], check["threshold"]) == (24, 0.35)
    assert prompt[by_class["IngredientsProjectIDs"]]["inputs"]["ids"] == check["ids"]  # the same people
    assert any(v["class_type"] == "SaveAnimatedWEBP" for v in prompt.values())
