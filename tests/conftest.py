"""Shared fixtures: paths to the golden data and tiny models built on the fly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("INGREDIENTS_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "golden"
T5_TOKENIZER = SHARED / "data" / "t5_tokenizer" / "tokenizer.json"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not (GOLDEN / "keys.json").is_file():
        pytest.skip(f"golden data not found at {GOLDEN} (it lives in ../shared/golden beside the repo, "
                    "present in CI; set INGREDIENTS_SHARED to point elsewhere)")
    return GOLDEN


@pytest.fixture(scope="session")
def t5_tokenizer_file() -> Path:
    """The real T5 v1.1 fast-tokenizer JSON in ../shared/data (present in CI)."""
    if not T5_TOKENIZER.is_file():
        pytest.skip(f"real T5 tokenizer not found at {T5_TOKENIZER} (it lives in ../shared/data beside the repo, "
                    "present in CI; set INGREDIENTS_SHARED to point elsewhere)")
    return T5_TOKENIZER


@pytest.fixture(scope="session")
def tiny_transformer_dir(tmp_path_factory) -> Path:
    from ingredients_core.testing.tiny_transformer import write_tiny_transformer

    root = tmp_path_factory.mktemp("tiny_transformer")
    write_tiny_transformer(root)
    return root


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """A models folder of the test module's own (``ingredients/Ingredients``: the tiny model, a face
    detector that finds faces), for modules that add or change files in it."""
    from ingredients_core.testing import tiny_models

    root = tmp_path_factory.mktemp("comfy_models")
    tiny_models.make_tiny_model_folder(root / "ingredients" / "Ingredients")
    return root


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """The pack's nodes, loaded on the ComfyUI stand-ins with the shared tiny model folder (one load per
    test module; a module that defines its own ``nodes`` keeps it)."""
    from ingredients_core.testing import tiny_models
    from tests.support import harness

    with harness.pack_nodes(tiny_models.shared_models_dir(tmp_path_factory)) as loaded_nodes:
        yield loaded_nodes


@pytest.fixture(scope="module")
def definitions(tmp_path_factory):
    """Every node's definition (ComfyUI's /object_info shape, plus the core nodes the examples use), for
    checking workflow and blueprint JSON without ComfyUI."""
    from tests.support import harness, workflow_tools

    with harness.pack_nodes(tmp_path_factory.mktemp("no_models")) as nodes:
        yield workflow_tools.node_definitions(list(nodes.values()))


@pytest.fixture(scope="module")
def loaded(request, nodes):
    """Load Ingredients Model's outputs on the tiny model, with the module's ``ROUTING_MODE`` (default
    ``official``) as the loader's routing mode."""
    from tests.support import harness

    return harness.model_outputs(nodes, getattr(request.module, "ROUTING_MODE", "official"))
