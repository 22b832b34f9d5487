"""UI-format workflows (what the frontend saves) against node definitions (``/object_info`` format).

- :func:`node_definitions` builds ``/object_info``-style definitions from the pack's V3 schemas,
  without ComfyUI, and adds the ComfyUI core nodes described in ``core_nodes.json``;
- :func:`check_workflow` lists every problem: unknown node types, link types that differ from the
  output and input they join, widget values out of order, range or list, control values missing;
- :func:`to_api` converts a workflow to the API format ``POST /prompt`` takes, the way the frontend
  does: widget values are matched to the widget inputs in input order, the hidden control value
  after a ``control_after_generate`` widget and the upload button value of an image combo are
  skipped, and links become ``[source node id, output index]``.

A workflow saved before a node gained optional widgets (appended after the old ones) has fewer
widget values; the frontend keeps those widgets at their defaults, and so do these tools.
"""

from __future__ import annotations

import json
from pathlib import Path

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
CORE_NODES = Path(__file__).with_name("core_nodes.json")
# Combos whose options are files on disk: any string is a valid value in a shared workflow.
DISK_COMBOS = {"model_folder", "clip_name", "lora_name"}


def load(path: Path) -> dict:
    """A workflow, blueprint or other JSON file."""
    return json.loads(path.read_text(encoding="utf-8"))


def _schema_definition(cls) -> dict:
    schema = cls.GET_SCHEMA()
    required, optional = {}, {}
    for item in schema.inputs:
        (optional if item.optional else required)[item.id] = [item.get_io_type(), item.as_dict()]
    return {
        "name": schema.node_id,
        "input": {"required": required, **({"optional": optional} if optional else {})},
        "input_order": {"required": list(required), **({"optional": list(optional)} if optional else {})},
        "output": [o.get_io_type() for o in schema.outputs],
        "output_name": [o.display_name or o.get_io_type() for o in schema.outputs],
        "output_node": schema.is_output_node,
    }


def node_definitions(node_classes) -> dict[str, dict]:
    definitions = json.loads(CORE_NODES.read_text(encoding="utf-8"))
    for cls in node_classes:
        definition = _schema_definition(cls)
        definitions[definition["name"]] = definition
    return definitions


def _inputs(definition: dict) -> list[tuple[str, object, dict]]:
    """(name, type, options) of every input, required first, in ComfyUI's input order."""
    result = []
    for section in ("required", "optional"):
        for name in definition.get("input_order", {}).get(section, []):
            spec = definition["input"][section][name]
            result.append((name, spec[0], spec[1] if len(spec) > 1 else {}))
    return result


def _optional(definition: dict) -> set[str]:
    return set(definition.get("input_order", {}).get("optional", []))


def _values_with_defaults(node: dict, definition: dict) -> list | None:
    """The node's widget values, with defaults for optional widgets added after it was saved; None
    when the values do not fit the widgets that way."""
    layout = widget_layout(definition)
    values = node.get("widgets_values") or []
    if isinstance(values, dict) or len(values) > len(layout):
        return None
    missing = layout[len(values):]
    specs = {name: options for name, _, options in _inputs(definition)}
    if any(name not in _optional(definition) or kind != "value" or "default" not in specs[name]
           for name, kind in missing):
        return None
    return list(values) + [specs[name]["default"] for name, _ in missing]


def _is_widget(io_type, options: dict) -> bool:
    return (isinstance(io_type, list) or io_type in WIDGET_TYPES) and not options.get("forceInput")


def widget_layout(definition: dict) -> list[tuple[str, str]]:
    """The entries of ``widgets_values`` in order: (input name, 'value' | 'control' | 'upload')."""
    layout = []
    for name, io_type, options in _inputs(definition):
        if not _is_widget(io_type, options):
            continue
        layout.append((name, "value"))
        if options.get("control_after_generate"):
            layout.append((name, "control"))
        if options.get("image_upload"):
            layout.append((name, "upload"))
    return layout


