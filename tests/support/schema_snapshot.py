"""The committed snapshot of every node's schema (``tests/schemas/nodes.json``) and what may change.

Saved workflows are contracts: the frontend stores widget values by position (``widgets_values``)
and links by input name and output slot, so a node's inputs may only ever be appended (optional, at
the end) and its outputs appended. :func:`compare` sorts the differences between the snapshot and
the current schemas into *breaking* ones (a removed node, input or output; a rename; a reorder or an
input inserted before old ones; a new type; a changed default, range or option; a new required input;
an input made optional or required; a narrowed range) and *allowed* ones (a new node; an optional input appended; a widened range; an
output appended; combo options appended; a node marked deprecated).

Regenerate after an allowed change (refused while a breaking change is present)::

    python -m tests.support.schema_snapshot --update

``python -m tests.support.schema_snapshot`` only reports the differences.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from . import harness  # run as `python -m tests.support.schema_snapshot`, or imported by the tests

SNAPSHOT = Path(__file__).resolve().parents[1] / "schemas" / "nodes.json"
# Shown to people, not part of the contract: a new wording never breaks a saved workflow.
COSMETIC = {"tooltip", "display_name", "placeholder"}

HOW_TO_SHIP = """\
Saved workflows store widget values by position and links by input name and output slot, so these
changes break workflows that users have already saved. To ship the change:
  - a new input: append it after the node's last input, optional=True, with a default (old workflows
    get the default); a new output: append it after the last output;
  - anything else (rename, removal, reorder, new type, default, range or options, a required input):
    give the new behaviour a new node id (e.g. IngredientsSamplerV2, a new class in
    nodes/extension.py NODES) and keep the old class registered with is_deprecated=True in its
    io.Schema, so old workflows still load and run unchanged;
  - once an old node is removed after all, ComfyUI 0.33 can still migrate workflows that use it:
    register a mapping in the extension's on_load with
    `await ComfyAPI().node_replacement.register(io.NodeReplace(new_node_id=..., old_node_id=...,
    old_widget_ids=[old widget ids in widgets_values order], input_mapping=[{"new_id": ..., "old_id": ...}
    or {"new_id": ..., "set_value": ...}], output_mapping=[{"new_idx": ..., "old_idx": ...}]))`
    (comfy_api.latest; served at /node_replacements, applied by the frontend's swap-nodes dialog and
    by /prompt, only to node types that are no longer registered). ComfyUI 0.3.64 has no such API.
Then regenerate the snapshot: python -m tests.support.schema_snapshot --update"""


def _input_entry(item) -> dict:
    options = {k: v for k, v in item.as_dict().items() if k not in COSMETIC and k != "optional"}
    return {"id": item.id, "type": item.get_io_type(), "optional": bool(item.optional), "options": options}


def _output_entry(item) -> dict:
    extras = {k: v for k, v in item.as_dict().items() if k not in COSMETIC}
    return {"name": item.display_name or item.get_io_type(), "type": item.get_io_type(), **extras}


def node_entry(cls) -> dict:
    schema = cls.GET_SCHEMA()
    return {"inputs": [_input_entry(i) for i in schema.inputs],
            "outputs": [_output_entry(o) for o in schema.outputs],
            "deprecated": bool(schema.is_deprecated)}


def current() -> dict[str, dict]:
    """Every node of the pack, loaded on the stand-ins with an empty models folder (so combos listed
    from files on disk are the same on every machine), by node id, sorted."""
    with tempfile.TemporaryDirectory() as models:
        harness.load_pack(Path(models))
        try:
            nodes = harness.pack_module("nodes.extension").NODES
            entries = {cls.GET_SCHEMA().node_id: node_entry(cls) for cls in nodes}
        finally:
            harness.unload_pack()
    return dict(sorted(entries.items()))


def load(path: Path = SNAPSHOT) -> dict[str, dict]:
    return json.loads(path.read_text(encoding="utf-8"))["nodes"]


def write(nodes: dict[str, dict], path: Path = SNAPSHOT) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"about": "Schema contract of every node; see tests/support/schema_snapshot.py. "
                         "Regenerate: python -m tests.support.schema_snapshot --update",
                "nodes": nodes}
    path.write_text(_one_entry_per_line(document), encoding="utf-8")


def _one_entry_per_line(document: dict) -> str:
    """JSON with one input or output per line, so a change reads as a one-line diff."""
    lines = ["{", f' "about": {json.dumps(document["about"])},', ' "nodes": {']
    for n, (node_id, entry) in enumerate(document["nodes"].items()):
        lines.append(f"  {json.dumps(node_id)}: {{")
        for key in ("inputs", "outputs"):
            items = [f"    {json.dumps(item)}" for item in entry[key]]
            lines.append(f'   "{key}": [' + ("\n" + ",\n".join(items) + "\n   ]," if items else "],"))
        lines.append(f'   "deprecated": {json.dumps(entry["deprecated"])}')
        lines.append("  }" + ("," if n < len(document["nodes"]) - 1 else ""))
    lines += [" }", "}"]
    return "\n".join(lines) + "\n"


def _widened(key: str, before, after) -> bool:
    """A number input's max raised or min lowered: every value a saved workflow holds stays valid."""
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (before, after)):
        return False
    return (key == "max" and after > before) or (key == "min" and after < before)


