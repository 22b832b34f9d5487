"""Registry metadata: the example workflows name the pack as the registry knows it, in one version.

Every pack node in workflows/ carries ``properties.cnr_id`` = ``[project] name`` and ``ver`` =
``[project] version`` of pyproject.toml (ComfyUI-Manager's form for a registry install), every core
node "comfy-core" and a ComfyUI version; the version in pyproject.toml, in the README and in the
library (``ingredients_core.__version__``) is the same; each workflow has its template-browser
thumbnail beside it (``NAME.jpg``: the frontend asks for ``/api/workflow_templates/PACK/NAME.jpg``).
"""

from __future__ import annotations

import json
import re
import sys

import pytest
from PIL import Image

import ingredients_core

from tests.support import harness  # noqa: E402
from tests.support import registry_metadata  # noqa: E402


WORKFLOWS = sorted((harness.REPO / "workflows").glob("*.json"))
SEMVER = re.compile(r"^\d+\.\d+\.\d+$")
THUMBNAIL_BYTES = 100_000


@pytest.fixture(scope="module")
def pack_types() -> set[str]:
    return registry_metadata.pack_node_types()


def test_pyproject_names_the_registry_id_and_a_version():
    cnr_id, version = registry_metadata.pack_registry()
    assert cnr_id == "comfyui-ingredients" and SEMVER.match(version), (cnr_id, version)


def test_the_310_fallback_reads_the_same_name_and_version(monkeypatch):
    monkeypatch.setitem(sys.modules, "tomllib", None)  # import tomllib raises ModuleNotFoundError
    fallback = registry_metadata.pack_registry()
    monkeypatch.undo()
    assert fallback == registry_metadata.pack_registry()


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_node_carries_its_registry_id_and_version(path, pack_types):
    cnr_id, version = registry_metadata.pack_registry()
    nodes = json.loads(path.read_text(encoding="utf-8"))["nodes"]
    assert any(n["type"] in pack_types for n in nodes)
    for node in nodes:
        properties, label = node.get("properties", {}), f"{path.name} node {node['id']} ({node['type']})"
        if node["type"] in pack_types:
            assert (properties.get("cnr_id"), properties.get("ver")) == (cnr_id, version), label
        else:
            assert properties.get("cnr_id") == "comfy-core" and SEMVER.match(properties.get("ver", "")), label


def test_pyproject_readme_and_library_agree_on_the_version():
    _, version = registry_metadata.pack_registry()
    assert ingredients_core.__version__ == version
    readme = (harness.REPO / "README.md").read_text(encoding="utf-8")
    stated = re.findall(r"This is version \*\*([\d.]+)\*\* of the pack, `([a-z0-9-]+)` in the Comfy Registry", readme)
    assert stated == [(version, registry_metadata.pack_registry()[0])], stated


def test_stamp_refuses_a_node_it_cannot_place(pack_types):
    workflow = {"nodes": [{"id": 1, "type": "VHS_VideoCombine", "properties": {}}]}
    with pytest.raises(ValueError, match="VHS_VideoCombine is neither a pack node nor a core node"):
        registry_metadata.stamp(workflow, pack_types)


def test_stamp_keeps_other_properties_and_is_idempotent(pack_types):
    path = harness.REPO / "tests" / "fixtures" / "workflows" / "ingredients_two_ids.json"
    saved = json.loads(path.read_text(encoding="utf-8"))
    stamped = registry_metadata.stamp(json.loads(path.read_text(encoding="utf-8")), pack_types)
    for before, after in zip(saved["nodes"], stamped["nodes"], strict=True):
        assert list(after["properties"])[:len(before["properties"])] == list(before["properties"])
        assert {k: v for k, v in after.items() if k != "properties"} == {k: v for k, v in before.items()
                                                                       if k != "properties"}
    assert registry_metadata.stamp(json.loads(json.dumps(stamped)), pack_types) == stamped


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_workflow_has_a_small_jpeg_thumbnail_beside_it(path):
    thumbnail = path.with_suffix(".jpg")
    assert thumbnail.exists(), f"no {thumbnail.name}: python -m tools.thumbnails URL (DEVELOPERS.md)"
    assert thumbnail.stat().st_size < THUMBNAIL_BYTES, f"{thumbnail.name}: {thumbnail.stat().st_size} bytes"
    with Image.open(thumbnail) as image:
        assert image.format == "JPEG" and image.width >= 400 and image.height >= 200, (image.format, image.size)


