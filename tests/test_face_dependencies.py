"""insightface, facexlib, consisid_eva_clip (and onnxruntime) missing or failing to import: the
pack still loads with every node, and each place that needs them gives one clear message
(the package, the import error, the pip command, the doctor): the face nodes and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ingredients_core.standalone import cli
from ingredients_core.faces import deps

from tests.support import harness  # noqa: E402
from ingredients_core.testing import tiny_models  # noqa: E402


PACKAGES = ("insightface", "facexlib", "consisid_eva_clip")
# What a broken install raises inside the package's own import (the numpy ones are what numpy's
# C-API check says when a compiled part was built against the other numpy major version).
FAILURES = {
    "missing": None,
    "blocked": "sys.modules",
    "numpy2-abi": ImportError("numpy.core.multiarray failed to import"),
    "numpy-array-api": AttributeError("_ARRAY_API not found"),
    "numpy-dtype-size": ValueError("numpy.dtype size changed, may indicate binary incompatibility. Expected 96 "
                                   "from C header, got 88 from PyObject"),
    "other": ImportError("cannot import name 'thing' from partially initialized module"),
}
NUMPY_FAILURES = ("numpy2-abi", "numpy-array-api", "numpy-dtype-size")
# The 15 nodes of the pack as released (more may be added; none may go missing).
RELEASED_NODES = {
    "IngredientsModelLoader", "IngredientsVAELoader", "IngredientsT5Loader", "IngredientsEncodePrompt",
    "IngredientsEncodePromptCLIP", "IngredientsFaceEncoderLoader", "IngredientsEncodeFace", "IngredientsIDList",
    "IngredientsFaceCanvas", "IngredientsProjectIDs", "IngredientsRouteIDs", "IngredientsSampler",
    "IngredientsDecode", "IngredientsRoutingMaps", "IngredientsIdentityCheck",
}


class _Broken(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``package`` first; it is not installed (``error`` None) or its ``__init__`` raises ``error``."""

    def __init__(self, package: str, error: BaseException | None):
        self.package, self.error = package, error

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.package:
            return None
        if self.error is None:  # what the import system says for a package that is not installed
            raise ModuleNotFoundError(f"No module named '{fullname}'", name=fullname)
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise self.error


@contextlib.contextmanager
def broken(package: str, failure: str) -> Iterator[None]:
    """While inside, importing ``package`` (or any module of it) fails as ``FAILURES[failure]``."""
    saved = {name: module for name, module in sys.modules.items()
             if name == package or name.startswith(package + ".")}
    for name in saved:
        del sys.modules[name]
    error = FAILURES[failure]
    finder = None
    if error == "sys.modules":
        sys.modules[package] = None  # the import system's own "halted; None in sys.modules"
    else:
        finder = _Broken(package, error)
        sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        if finder is not None:
            sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            del sys.modules[name]
        sys.modules.update(saved)


def _check_message(message: str, package: str, failure: str) -> None:
    assert "\n" not in message, message
    assert message.startswith(f"{package} cannot be imported ("), message
    error = FAILURES[failure]
    if isinstance(error, BaseException):
        assert f"{type(error).__name__}: {error}" in message, message
    else:
        assert "ModuleNotFoundError" in message and package in message, message
    assert "python -m ingredients_core doctor" in message and "Ingredients Check Install" in message, message
    requirement = deps.REQUIREMENTS[package]
    if failure in NUMPY_FAILURES:
        assert f"numpy {deps.numpy_version()}" in message and 'install "numpy' in message, message
        assert ("--no-build-isolation" in message) == (package == "insightface"), message
    elif failure == "other":
        assert f'--force-reinstall --no-deps "{requirement}"' in message, message
    else:
        assert f'python -m pip install "{requirement}" (with the Python that runs ComfyUI)' in message, message


# 1. the one place: require() and its message


def test_requirements_are_the_ones_in_requirements_txt():
    lines = {line.strip() for line in (harness.REPO / "requirements.txt").read_text().splitlines()}
    assert set(deps.REQUIREMENTS.values()) <= lines
    assert set(PACKAGES) <= set(deps.REQUIREMENTS)


@pytest.mark.parametrize("failure", list(FAILURES))
@pytest.mark.parametrize("package", PACKAGES)
def test_require_names_package_error_fix_and_doctor(package, failure):
    with broken(package, failure), pytest.raises(deps.FaceDependencyError) as caught:
        deps.require(f"{package}.anything" if failure == "missing" else package)
    assert caught.value.package == package and isinstance(caught.value, ImportError)
    _check_message(str(caught.value), package, failure)


@pytest.mark.parametrize("package", PACKAGES)
def test_require_gives_the_module_once_the_package_imports_again(package):
    with broken(package, "missing"), pytest.raises(deps.FaceDependencyError):
        deps.require(package)
    assert deps.require(package).__name__ == package


def test_numpy_fix_points_to_the_numpy_the_build_needs(monkeypatch):
    error = FAILURES["numpy2-abi"]
    monkeypatch.setattr(deps, "numpy_version", lambda: "2.1.3")
    assert 'pip install "numpy<2"' in deps.fix_for("insightface", error)
    monkeypatch.setattr(deps, "numpy_version", lambda: "1.26.4")
    assert 'pip install "numpy>=2"' in deps.fix_for("insightface", FAILURES["numpy-dtype-size"])


def test_only_the_face_packages_are_required():
    with pytest.raises(ValueError, match="not one of the face packages"):
        deps.require("torch")


