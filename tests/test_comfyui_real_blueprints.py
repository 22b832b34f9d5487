"""The pack's subgraph blueprints in a real ComfyUI (issue 22 item 1).

Runs where ``COMFYUI_PATH`` is set (see test_comfyui_real). On a ComfyUI with a subgraph manager
(0.33): ``/global_subgraphs`` lists every ``subgraphs/*.json`` of the pack and serves it as it is; the
real frontend (Debian chromium + pip playwright) shows each in its node library, places it as the node
library does, wires photos (and masks) to it and a *Save Video* to its VIDEO, converts the graph to an
API prompt (the same one ``blueprint_tools.to_api`` makes), and ComfyUI runs that prompt on the tiny
models to a saved video. On an older ComfyUI (0.3.64: no subgraph manager) the folder is ignored: no
error in the log, every pack node registers.
"""

from __future__ import annotations

import json

import pytest
from test_comfyui_real import COMFYUI, TINY_SAMPLER

from tools import blueprint_frontend  # noqa: E402
from tests.support import blueprint_tools, registry_metadata  # noqa: E402
from tools import frontend  # noqa: E402
from tests.support import harness  # noqa: E402
from tests.real_comfyui import real_server  # noqa: E402
from tests.real_comfyui.real_server import Server  # noqa: E402


pytestmark = pytest.mark.skipif(not COMFYUI, reason="COMFYUI_PATH is not set (see test_comfyui_real)")
BLUEPRINTS = sorted((harness.REPO / "subgraphs").glob("*.json"))
PACK = "ComfyUI-Ingredients"  # the name of the symlink in custom_nodes (_base_directory)
LIBRARY_CATEGORY = "Subgraph Blueprints/Video generation and editing/Image to video"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from ingredients_core.testing import tiny_models

    root = tmp_path_factory.mktemp("comfyui_blueprints")
    tiny_models.make_tiny_model_folder(root / "models" / "ingredients" / "Ingredients")
    real_server.base_directory(root / "base")
    server = Server(root)
    server.start()
    yield server
    server.stop()


def _has_subgraph_manager(server: Server) -> bool:
    version = server.get("/system_stats")["system"]["comfyui_version"]
    return tuple(int(part) for part in version.split(".")[:2]) >= (0, 33)


def test_older_comfyui_ignores_the_folder_without_an_error(server):
    if _has_subgraph_manager(server):
        pytest.skip("this ComfyUI serves blueprints (the other tests here)")
    definitions = server.get("/object_info")
    assert registry_metadata.pack_node_types() <= set(definitions)
    log = server.log()
    assert "IMPORT FAILED" not in log and "Traceback" not in log and "subgraph" not in log.lower(), log[-4000:]


@pytest.fixture(scope="module")
def listed(server) -> dict:
    if not _has_subgraph_manager(server):
        pytest.skip("this ComfyUI has no subgraph manager (0.33 and later)")
    return {k: v for k, v in server.get("/global_subgraphs").items() if v["source"] == "custom_node"}


def test_global_subgraphs_lists_and_serves_every_blueprint(server, listed):
    assert sorted(v["name"] for v in listed.values()) == sorted(p.stem for p in BLUEPRINTS)
    for key, entry in listed.items():
        assert entry["info"] == {"node_pack": f"custom_nodes.{PACK}"} and "path" not in entry, entry
        served = server.get(f"/global_subgraphs/{key}")
        assert served["data"] == (harness.REPO / "subgraphs" / f"{entry['name']}.json").read_text(encoding="utf-8")
    assert "Traceback" not in server.log()


def _outer(graph: dict) -> tuple[list[dict], list[tuple]]:
    """A Load Image per photo input (person_N.png), a Solid Mask per mask input, Save Video on VIDEO."""
    nodes = [dict(key="save", type="SaveVideo", pos=[1100, 0], widgets=dict(filename_prefix="Ingredients_blueprint"))]
    links = [("blueprint", "VIDEO", "save", "video")]
    for i, exposed in enumerate(graph["inputs"]):
        key = f"outer_{i}"
        if exposed["type"] == "IMAGE":
            nodes.append(dict(key=key, type="LoadImage", pos=[0, 400 * i],
                              widgets=dict(image=f"person_{exposed['name'].split('_')[-1]}.png")))
            links.append((key, "IMAGE", "blueprint", exposed["name"]))
        elif exposed["type"] == "MASK":
            nodes.append(dict(key=key, type="SolidMask", pos=[0, 400 * i], widgets=dict(value=1.0, width=96, height=64)))
            links.append((key, "MASK", "blueprint", exposed["name"]))
    return nodes, links


def _placed_prompt(page, node_type: str, blueprint: dict, definitions: dict) -> tuple[dict, dict]:
    """The frontend's API prompt of the placed blueprint and ours for it (blueprint_tools.to_api)."""
    graph = blueprint_tools.subgraph(blueprint)
    nodes, links = _outer(graph)
    placed = blueprint_frontend.place(page, node_type, nodes, links, {})
    assert [(i, label) for i, label, _ in placed["inputs"]] == [(x["name"], x["label"]) for x in graph["inputs"]]
    assert placed["outputs"] == [["VIDEO", "VIDEO"]]
    output = placed["output"]
    for entry in output.values():
        entry.pop("_meta", None)
    prefix = next(k for k in output if ":" in k).split(":")[0]
    ours = blueprint_tools.to_api(dict(blueprint, nodes=[dict(blueprint["nodes"][0], id=prefix)]), definitions)
    return output, ours


def _run(server: Server, prompt: dict) -> None:
    for node in prompt.values():
        if node["class_type"] == "IngredientsSampler":
            node["inputs"].update(TINY_SAMPLER)
    status, answer = server.post_prompt(prompt)
    assert status == 200 and not answer.get("node_errors"), answer
    entry = server.wait_for(answer["prompt_id"])
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    saver = next(k for k, v in prompt.items() if v["class_type"] == "SaveVideo")
    saved = entry["outputs"][saver]["images"][0]
    assert (server.base / "output" / saved["subfolder"] / saved["filename"]).stat().st_size > 0


@pytest.mark.skipif(not frontend.available(), reason="needs Debian chromium (/usr/bin/chromium) and pip playwright")
def test_the_frontend_places_each_blueprint_and_comfyui_runs_it_to_a_video(server, listed):
    definitions = server.get("/object_info")
    with frontend.open_comfyui(server.url) as (page, log):
        library = blueprint_frontend.library(page)
        for path in BLUEPRINTS:
            blueprint = json.loads(path.read_text(encoding="utf-8"))
            node_type, category = library[path.stem]
            assert category == LIBRARY_CATEGORY and node_type.startswith("SubgraphBlueprint."), library[path.stem]
            output, ours = _placed_prompt(page, node_type, blueprint, definitions)
            inner = {k: v for k, v in output.items() if k in ours}
            assert set(inner) == set(ours), (sorted(output), sorted(ours))
            for key, entry in ours.items():
                kept = {n: v for n, v in inner[key]["inputs"].items() if not isinstance(v, list) or ":" in v[0]}
                assert kept == entry["inputs"], (path.stem, key)
            faces = [v["inputs"]["image"] for v in inner.values() if v["class_type"] == "IngredientsEncodeFace"]
            assert {output[link[0]]["class_type"] for link in faces} == {"LoadImage"}
            _run(server, output)
        assert log.pack_errors() == []
