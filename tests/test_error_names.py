"""ComfyUI's UI names a node's exception ``module.qualname`` (``execution.full_type_name``, the same in
0.3.64 and 0.33.0), and loads the pack under its folder's path: the pack's own exception types carry
``__module__ = "Ingredients"`` so the UI shows ``Ingredients.SettingsError``, not a file-system path."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from tests.support import harness  # noqa: E402
from ingredients_core.testing import tiny_models  # noqa: E402


REPO = Path(__file__).resolve().parents[1]


def full_type_name(klass) -> str:
    """ComfyUI's ``execution.full_type_name`` (0.3.64 and 0.33.0)."""
    module = klass.__module__
    if module == "builtins":
        return klass.__qualname__
    return module + "." + klass.__qualname__


def _exception_classes() -> list[tuple[str, str]]:
    """(module, class) of every class in the pack's sources whose base names an Error/Exception."""
    found = []
    for path in sorted([*(REPO / "ingredients_core").rglob("*.py"), *(REPO / "nodes").rglob("*.py")]):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef) and any(
                    getattr(b, "id", getattr(b, "attr", "")).endswith(("Error", "Exception")) for b in node.bases):
                found.append((module, node.name))
    return found


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    with harness.pack_nodes(tiny_models.shared_models_dir(tmp_path_factory)):
        yield harness.PACK


def test_the_ui_names_every_pack_error_by_its_class(pack):
    classes = _exception_classes()
    assert len(classes) >= 12
    for module, name in classes:
        klass = getattr(importlib.import_module(f"{pack}.{module}"), name)
        assert full_type_name(klass) == f"Ingredients.{name}", (module, name)
        assert "/" not in full_type_name(klass) and pack not in full_type_name(klass)
