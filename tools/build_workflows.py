"""Build the example workflows in ComfyUI's real frontend and write them to ``workflows/``.

Run by hand against a running ComfyUI with the pack installed (any model folder named
``Ingredients`` makes the loaders' lists non-empty; the tiny one from ``tiny_models`` will do)::

    python -m tools.build_workflows http://127.0.0.1:8188 [NAME.json ...]

(only the named examples when names are given).

The frontend itself creates the nodes, sets the widgets, connects them and serialises the graph,
so the files are exactly what the current frontend saves; then every node gets the registry
metadata ComfyUI-Manager would add (``registry_metadata.stamp``: cnr_id and ver of the pack, or
comfy-core and this ComfyUI's version). The video is saved with SaveAnimatedWEBP,
whose inputs are the same in ComfyUI 0.3.64 and 0.33 (CreateVideo and SaveVideo changed between
them); CreateVideo + SaveVideo take the frames just as well (``nodes``, ``links``, ``widgets_values``
with the hidden control value after the seed).
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

from . import frontend
from tests.support import registry_metadata
from .native_workflows import ksampler_spec, long_video_spec, lora_easycache_spec
from .sampler_workflows import ONE_WOMAN, TWO_MEN, sampler_spec, three_ids_masks_spec, two_ids_checked_spec

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
EXAMPLES = {
    "ingredients_one_id.json": sampler_spec(1, ONE_WOMAN),
    "ingredients_two_ids.json": sampler_spec(2, TWO_MEN),
    "ingredients_two_ids_identity_check.json": two_ids_checked_spec(),
    "ingredients_three_ids_masks.json": three_ids_masks_spec(),
    "ingredients_two_ids_ksampler.json": ksampler_spec(TWO_MEN),
    "ingredients_two_ids_lora_easycache.json": lora_easycache_spec(TWO_MEN),
    "ingredients_two_ids_long_video.json": long_video_spec(TWO_MEN),
}


def _comfyui_version(url: str) -> str:
    with urllib.request.urlopen(url + "/system_stats", timeout=30) as response:
        return json.loads(response.read())["system"]["comfyui_version"]


def main(url: str, names: list[str]) -> int:
    pack_types, core_version = registry_metadata.pack_node_types(), _comfyui_version(url)
    with frontend.open_comfyui(url) as (page, log):
        for name, spec in EXAMPLES.items():
            if names and name not in names:
                continue
            workflow, _ = frontend.build(page, spec)
            registry_metadata.stamp(workflow, pack_types, core_version)
            (WORKFLOWS / name).write_text(json.dumps(workflow, indent=2) + "\n", encoding="utf-8")
            counts = f"{len(workflow['nodes'])} nodes, {len(workflow['links'])} links"
            sys.stdout.write(f"wrote {WORKFLOWS / name}: {counts}\n")
    return log.exit_status()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8188", sys.argv[2:]))
