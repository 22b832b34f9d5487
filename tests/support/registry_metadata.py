"""Registry metadata (``properties.cnr_id`` / ``ver``) on the example workflows' nodes.

What ComfyUI-Manager's frontend extension writes on every node it creates, and what "install missing
nodes" reads back: for a pack installed from the Comfy Registry, ``cnr_id`` is the registry id (the
``[project] name`` of ``pyproject.toml``) and ``ver`` the installed version (its ``[project]
version``; a git clone gets the commit hash instead); ComfyUI's own nodes get ``cnr_id`` "comfy-core"
and ``ver`` the ComfyUI version. The frontend builds the examples without the Manager, so
``build_workflows.py`` stamps them with :func:`stamp`, and this script stamps existing files::

    python -m tests.support.registry_metadata [--comfyui-version 0.3.64] [workflows/NAME.json ...]

(every workflow in ``workflows/`` when no file is named; the pack version from ``pyproject.toml``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from . import harness  # run as `python -m tests.support.registry_metadata`, or imported by the tests
from . import workflow_tools

WORKFLOWS = harness.REPO / "workflows"
PYPROJECT = harness.REPO / "pyproject.toml"
CORE_ID = "comfy-core"
# The oldest ComfyUI the examples are checked on (DEVELOPERS.md); every core node they use is in it.
CORE_VERSION = "0.3.64"
# Nodes the frontend defines itself; the Manager files them under comfy-core too (python_module "nodes").
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


def pack_registry(path: Path = PYPROJECT) -> tuple[str, str]:
    """(registry id, version): ``[project] name`` and ``version`` of pyproject.toml."""
    text = path.read_text(encoding="utf-8")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the two plain keys of [project]
        section = text.split("[project]", 1)[1].split("\n[", 1)[0]
        found = dict(re.findall(r'^(name|version)\s*=\s*"([^"]+)"', section, flags=re.M))
        return found["name"], found["version"]
    project = tomllib.loads(text)["project"]
    return project["name"], project["version"]


def pack_node_types() -> set[str]:
    """The node ids the pack registers (loaded on the stand-ins)."""
    harness.load_pack(Path("/nonexistent"))
    try:
        return {cls.GET_SCHEMA().node_id for cls in harness.pack_module("nodes.extension").NODES}
    finally:
        harness.unload_pack()


def core_node_types() -> set[str]:
    return set(json.loads(workflow_tools.CORE_NODES.read_text(encoding="utf-8"))) | FRONTEND_ONLY


def stamp(workflow: dict, pack_types: set[str], core_version: str = CORE_VERSION) -> dict:
    """``workflow`` with cnr_id and ver in every node's properties (other properties kept, in order)."""
    cnr_id, version = pack_registry()
    core = core_node_types()
    for node in workflow["nodes"]:
        if node["type"] in pack_types:
            registry = {"cnr_id": cnr_id, "ver": version}
        elif node["type"] in core:
            registry = {"cnr_id": CORE_ID, "ver": core_version}
        else:
            raise ValueError(f"node {node['id']}: {node['type']} is neither a pack node nor a core node known to "
                             f"tests/support/core_nodes.json; add it there (with its inputs) first")
        properties = node.setdefault("properties", {})
        properties.update(registry)
    return workflow


def stamp_blueprint(blueprint: dict, pack_types: set[str], core_version: str = CORE_VERSION) -> dict:
    """A subgraph blueprint (``subgraphs/*.json``) stamped: every inner node as in :func:`stamp`, and the
    blueprint's own node (its type is the subgraph's id) as the pack's."""
    cnr_id, version = pack_registry()
    for subgraph in blueprint["definitions"]["subgraphs"]:
        stamp(subgraph, pack_types, core_version)
    for node in blueprint["nodes"]:
        node.setdefault("properties", {}).update(cnr_id=cnr_id, ver=version)
    return blueprint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write cnr_id/ver into example workflows.")
    parser.add_argument("files", nargs="*", type=Path, help="workflow files (default: every workflows/*.json)")
    parser.add_argument("--comfyui-version", default=CORE_VERSION, help="ver of ComfyUI's own nodes")
    args = parser.parse_args(argv)
    pack_types = pack_node_types()
    for path in args.files or sorted(WORKFLOWS.glob("*.json")):
        workflow = stamp(json.loads(path.read_text(encoding="utf-8")), pack_types, args.comfyui_version)
        path.write_text(json.dumps(workflow, indent=2) + "\n", encoding="utf-8")
        sys.stdout.write(f"stamped {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
