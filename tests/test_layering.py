"""The library never touches ComfyUI: checked in the source and at run time."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOST_MODULES = re.compile(r"^\s*(import|from)\s+(comfy\b|comfy_api\b|folder_paths\b|latent_preview\b|server\b|"
                          r"nodes\b|execution\b)", re.M)


def test_library_source_imports_no_comfyui_module():
    offenders = {}
    for path in sorted((REPO / "ingredients_core").rglob("*.py")):
        found = HOST_MODULES.findall(path.read_text(encoding="utf-8"))
        if found:
            offenders[str(path.relative_to(REPO))] = found
    assert not offenders, f"ingredients_core must not import ComfyUI: {offenders}"


def test_importing_every_library_module_loads_no_comfyui_module():
    modules = sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for p in (REPO / "ingredients_core").rglob("*.py") if p.name != "__main__.py")
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n    importlib.import_module(name)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'comfy', 'comfy_api', 'folder_paths', 'latent_preview', 'server', 'nodes', 'execution'})\n"
            "print(bad)\nsys.exit(1 if bad else 0)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
