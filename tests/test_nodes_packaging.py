"""Packaging of the node pack: pyproject for the Comfy Registry, requirements, web extension."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]


def requirement_lines() -> list[str]:
    lines = (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_pyproject_mirrors_requirements_and_names_the_registry_entry():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["name"] == "comfyui-ingredients"
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["project"]["version"])
    assert project["project"]["description"] and project["project"]["license"]
    assert sorted(project["project"]["dependencies"]) == sorted(requirement_lines())
    assert not any(re.match(r"torch(vision)?\b", dep) for dep in project["project"]["dependencies"])
    comfy = project["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["Icon"].endswith("web/icon.svg")
    assert "web" not in comfy  # WEB_DIRECTORY in __init__.py already serves web/; both would load it twice
    assert (REPO / "web" / "icon.svg").is_file()


def test_root_package_exports_only_the_v3_entry_point():
    source = (REPO / "__init__.py").read_text(encoding="utf-8")
    assert "NODE_CLASS_MAPPINGS =" not in source and "def comfy_entrypoint" in source
    assert re.search(r'^WEB_DIRECTORY = "\./web"$', source, re.M)


def test_only_the_host_room_imports_comfyui():
    comfy_modules = re.compile(r"^\s*(import|from)\s+(comfy\b|folder_paths|latent_preview|node_helpers|server|nodes\b)",
                               re.M)
    for path in sorted((REPO / "nodes").rglob("*.py")):
        found = comfy_modules.findall(path.read_text(encoding="utf-8"))
        assert not found or path.parent.name == "host", f"{path.relative_to(REPO)} imports ComfyUI: {found}"


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js not installed")
def test_web_extension_is_valid_javascript():
    for path in (REPO / "web").glob("*.js"):
        subprocess.run(["node", "--check", str(path)], check=True)
