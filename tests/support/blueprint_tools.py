"""Subgraph blueprints (``subgraphs/*.json``, the format of ComfyUI 0.33's ``blueprints/``) against node
definitions, with the workflow checks of ``workflow_tools``.

A blueprint is a workflow with one node, whose type is the id of ``definitions.subgraphs[0]``; the
subgraph holds the inner ``nodes`` and ``links`` (objects, not the lists of a workflow), its ``inputs``
and ``outputs`` (each with the ``linkIds`` it feeds) and, on top of a workflow, ``name``,
``description`` and ``category``. Links from the subgraph's inputs start at node -10 (slot: the
input's index), links to its outputs end at node -20.
"""

from __future__ import annotations

import copy

from . import workflow_tools

INPUT_NODE, OUTPUT_NODE = -10, -20


def subgraph(blueprint: dict) -> dict:
    return blueprint["definitions"]["subgraphs"][0]


def inner_workflow(blueprint: dict) -> dict:
    """The subgraph's own nodes and the links between them, as a workflow ``check_workflow`` reads (the
    links from the subgraph's inputs left off, their inputs unlinked)."""
    graph = subgraph(blueprint)
    links = [[link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"], link["type"]]
             for link in graph["links"] if INPUT_NODE != link["origin_id"] and OUTPUT_NODE != link["target_id"]]
    kept = {link[0] for link in links}
    nodes = copy.deepcopy(graph["nodes"])
    for node in nodes:
        for slot in node.get("inputs", []):
            if slot.get("link") is not None and slot["link"] not in kept:
                slot["link"] = None
    return {"nodes": nodes, "links": links}


def _input_type(definitions: dict, node: dict, slot: int):
    name = node["inputs"][slot]["name"]
    return dict((n, t) for n, t, _ in workflow_tools._inputs(definitions[node["type"]])).get(name)


def _check_boundary(blueprint: dict, definitions: dict) -> list[str]:
    graph = subgraph(blueprint)
    nodes = {n["id"]: n for n in graph["nodes"]}
    problems = []
    for link in graph["links"]:
        if link["origin_id"] == INPUT_NODE:
            exposed, node = graph["inputs"][link["origin_slot"]], nodes[link["target_id"]]
            slot = node["inputs"][link["target_slot"]]
            expected = _input_type(definitions, node, link["target_slot"])
            if not (exposed["type"] == link["type"] == slot["type"] == expected) or slot.get("link") != link["id"] \
                    or link["id"] not in exposed["linkIds"]:
                problems.append(f"input {exposed['name']} -> {node['type']}.{slot['name']} ({expected}): link "
                                f"{link['id']} recorded as {link['type']}")
        elif link["target_id"] == OUTPUT_NODE:
            exposed, node = graph["outputs"][link["target_slot"]], nodes[link["origin_id"]]
            produced = definitions[node["type"]]["output"][link["origin_slot"]]
            if not (exposed["type"] == link["type"] == produced) or link["id"] not in exposed["linkIds"]:
                problems.append(f"output {exposed['name']} <- {node['type']} output {link['origin_slot']} ({produced})")
    return problems


def _check_outer_node(blueprint: dict) -> list[str]:
    graph, problems = subgraph(blueprint), []
    if len(blueprint["nodes"]) != 1 or blueprint["nodes"][0]["type"] != graph["id"]:
        return ["the blueprint is not one node of its subgraph's type"]
    node = blueprint["nodes"][0]
    shown = [(i["name"], i["type"], i.get("label")) for i in node["inputs"]]
    if shown != [(i["name"], i["type"], i.get("label")) for i in graph["inputs"]]:
        problems.append(f"the node's inputs {shown} are not the subgraph's")
    if [(o["name"], o["type"]) for o in node["outputs"]] != [(o["name"], o["type"]) for o in graph["outputs"]]:
        problems.append("the node's outputs are not the subgraph's")
    widgets = [i["name"] for i in node["inputs"] if "widget" in i]
    if len(node.get("widgets_values") or []) != len(widgets):
        problems.append(f"{len(node.get('widgets_values') or [])} widget values for the widgets {widgets}")
    return problems


def check_blueprint(blueprint: dict, definitions: dict) -> list[str]:
    """Every problem: of the inner nodes and links (``check_workflow``), of the links through the
    subgraph's inputs and outputs, and of the blueprint's node against its subgraph."""
    problems = workflow_tools.check_workflow(inner_workflow(blueprint), definitions)
    return problems + _check_boundary(blueprint, definitions) + _check_outer_node(blueprint)


def to_api(blueprint: dict, definitions: dict, links: dict | None = None) -> dict:
    """The API prompt of the placed blueprint: the inner nodes, their ids prefixed with the blueprint
    node's as the frontend does ("1:5"), with the blueprint node's widget values on the inputs they are
    exposed through and ``links`` (exposed input name -> [node id, slot] outside) on the others."""
    graph, node = subgraph(blueprint), blueprint["nodes"][0]
    values = dict(zip([i["name"] for i in node["inputs"] if "widget" in i], node.get("widgets_values") or [],
                      strict=True))
    values.update(links or {})
    prefix = f"{node['id']}:"
    prompt = {}
    for key, entry in workflow_tools.to_api(inner_workflow(blueprint), definitions).items():
        inputs = {name: [prefix + value[0], value[1]] if isinstance(value, list) else value
                  for name, value in entry["inputs"].items()}
        prompt[prefix + key] = {"class_type": entry["class_type"], "inputs": inputs}
    inner = {n["id"]: n for n in graph["nodes"]}
    for link in graph["links"]:
        name = graph["inputs"][link["origin_slot"]]["name"] if link["origin_id"] == INPUT_NODE else None
        if name in values:
            slot = inner[link["target_id"]]["inputs"][link["target_slot"]]["name"]
            prompt[f"{prefix}{link['target_id']}"]["inputs"][slot] = values[name]
    return prompt
