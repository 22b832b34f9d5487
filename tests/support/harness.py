"""Load the pack the way ComfyUI does (the repository root as a package), on the stand-ins.

``load_pack()`` puts this folder first on ``sys.path`` (so ``comfy_api``, ``comfy``,
``folder_paths`` and ``latent_preview`` resolve to the stand-ins), points the stand-in
``folder_paths`` at ``models_dir`` and imports the repository root as the package ``PACK``.
``unload_pack()`` removes all of it from ``sys.modules`` again, so other test modules never see a
``comfy`` module.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STUBS = REPO / "tests" / "comfy_stubs"
PACK = "comfyui_ingredients_under_test"
STUB_MODULES = ("comfy_api", "comfy", "folder_paths", "latent_preview", "node_helpers")


def load_pack(models_dir: Path):
    """Import the pack (root ``__init__.py``) on the stand-ins; returns the package module."""
    if str(STUBS) not in sys.path:
        sys.path.insert(0, str(STUBS))
    folder_paths = importlib.import_module("folder_paths")
    folder_paths.reset(str(models_dir))
    spec = importlib.util.spec_from_file_location(PACK, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = module
    spec.loader.exec_module(module)
    return module


def unload_pack() -> None:
    for name in list(sys.modules):
        if name == PACK or name.startswith(PACK + ".") or name.split(".")[0] in STUB_MODULES:
            del sys.modules[name]
    if str(STUBS) in sys.path:
        sys.path.remove(str(STUBS))


def pack_module(name: str):
    """A submodule of the loaded pack, e.g. ``pack_module("nodes.loaders")``."""
    return importlib.import_module(f"{PACK}.{name}")


@contextlib.contextmanager
def pack_nodes(models_dir: Path):
    """The pack loaded on the stand-ins, its extension asked for its nodes (as ComfyUI does, which
    registers the model folders), yielding {node id: node class}; unloaded afterwards."""
    module = load_pack(models_dir)
    try:
        asyncio.run(asyncio.run(module.comfy_entrypoint()).get_node_list())
        yield {cls.GET_SCHEMA().node_id: cls for cls in pack_module("nodes.extension").NODES}
    finally:
        unload_pack()


def model_outputs(nodes: dict, routing_mode: str = "official", **inputs) -> dict:
    """Load Ingredients Model on the tiny folder in float32: {"payload": INGREDIENTS_MODEL, "model": MODEL}."""
    payload, model = nodes["IngredientsModelLoader"].execute(
        **({"model_folder": "Ingredients", "dtype": "float32", "routing_mode": routing_mode} | inputs)).args
    return dict(payload=payload, model=model)