def _option_changes(where: str, old: dict, new: dict) -> tuple[list[str], list[str]]:
    breaking, allowed = [], []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        if key == "options" and isinstance(before, list) and isinstance(after, list) \
                and after[:len(before)] == before:
            allowed.append(f"{where}: options {after[len(before):]} appended")
        elif _widened(key, before, after):  # every saved value stays valid
            allowed.append(f"{where}: {key} {before!r} -> {after!r} (range widened)")
        else:
            breaking.append(f"{where}: {key} {before!r} -> {after!r}")
    return breaking, allowed


def _input_changes(node_id: str, old: list[dict], new: list[dict]) -> tuple[list[str], list[str]]:
    breaking, allowed = [], []
    new_ids = [i["id"] for i in new]
    for index, before in enumerate(old):
        where = f"{node_id}.{before['id']}"
        if before["id"] not in new_ids:
            breaking.append(f"{where}: input removed or renamed (inputs now {new_ids})")
            continue
        if new_ids.index(before["id"]) != index:
            breaking.append(f"{where}: input moved from position {index} to {new_ids.index(before['id'])}")
        after = new[new_ids.index(before["id"])]
        if after["type"] != before["type"]:
            breaking.append(f"{where}: type {before['type']} -> {after['type']}")
        if after["optional"] != before["optional"]:
            breaking.append(f"{where}: optional {before['optional']} -> {after['optional']} (moves it "
                            f"between the required and the optional widgets)")
        more_breaking, more_allowed = _option_changes(where, before["options"], after["options"])
        breaking += more_breaking
        allowed += more_allowed
    old_ids = {i["id"] for i in old}
    for after in new[len(old):]:
        if after["id"] in old_ids:
            continue  # reported above as moved
        if after["optional"]:
            allowed.append(f"{node_id}.{after['id']}: optional input appended")
        else:
            breaking.append(f"{node_id}.{after['id']}: new REQUIRED input (append it with optional=True)")
    for after in new[:len(old)]:
        if after["id"] not in old_ids:
            breaking.append(f"{node_id}.{after['id']}: input inserted before old inputs (append it at the end)")
    if breaking:
        breaking.append(f"{node_id}: inputs were {[i['id'] for i in old]}, now {new_ids}")
    return breaking, allowed


def _output_changes(node_id: str, old: list[dict], new: list[dict]) -> tuple[list[str], list[str]]:
    breaking = [f"{node_id} output {index}: {before} -> {new[index] if index < len(new) else 'removed'}"
                for index, before in enumerate(old) if index >= len(new) or new[index] != before]
    allowed = [f"{node_id} output {index} ({after['name']}: {after['type']}) appended"
               for index, after in enumerate(new[len(old):], start=len(old))]
    return breaking, allowed


def compare(old: dict[str, dict], new: dict[str, dict]) -> tuple[list[str], list[str]]:
    """(breaking, allowed) differences from the snapshot ``old`` to the schemas ``new``."""
    breaking, allowed = [], []
    for node_id, before in old.items():
        if node_id not in new:
            breaking.append(f"{node_id}: node removed (keep it registered with is_deprecated=True)")
            continue
        after = new[node_id]
        for found_breaking, found_allowed in (_input_changes(node_id, before["inputs"], after["inputs"]),
                                              _output_changes(node_id, before["outputs"], after["outputs"])):
            breaking += found_breaking
            allowed += found_allowed
        if after["deprecated"] != before["deprecated"]:
            allowed.append(f"{node_id}: deprecated {before['deprecated']} -> {after['deprecated']}")
    allowed += [f"{node_id}: new node" for node_id in new if node_id not in old]
    return breaking, allowed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compare the node schemas with tests/schemas/nodes.json.")
    parser.add_argument("--update", action="store_true", help="write the current schemas to the snapshot "
                        "(refused while a change would break saved workflows)")
    parser.add_argument("--force", action="store_true", help="with --update: write even a breaking change "
                        "(only for a change made on purpose, e.g. a node that never shipped)")
    parser.add_argument("--snapshot", type=Path, default=SNAPSHOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    now = current()
    breaking, allowed = compare(load(args.snapshot), now) if args.snapshot.exists() else ([], ["no snapshot yet"])
    for line in allowed:
        sys.stdout.write(f"allowed:  {line}\n")
    for line in breaking:
        sys.stdout.write(f"BREAKING: {line}\n")
    if breaking and not (args.update and args.force):
        sys.stdout.write("\n" + HOW_TO_SHIP + "\n")
        return 1
    if args.update:
        write(now, args.snapshot)
        sys.stdout.write(f"wrote {args.snapshot} ({len(now)} nodes)\n")
    elif allowed:
        sys.stdout.write("the snapshot is out of date: run with --update and commit tests/schemas/nodes.json\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