def _value_problem(name: str, io_type, options: dict, value) -> str | None:
    choices = io_type if isinstance(io_type, list) else options.get("options")
    if io_type == "COMBO" or isinstance(io_type, list):
        if name in DISK_COMBOS or options.get("image_upload"):
            return None if isinstance(value, str) and value else f"{name}: expected a file name, got {value!r}"
        return None if value in (choices or []) else f"{name}: {value!r} not in {choices}"
    kinds = {"INT": int, "FLOAT": (int, float), "STRING": str, "BOOLEAN": bool}
    if not isinstance(value, kinds[io_type]) or (io_type != "BOOLEAN" and isinstance(value, bool)):
        return f"{name}: {value!r} is not {io_type}"
    if io_type in ("INT", "FLOAT"):
        if "min" in options and value < options["min"] or "max" in options and value > options["max"]:
            return f"{name}: {value} outside [{options.get('min')}, {options.get('max')}]"
    return None


def _check_widgets(node: dict, definition: dict) -> list[str]:
    label = f"node {node['id']} ({node['type']})"
    layout = widget_layout(definition)
    values = _values_with_defaults(node, definition)
    if values is None:
        count = len(node.get("widgets_values") or [])
        return [f"{label}: {count} widget values for {len(layout)} widgets {[n for n, _ in layout]}"]
    specs = {name: (io_type, options) for name, io_type, options in _inputs(definition)}
    problems = []
    for (name, kind), value in zip(layout, values, strict=False):
        if kind == "control" and value not in CONTROL_VALUES:
            problems.append(f"{label}: control value after {name} is {value!r}, "
                            f"expected one of {sorted(CONTROL_VALUES)}")
        elif kind == "value":
            problem = _value_problem(name, *specs[name], value)
            if problem:
                problems.append(f"{label}: {problem}")
    return problems


def _check_links(workflow: dict, definitions: dict) -> list[str]:
    nodes = {n["id"]: n for n in workflow["nodes"]}
    problems = []
    for link_id, origin, out_slot, target, in_slot, link_type in workflow["links"]:
        src, dst = nodes.get(origin), nodes.get(target)
        if src is None or dst is None:
            problems.append(f"link {link_id}: joins missing node {origin if src is None else target}")
            continue
        if src["type"] not in definitions or dst["type"] not in definitions:
            continue
        out_type = definitions[src["type"]]["output"][out_slot]
        dst_input = dst["inputs"][in_slot]
        in_type = dict((n, t) for n, t, _ in _inputs(definitions[dst["type"]])).get(dst_input["name"])
        if not (link_type == out_type == in_type == dst_input["type"]) or dst_input.get("link") != link_id:
            problems.append(f"link {link_id}: {src['type']} output {out_slot} ({out_type}) -> {dst['type']}."
                            f"{dst_input['name']} ({in_type}) is recorded as {link_type}")
    return problems


def check_workflow(workflow: dict, definitions: dict) -> list[str]:
    problems = [f"node {n['id']}: unknown node type {n['type']}" for n in workflow["nodes"]
                if n["type"] not in definitions]
    for node in workflow["nodes"]:
        if node["type"] in definitions:
            problems += _check_widgets(node, definitions[node["type"]])
    return problems + _check_links(workflow, definitions)


def to_api(workflow: dict, definitions: dict) -> dict:
    """The API-format prompt for a UI-format workflow (muted and bypassed nodes are left out)."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 0:
            continue
        definition = definitions[node["type"]]
        inputs = {}
        values = _values_with_defaults(node, definition) or node.get("widgets_values") or []
        for (name, kind), value in zip(widget_layout(definition), values, strict=False):
            if kind == "value":
                inputs[name] = value
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, origin, out_slot, *_ = links[slot["link"]]
                inputs[slot["name"]] = [str(origin), out_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