def test_face_packages_are_imported_only_through_require():
    """No other import of these packages in the library or the nodes (deps.require is the guard)."""
    pattern = ("import insightface", "from insightface", "import facexlib", "from facexlib",
               "import consisid_eva_clip", "from consisid_eva_clip", "import onnxruntime", "from onnxruntime")
    for path in [*(harness.REPO / "ingredients_core").rglob("*.py"), *(harness.REPO / "nodes").glob("*.py")]:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            assert not line.strip().startswith(pattern), f"{path.name}:{number}: {line.strip()}"


# 2. the pack loads, every node registers


def _every_pack_module() -> list[str]:
    names = []
    for folder in ("nodes", "ingredients_core"):
        for path in sorted((harness.REPO / folder).rglob("*.py")):
            parts = path.relative_to(harness.REPO).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return tiny_models.shared_models_dir(tmp_path_factory)


@pytest.mark.parametrize("failure", ["missing", "blocked", "numpy-dtype-size"])
@pytest.mark.parametrize("package", PACKAGES)
def test_pack_loads_and_registers_every_node(package, failure, models_dir):
    with broken(package, failure):
        try:
            pack = harness.load_pack(models_dir)
            node_list = asyncio.run(asyncio.run(pack.comfy_entrypoint()).get_node_list())
            ids = {node.GET_SCHEMA().node_id for node in node_list}
            for name in _every_pack_module():  # no module of the pack imports a face package at import time
                harness.pack_module(name)
            assert package not in sys.modules or sys.modules[package] is None
        finally:
            harness.unload_pack()
    assert RELEASED_NODES <= ids, sorted(RELEASED_NODES - ids)
    assert len(ids) == len(node_list)


# 3. the face nodes


@pytest.fixture(scope="module")
def nodes(models_dir):
    pack = harness.load_pack(models_dir)
    asyncio.run(asyncio.run(pack.comfy_entrypoint()).get_node_list())
    yield {cls.GET_SCHEMA().node_id: cls for cls in harness.pack_module("nodes.extension").NODES}
    harness.unload_pack()


def _photo(seed: int) -> torch.Tensor:
    return torch.from_numpy(tiny_models.face_photo(seed)).float().div(255.0)[None]


@pytest.mark.parametrize("failure", ["missing", "numpy2-abi"])
@pytest.mark.parametrize("package", PACKAGES)
def test_face_encoder_loader_raises_the_message(nodes, package, failure):
    with broken(package, failure), pytest.raises(ImportError) as caught:
        nodes["IngredientsFaceEncoderLoader"].execute(model_folder="Ingredients", provider="auto")
    assert type(caught.value).__name__ == "FaceDependencyError"
    _check_message(str(caught.value), package, failure)


@pytest.fixture(scope="module")
def loaded(nodes):
    """A face encoder loaded while every package imports, and the IDs of one person."""
    encoder, = nodes["IngredientsFaceEncoderLoader"].execute(model_folder="Ingredients", provider="auto").args
    face, _ = nodes["IngredientsEncodeFace"].execute(face_encoder=encoder, image=_photo(1), face_choice="best",
                                                     face_index=0, min_face_size=0).args
    ids, = nodes["IngredientsIDList"].execute(face_1=face).args
    return encoder, ids


@pytest.mark.parametrize("package", ["facexlib", "onnxruntime"])
def test_encode_face_raises_the_message_when_a_package_breaks_after_loading(nodes, loaded, package):
    encoder, _ = loaded
    with broken(package, "missing"), pytest.raises(ImportError) as caught:
        nodes["IngredientsEncodeFace"].execute(face_encoder=encoder, image=_photo(2), face_choice="best",
                                               face_index=0, min_face_size=0)
    assert type(caught.value).__name__ == "FaceDependencyError" and caught.value.package == package
    assert "python -m ingredients_core doctor" in str(caught.value)


def test_identity_check_raises_the_message(nodes, loaded):
    encoder, ids = loaded
    frames = _photo(1).repeat(3, 1, 1, 1)
    with broken("facexlib", "numpy-array-api"), pytest.raises(ImportError) as caught:
        nodes["IngredientsIdentityCheck"].execute(face_encoder=encoder, ids=ids, frames=frames, frames_to_sample=3,
                                                  threshold=0.35)
    assert type(caught.value).__name__ == "FaceDependencyError"
    _check_message(str(caught.value), "facexlib", "numpy-array-api")


# 4. the command line: the same one line, exit code 1


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, models_dir):
    folder = tmp_path_factory.mktemp("face_dependencies_cli")
    photo = folder / "person.png"
    Image.fromarray(tiny_models.face_photo(1)).save(photo)
    video = folder / "video.webp"
    frames = [Image.fromarray(np.roll(tiny_models.face_photo(1), i, axis=1)) for i in range(3)]
    frames[0].save(video, save_all=True, append_images=frames[1:], duration=125, lossless=True)
    return dict(photo=photo, video=video, model=models_dir / "ingredients" / "Ingredients", out=folder / "out.mp4")


def _cli_commands(files) -> dict[str, list[str]]:
    return {
        "generate": ["generate", "--model", str(files["model"]), "--face", str(files["photo"]), "--prompt", "a man",
                     "--out", str(files["out"]), "--steps", "1", "--quiet"],
        "evaluate": ["evaluate", "--video", str(files["video"]), "--face", str(files["photo"]),
                     "--model", str(files["model"])],
    }


@pytest.mark.parametrize("command", ["generate", "evaluate"])
@pytest.mark.parametrize("package", PACKAGES)
def test_cli_says_it_in_one_line_and_exits_1(cli_files, command, package, capsys):
    with broken(package, "missing"):
        code = cli.main(_cli_commands(cli_files)[command])
    err = capsys.readouterr().err
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    _check_message(lines[0].removeprefix("error: "), package, "missing")
    assert not cli_files["out"].exists()
