"""Build the pack's subgraph blueprints in ComfyUI's real frontend and write them to ``subgraphs/``.

Run by hand against a running ComfyUI 0.33 or later with the pack installed (a model folder named
``Ingredients``, e.g. the tiny one of ``tiny_models``, makes the loaders' lists non-empty)::

    python -m tools.build_blueprints http://127.0.0.1:8188 ["Two People to Video (Ingredients)" ...]

(only the named blueprints when names are given). For each spec of ``blueprint_specs`` the frontend
builds the nodes, converts them to a subgraph, exposes the inputs and the VIDEO output, and publishes
it (``blueprint_frontend.build_and_publish``), which saves it to the user's ``subgraphs/`` folder; this
script reads that file back through ``/api/userdata``, adds the category (frontend 1.49 keeps a
blueprint's ``category`` but does not write it) and the registry metadata (``registry_metadata``), and
writes ``subgraphs/NAME.json``. ComfyUI's ``/global_subgraphs`` serves them from the pack's folder.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from . import blueprint_frontend
from . import frontend
from tests.support import registry_metadata
from .blueprint_specs import BLUEPRINTS
from .build_workflows import _comfyui_version

SUBGRAPHS = Path(__file__).resolve().parents[1] / "subgraphs"


def _userdata(url: str, name: str, method: str = "GET") -> bytes | None:
    path = urllib.parse.quote(f"subgraphs/{name}.json", safe="")
    request = urllib.request.Request(f"{url}/api/userdata/{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise


def _finish(published: dict, spec: dict, pack_types: set[str], core_version: str) -> dict:
    subgraph = published["definitions"]["subgraphs"][0]
    subgraph["category"] = spec["category"]
    return registry_metadata.stamp_blueprint(published, pack_types, core_version)


def main(url: str, names: list[str]) -> int:
    pack_types, core_version = registry_metadata.pack_node_types(), _comfyui_version(url)
    chosen = {name: spec for name, spec in BLUEPRINTS.items() if not names or name in names}
    for name in chosen:
        _userdata(url, name, "DELETE")  # publishing over an existing one asks for confirmation
    SUBGRAPHS.mkdir(exist_ok=True)
    with frontend.open_comfyui(url) as (page, log):
        for name, spec in chosen.items():
            blueprint_frontend.build_and_publish(page, spec)
            published = _userdata(url, name)
            if published is None:
                sys.stderr.write(f"{name}: the frontend did not publish it\n")
                return 1
            blueprint = _finish(json.loads(published), spec, pack_types, core_version)
            target = SUBGRAPHS / f"{name}.json"
            target.write_text(json.dumps(blueprint, indent=2) + "\n", encoding="utf-8")
            inner = blueprint["definitions"]["subgraphs"][0]
            sys.stdout.write(f"wrote {target}: {len(inner['nodes'])} nodes, {len(inner['inputs'])} inputs\n")
    return log.exit_status()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8188", sys.argv[2:]))