# -- what the Comfy Registry reads from [tool.comfy] and the classifiers -----------------------------------
#: comfy-cli's rules (comfy_cli/registry/config_parser.py): a field that breaks them is dropped with a
#: "Warning: Invalid ..." line, and `comfy node validate` still exits 0; so both are checked here.
REGISTRY_VERSION = re.compile(r"^(?:(==|>=|<=|!=|~=|>|<|<>|=)\s*)?(\d+\.\d+\.\d+(?:-[a-zA-Z0-9]+)?)?$")
REGISTRY_ACCELERATORS = {"GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc", "NPU :: Huawei Ascend",
                         "GPU :: Apple Metal"}
REGISTRY_OS = ("Microsoft", "POSIX", "MacOS", "OS Independent")
OLDEST_COMFYUI = "0.3.64"  # the oldest ComfyUI the pack is tested on (DEVELOPERS.md: 0.3.64 and 0.33.0)


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads(registry_metadata.PYPROJECT.read_text(encoding="utf-8"))


def test_registry_fields_follow_the_registry_rules():
    data = _pyproject()
    requires = data["tool"]["comfy"]["requires-comfyui"]
    assert requires == f">={OLDEST_COMFYUI}"
    assert all(REGISTRY_VERSION.match(part.strip()) for part in requires.split(","))
    classifiers = data["project"]["classifiers"]
    accelerators = [c[len("Environment :: "):] for c in classifiers if c.startswith("Environment ::")]
    assert accelerators == ["GPU :: NVIDIA CUDA"] and set(accelerators) <= REGISTRY_ACCELERATORS
    systems = [c[len("Operating System :: "):] for c in classifiers if c.startswith("Operating System :: ")]
    assert systems and all(s.startswith(REGISTRY_OS) for s in systems)


def _comfy_cli() -> str | None:
    """comfy-cli's ``comfy``: ``COMFY_CLI`` (what .ci/run installs in a venv of its own: its 340 MB of
    dependencies, ffmpeg and telemetry clients among them, stay out of the test requirements), else PATH."""
    import os
    import shutil

    return os.environ.get("COMFY_CLI") or shutil.which("comfy")


@pytest.mark.skipif(_comfy_cli() is None, reason="comfy-cli not installed (set COMFY_CLI; .ci/run does); "
                                                  "test_registry_fields_follow_the_registry_rules checks its rules")
def test_comfy_node_validate_passes(tmp_path):
    import subprocess

    result = subprocess.run([_comfy_cli(), "--skip-prompt", "--no-enable-telemetry", "node", "validate"],
                            cwd=harness.REPO, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "All validation checks passed" in output and "Warning" not in output, output


@pytest.mark.skipif(_comfy_cli() is None, reason="comfy-cli not installed (set COMFY_CLI; .ci/run does)")
def test_registry_archive_holds_what_users_run_and_nothing_of_the_developers(tmp_path):
    """``comfy node pack`` (git-tracked files minus ``.comfyignore``) on a copy of the working tree: the
    nodes, the library, workflows, blueprints and docs go in; tests, benches, tools and CI stay out."""
    import shutil
    import subprocess
    import zipfile

    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=harness.REPO,
                             capture_output=True, text=True, check=True).stdout.split("\n")
    copy = tmp_path / "pack"
    for name in filter(None, tracked):
        if (harness.REPO / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(harness.REPO / name, copy / name)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GIT_CONFIG_GLOBAL": "/dev/null"}
    for command in (["git", "init", "-q"], ["git", "add", "-A"]):
        subprocess.run(command, cwd=copy, check=True, env=env)
    result = subprocess.run([_comfy_cli(), "--skip-prompt", "--no-enable-telemetry", "node", "pack"], cwd=copy,
                            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    names = zipfile.ZipFile(copy / "node.zip").namelist()
    tops = {name.split("/")[0] for name in names}
    assert {"__init__.py", "nodes", "ingredients_core", "workflows", "subgraphs", "web", "docs", "README.md",
            "LICENSE", "pyproject.toml", "requirements.txt"} <= tops, sorted(tops)
    assert not tops & {"tests", "bench", "tools", ".ci", "DEVELOPERS.md", "requirements-test.txt"}, sorted(tops)
    assert "ingredients_core/testing/make_tiny.py" in names  # the demo (python -m ingredients_core demo) needs it
