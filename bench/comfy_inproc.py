"""Real ComfyUI in-process for the benchmark scripts: no server, no frontend.

What ComfyUI's ``main.py`` does before it loads custom nodes, reduced to what the pack needs:

- ``use_bundle(folder)``: the GPU bundle of ``bench/prepare_gpu_bundle.sh`` (wheels unzipped into a
  site folder appended *after* the machine's own site-packages, so installed packages win, and the
  copy of ComfyUI's Python files);
- ``start_comfyui(path, flags)``: ComfyUI's tree first on ``sys.path``, its command-line flags
  (``--cpu``, ``--lowvram``, ``--use-sage-attention``, ...) parsed by its own ``comfy.cli_args``
  before ``comfy.model_management`` is imported (it reads them at import);
- ``load_pack()``: the repository root imported as a package, as ComfyUI imports a custom node
  folder, and its node classes by id.

Nothing heavy happens at import of this module.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import types
import zipfile
from pathlib import Path

logger = logging.getLogger("bench.comfy_inproc")

REPO = Path(__file__).resolve().parents[1]
PACK = "comfyui_ingredients"
DEFAULT_SITE = Path(os.environ.get("INGREDIENTS_BUNDLE_SITE", "/tmp/ingredients-gpu-site"))
#: Packages ComfyUI imports at start that this check never uses: a stand-in module is put in
#: their place when they are missing (the GPU machine has no ``av``; its 36 MB wheel does not fit
#: the 64 MiB that travel). Every use of a stand-in raises.
ABSENT_OK = ("av",)


# -- the bundle --------------------------------------------------------------------------------------
def install_wheels(wheels: Path, site: Path) -> Path:
    """Unzip every wheel in ``wheels`` into ``site`` (what ``pip install --no-deps --target``
    does for these wheels; no pip needed). Skipped when ``site`` already holds the same set."""
    names = sorted(p.name for p in wheels.glob("*.whl"))
    stamp = site / ".bundle-wheels"
    if stamp.is_file() and stamp.read_text().split("\n") == names:
        return site
    site.mkdir(parents=True, exist_ok=True)
    for name in names:
        with zipfile.ZipFile(wheels / name) as archive:
            for member in archive.infolist():
                target = _wheel_target(member.filename)
                if target is None:
                    continue
                dest = site / target
                if member.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(archive.read(member))
    stamp.write_text("\n".join(names))
    return site


def _wheel_target(name: str) -> str | None:
    """Where a wheel member goes in a site folder: ``X.data/purelib|platlib/...`` to the root,
    other ``.data`` parts (scripts, headers) nowhere."""
    first, _, rest = name.partition("/")
    if first.endswith(".data"):
        kind, _, path = rest.partition("/")
        return path if kind in ("purelib", "platlib") and path else None
    return name


def use_bundle(bundle: Path | None, site: Path = DEFAULT_SITE) -> dict:
    """Make the bundle's wheels importable (appended to ``sys.path``) and return
    ``{"site": ..., "comfyui": ...}`` (``comfyui``: the bundled ComfyUI copy, or None)."""
    info = {"site": None, "comfyui": None}
    if bundle is None:
        return info
    bundle = Path(bundle)
    if (bundle / "wheels").is_dir():
        site = install_wheels(bundle / "wheels", site)
        if str(site) not in sys.path:
            sys.path.append(str(site))
        importlib.invalidate_caches()
        info["site"] = str(site)
    if (bundle / "comfyui" / "comfy").is_dir():
        info["comfyui"] = str(bundle / "comfyui")
    return info


def stand_in_absent() -> list[str]:
    """Stand-in modules for the packages of :data:`ABSENT_OK` that are not installed: a finder
    at the end of ``sys.meta_path`` serves the package and any submodule of it (``av.container``,
    ``av.video.frame``, ...). Availability probes still see the package as missing: there is no
    distribution metadata behind it (diffusers checks ``importlib.metadata.version``)."""
    placed = [name for name in ABSENT_OK if importlib.util.find_spec(name) is None]
    if placed and not any(isinstance(f, _StandInFinder) for f in sys.meta_path):
        sys.meta_path.append(_StandInFinder(placed))
    return placed


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, packages: list[str]):
        self.packages = tuple(packages)

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.packages:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__getattr__ = _absent_attribute(spec.name)  # type: ignore[attr-defined]
        return module

    def exec_module(self, module) -> None:
        module.__path__ = []


class _Absent(type):
    """The type of stand-in names: any attribute is another stand-in (``av.video.reformatter.
    ColorTrc.BT709`` as a dict key at import), any call raises."""

    def __getattr__(cls, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _absent(f"{cls.__name__}.{attr}")

    def __call__(cls, *args, **kwargs):
        raise RuntimeError(f"{cls.__name__} is unusable: its package is not installed here (stand-in module)")


_ABSENT_NAMES: dict[str, type] = {}


def _absent(name: str) -> type:
    if name not in _ABSENT_NAMES:
        _ABSENT_NAMES[name] = _Absent(name, (), {})
    return _ABSENT_NAMES[name]


def _absent_attribute(package: str):
    """A module ``__getattr__`` giving stand-in names."""
    def attribute(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _absent(f"{package}.{attr}")

    return attribute


def python_flags() -> list[str]:
    """The interpreter flags of this process, for subprocesses run the same way (``-S``, ``-I``...)."""
    flags = []
    for flag, on in (("-I", sys.flags.isolated), ("-E", sys.flags.ignore_environment and not sys.flags.isolated),
                     ("-S", sys.flags.no_site), ("-s", sys.flags.no_user_site and not sys.flags.isolated)):
        if on:
            flags.append(flag)
    return flags


# -- ComfyUI ---------------------------------------------------------------------------------------------
def resolve_comfyui(explicit: str | None, bundled: str | None) -> Path | None:
    """The ComfyUI tree to import: ``--comfyui``, else ``COMFYUI_PATH``, else the bundled copy."""
    for candidate in (explicit, os.environ.get("COMFYUI_PATH"), bundled):
        if candidate:
            path = Path(candidate).expanduser().resolve()
            if not (path / "comfy" / "model_management.py").is_file():
                raise FileNotFoundError(f"{path} is not a ComfyUI checkout (no comfy/model_management.py)")
            return path
    return None


def start_comfyui(path: Path, flags: list[str]):
    """Import ComfyUI from ``path`` with its command-line ``flags``; returns ``comfy.model_management``.

    Flags are parsed by ComfyUI's own parser (``comfy.options.enable_args_parsing`` with a
    temporary ``sys.argv``), exactly as ``main.py`` does, before anything reads them. Without a
    ``--base-directory`` a fresh temporary one is added (previews go to its temp/).
    """
    if "comfy" in sys.modules:
        raise RuntimeError("ComfyUI is already imported in this process; its flags are read once, at import")
    os.environ.setdefault("NUMBA_CACHE_DIR", "/tmp/numba-cache")  # ComfyUI 0.33 imports numba
    if not str(path).startswith(str(REPO)):
        sys.dont_write_bytecode = True  # never write into someone else's ComfyUI tree
    sys.path.insert(0, str(path))
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))  # after ComfyUI: its top-level ``nodes`` must win over the pack's
    import comfy.options

    comfy.options.enable_args_parsing()
    if "--base-directory" not in flags:  # ComfyUI writes temp/ and output/ below it: never into its tree
        flags = [*flags, "--base-directory", scratch_dir("ingredients-comfy-base-")]
    argv, sys.argv = sys.argv, ["main.py", *flags]
    try:
        import comfy.cli_args  # noqa: F401  (parses the flags)
    finally:
        sys.argv = argv
    import comfy.model_management as mm

    return mm


def scratch_dir(prefix: str) -> str:
    """A temporary folder removed when the process ends."""
    folder = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def comfyui_version(path: Path) -> str:
    version = path / "comfyui_version.py"
    if version.is_file():
        for line in version.read_text(encoding="utf-8").splitlines():
            if line.startswith("__version__"):
                return line.split("=", 1)[1].strip().strip("\"'")
    return "unknown"


def load_pack() -> tuple[types.ModuleType, dict]:
    """Import the repository root as the package :data:`PACK` (ComfyUI's way) and return it with
    its nodes by id, after the extension registered its model folders."""
    if PACK in sys.modules:
        module = sys.modules[PACK]
    else:
        spec = importlib.util.spec_from_file_location(PACK, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK] = module
        spec.loader.exec_module(module)
    extension = asyncio.run(module.comfy_entrypoint())
    nodes = asyncio.run(extension.get_node_list())
    return module, {cls.GET_SCHEMA().node_id: cls for cls in nodes}


def pack_module(name: str) -> types.ModuleType:
    """A submodule of the loaded pack, e.g. ``pack_module("nodes.host")``."""
    return importlib.import_module(f"{PACK}.{name}")


def tiny_models() -> types.ModuleType:
    """``tests/comfy_stubs/tiny_models.py``, imported by path (its folder also holds ComfyUI
    stand-ins, which must never shadow the real ComfyUI)."""
    name = "ingredients_bench_tiny_models"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "comfy_stubs" / "tiny_models.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def missing_modules(names: list[str]) -> list[str]:
    """Which of the top-level modules ``names`` cannot be found on this ``sys.path``."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}"
