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
def nodes(tmp_path_factory):
    """The pack's nodes, loaded on the ComfyUI stand-ins with the shared tiny model folder (one load per
    test module; a module that defines its own ``nodes`` keeps it)."""
    from ingredients_core.testing import tiny_models
    from tests.support import harness

    with harness.pack_nodes(tiny_models.shared_models_dir(tmp_path_factory)) as loaded_nodes:
        yield loaded_nodes


@pytest.fixture(scope="module")
def loaded(request, nodes):
    """Load Ingredients Model's outputs on the tiny model, with the module's ``ROUTING_MODE`` (default
    ``official``) as the loader's routing mode."""
    from tests.support import harness

    return harness.model_outputs(nodes, getattr(request.module, "ROUTING_MODE", "official"))
