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


# -- the library's folders and what each may import (their docstrings say the same) ------------------
#: folder -> the folders it may import (the package root, ``ingredients_core/__init__.py``, always).
ALLOWED = {
    "routing": set(),
    "model": {"routing"},
    "weights": {"model", "routing"},
    "encoders": {"weights", "model", "routing"},
    "faces": {"weights", "model", "routing"},
    "identity": {"faces", "weights", "model", "routing"},
    "sampling": {"encoders", "faces", "weights", "model", "routing"},
    "doctor": {"identity", "faces", "encoders", "weights", "model", "routing"},
    "testing": {"sampling", "identity", "encoders", "faces", "weights", "model", "routing"},
    "standalone": {"doctor", "testing", "sampling", "identity", "encoders", "faces", "weights", "model", "routing"},
}


def _pack_imports() -> dict[str, set[str]]:
    """Module -> the pack modules it imports (top level and inside functions), from the source."""
    import ast

    graph: dict[str, set[str]] = {}
    for root in ("ingredients_core", "nodes"):
        for path in sorted((REPO / root).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            package = parts[:-1]
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found = graph.setdefault(name, set())
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.level:
                    base = package[:len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
                    targets = [".".join(base)] + [".".join(base + [a.name]) for a in node.names]
                    found.update(t for t in targets if _is_module(t))
                elif isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                    found.update(n for n in names if n.split(".")[0] == "ingredients_core" and _is_module(n))
            found.discard(name)
    return graph


def _is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_library_folders_import_only_the_folders_below_them():
    offenders = []
    for module, targets in _pack_imports().items():
        parts = module.split(".")
        if parts[0] != "ingredients_core" or len(parts) < 3:
            continue
        for target in targets:
            tparts = target.split(".")
            if tparts[0] != "ingredients_core" or len(tparts) < 2 or tparts[1] == parts[1]:
                continue
            if tparts[1] not in ALLOWED.get(parts[1], set()):
                offenders.append(f"{module} -> {target}")
    assert not offenders, "a library folder imports one it may not (see its docstring): " + ", ".join(offenders)


def test_every_library_folder_says_what_lives_there():
    folders = sorted(p.parent.name for p in (REPO / "ingredients_core").glob("*/__init__.py"))
    assert sorted(ALLOWED) == folders
    for folder in folders:
        doc = (REPO / "ingredients_core" / folder / "__init__.py").read_text(encoding="utf-8")
        assert doc.startswith('"""') and "import" in doc, f"ingredients_core/{folder}/__init__.py: no docstring"
    top = sorted(p.name for p in (REPO / "ingredients_core").glob("*.py"))
    assert top == ["__init__.py", "__main__.py"], top


#: ComfyUI's own top-level modules (``nodes`` is ComfyUI's, imported absolutely; the pack's is relative).
COMFYUI_MODULES = {"comfy", "folder_paths", "node_helpers", "latent_preview", "server", "execution", "nodes"}


def _absolute_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in a file, at the top or inside a function."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.append((node.lineno, node.module or ""))
    return found


def _is_comfyui(module: str) -> bool:
    top = module.split(".")[0]
    return top in COMFYUI_MODULES or (top.startswith("comfy_") and top != "comfy_api")  # comfy_extras, ...


def test_only_the_host_room_meets_comfyui():
    """ComfyUI is imported under ``nodes/host/`` only; the other node files reach it through the room's
    interface (``nodes.host``, not its files) and the V3 schema (``comfy_api``)."""
    offenders = []
    for path in sorted((REPO / "nodes").rglob("*.py")):
        where = path.relative_to(REPO)
        in_room = where.parts[:2] == ("nodes", "host")
        if not in_room:
            offenders.extend(f"{where}:{line} imports {module}" for line, module in _absolute_imports(path)
                             if _is_comfyui(module))
    for module, targets in _pack_imports().items():
        if module.startswith("nodes.") and not module.startswith("nodes.host"):
            offenders.extend(f"{module} imports {t} (use nodes.host)" for t in targets if t.startswith("nodes.host."))
    assert not offenders, "ComfyUI outside nodes/host/: " + ", ".join(offenders)


def test_no_import_circles_in_the_pack():
    graph = _pack_imports()
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert not circles, f"import circles: {circles}"
