"""Saved workflows keep working: node schemas only grow (tests/schemas/nodes.json is the contract).

``test_node_schemas_only_grow`` fails on a change that breaks saved workflows and says how to ship
it; allowed changes (a new node, an appended optional input or output) pass with a warning.
``test_schema_snapshot_is_current`` then asks for the snapshot to be regenerated, so that what was
just added is protected from the next change too.
"""

from __future__ import annotations

import copy
import warnings

import pytest

from tests.support import schema_snapshot  # noqa: E402


UPDATE = "python -m tests.support.schema_snapshot --update"


@pytest.fixture(scope="module")
def now() -> dict:
    return schema_snapshot.current()


def test_node_schemas_only_grow(now):
    breaking, allowed = schema_snapshot.compare(schema_snapshot.load(), now)
    if allowed:
        warnings.warn("schema changes that keep saved workflows working (regenerate the snapshot: "
                      f"{UPDATE}):\n  " + "\n  ".join(allowed), stacklevel=1)
    assert not breaking, ("changes that break saved workflows:\n  " + "\n  ".join(breaking)
                          + "\n\n" + schema_snapshot.HOW_TO_SHIP)


def test_schema_snapshot_is_current(now):
    breaking, allowed = schema_snapshot.compare(schema_snapshot.load(), now)
    assert not (breaking or allowed), (
        f"tests/schemas/nodes.json is out of date; after an allowed change run `{UPDATE}` and commit it:\n  "
        + "\n  ".join(allowed + breaking))


def _sampler(nodes: dict) -> dict:
    return nodes["IngredientsSampler"]


def _input(nodes: dict, node_id: str, input_id: str) -> dict:
    return next(i for i in nodes[node_id]["inputs"] if i["id"] == input_id)


def _insert_optional(nodes):
    _sampler(nodes)["inputs"].insert(5, {"id": "eta", "type": "FLOAT", "optional": True, "options": {"default": 0.0}})


def _rename(nodes):
    _input(nodes, "IngredientsSampler", "cfg")["id"] = "guidance"


def _reorder(nodes):
    inputs = _sampler(nodes)["inputs"]
    inputs[4], inputs[5] = inputs[5], inputs[4]


def _retype(nodes):
    _input(nodes, "IngredientsSampler", "steps")["type"] = "FLOAT"


def _new_default(nodes):
    _input(nodes, "IngredientsSampler", "seed")["options"]["default"] = 0


def _option_removed(nodes):
    _input(nodes, "IngredientsSampler", "scheduler")["options"]["options"].remove("ddim")


def _narrower_range(nodes):
    _input(nodes, "IngredientsSampler", "frames")["options"]["max"] = 13


def test_a_widened_range_is_allowed(now):
    """A raised max (or a lowered min) keeps every saved value valid: allowed, with a report."""
    changed = copy.deepcopy(now)
    _input(changed, "IngredientsSampler", "steps")["options"]["max"] = 10_000
    breaking, allowed = schema_snapshot.compare(now, changed)
    assert breaking == [] and any("range widened" in line for line in allowed)


def _required_appended(nodes):
    _sampler(nodes)["inputs"].append({"id": "eta", "type": "FLOAT", "optional": False, "options": {"default": 0.0}})


def _made_optional(nodes):
    _input(nodes, "IngredientsSampler", "cfg")["optional"] = True


def _made_socket(nodes):
    _input(nodes, "IngredientsSampler", "seed")["options"]["forceInput"] = True


def _output_removed(nodes):
    _sampler(nodes)["outputs"].pop(0)


def _output_retyped(nodes):
    _sampler(nodes)["outputs"][0]["type"] = "LATENT"


def _node_removed(nodes):
    del nodes["IngredientsSampler"]




def _optional_appended(nodes):
    _sampler(nodes)["inputs"].append({"id": "eta", "type": "FLOAT", "optional": True, "options": {"default": 0.0}})


def _output_appended(nodes):
    _sampler(nodes)["outputs"].append({"name": "MODEL", "type": "MODEL"})


def _option_appended(nodes):
    _input(nodes, "IngredientsSampler", "scheduler")["options"]["options"].append("ddpm")


def _node_added(nodes):
    nodes["IngredientsExampleNode"] = {"inputs": [], "outputs": [{"name": "MODEL", "type": "MODEL"}], "deprecated": False}


def _deprecated(nodes):
    _sampler(nodes)["deprecated"] = True


@pytest.mark.parametrize("change, expected, breaks", [
    (_insert_optional, "input inserted before old inputs", True),
    (_rename, "IngredientsSampler.cfg: input removed or renamed", True),
    (_reorder, "input moved from position", True),
    (_retype, "type INT -> FLOAT", True),
    (_new_default, "default 42 -> 0", True),
    (_option_removed, "options ['dpm', 'ddim'] -> ['dpm']", True),
    (_narrower_range, "max 1025 -> 13", True),
    (_required_appended, "new REQUIRED input", True),
    (_made_optional, "optional False -> True", True),
    (_made_socket, "forceInput None -> True", True),
    (_output_removed, "IngredientsSampler output 0", True),
    (_output_retyped, "'type': 'LATENT'", True),
    (_node_removed, "IngredientsSampler: node removed", True),
    (_optional_appended, "IngredientsSampler.eta: optional input appended", False),
    (_output_appended, "IngredientsSampler output 2 (MODEL: MODEL) appended", False),
    (_option_appended, "IngredientsSampler.scheduler: options ['ddpm'] appended", False),
    (_node_added, "IngredientsExampleNode: new node", False),
    (_deprecated, "IngredientsSampler: deprecated False -> True", False),
])
def test_changes_are_sorted_into_breaking_and_allowed(now, change, expected, breaks):
    changed = copy.deepcopy(now)
    change(changed)
    breaking, allowed = schema_snapshot.compare(now, changed)
    if breaks:
        assert any(expected in line for line in breaking), breaking
    else:
        assert breaking == [] and allowed == [expected]


def test_update_refuses_a_breaking_change_and_says_how_to_ship_it(now, tmp_path, capsys):
    snapshot = tmp_path / "nodes.json"
    older = copy.deepcopy(now)
    _input(older, "IngredientsSampler", "cfg")["id"] = "guidance"  # the snapshot knew an input now gone
    schema_snapshot.write(older, snapshot)
    assert schema_snapshot.main(["--update", "--snapshot", str(snapshot)]) == 1
    shown = capsys.readouterr().out
    assert "BREAKING: IngredientsSampler.guidance: input removed or renamed" in shown
    assert "is_deprecated=True" in shown and "io.NodeReplace(" in shown and "0.3.64 has no such API" in shown
    assert schema_snapshot.load(snapshot) == older  # nothing written


def test_update_writes_an_allowed_change(now, tmp_path):
    snapshot = tmp_path / "nodes.json"
    older = copy.deepcopy(now)
    del older["IngredientsSampler"]["inputs"][-1]  # the snapshot predates the last (optional) input
    schema_snapshot.write(older, snapshot)
    assert schema_snapshot.main(["--update", "--snapshot", str(snapshot)]) == 0
    assert schema_snapshot.load(snapshot) == now
