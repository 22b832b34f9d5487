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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_start  # noqa: E402  (stdlib only at import)

logger = logging.getLogger("bench.comfy_inproc")

REPO = Path(__file__).resolve().parents[1]
PACK = "comfyui_ingredients"
DEFAULT_SITE = Path(os.environ.get("INGREDIENTS_BUNDLE_SITE", "/tmp/ingredients-gpu-site"))
#: Packages ComfyUI imports at start that this check never uses: a stand-in module is put in
#: their place when they are missing (the GPU machine has no ``av``; its 36 MB wheel does not fit
#: the 64 MiB that travel). Every use of a stand-in raises.
ABSENT_OK = ("av",)
#: Packages served from a stand-in *file* of bench/ when they are not installed; unlike the
#: :data:`ABSENT_OK` stand-ins these answer ComfyUI's availability probes ("unavailable") so it
#: takes its own fallbacks (comfy-kitchen: a 56 MiB wheel ComfyUI 0.33 imports at start).
FILE_STAND_INS = {"comfy_kitchen": Path(__file__).with_name("comfy_kitchen_stand_in.py")}


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
    """Stand-in modules for the packages of :data:`ABSENT_OK` and :data:`FILE_STAND_INS` that are
    not installed; returns their names. A finder at the end of ``sys.meta_path`` serves an
    :data:`ABSENT_OK` package and any submodule of it (``av.container``, ``av.video.frame``, ...);
    a :data:`FILE_STAND_INS` package is its file alone (importing a submodule fails, as ComfyUI's
    probes expect of a package without that part). Availability probes that read distribution
    metadata still see them missing (diffusers checks ``importlib.metadata.version``)."""
    placed = [name for name in (*ABSENT_OK, *FILE_STAND_INS) if _real_spec(name) is None]
    if placed and not any(isinstance(f, _StandInFinder) for f in sys.meta_path):
        sys.meta_path.append(_StandInFinder(placed))
    return placed


def _real_spec(name: str):
    """The spec of an installed ``name`` (the stand-in finder itself not asked)."""
    finders = [f for f in sys.meta_path if not isinstance(f, _StandInFinder)]
    for finder in finders:
        find = getattr(finder, "find_spec", None)
        spec = find(name, None) if find else None
        if spec is not None:
            return spec
    return None


def stand_in_note(name: str) -> str:
    """How a stand-in is named in the GPU check's output."""
    if name in FILE_STAND_INS:
        return (f"{name}: STAND-IN ({FILE_STAND_INS[name].relative_to(REPO)}), its kernels report unavailable, "
                "ComfyUI takes its non-kitchen paths")
    return f"{name}: stand-in module (every use raises; not used by these checks)"


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, packages: list[str]):
        self.packages = tuple(packages)

    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top not in self.packages:
            return None
        if top in FILE_STAND_INS:
            return importlib.util.spec_from_file_location(name, FILE_STAND_INS[top]) if name == top else None
        return importlib.machinery.ModuleSpec(name, self, is_package=True)

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
    temporary ``sys.argv``), exactly as ``main.py`` does, before anything reads them; then what
    ``main.py`` does around memory at start (``comfy_start``: the CUDA allocator backend and, on
    ComfyUI 0.33, DynamicVRAM with ``ModelPatcherDynamic`` as ``CoreModelPatcher``; call before
    torch is imported, as main.py does). Without a ``--base-directory`` a fresh temporary one is
    added (previews go to its temp/).
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
    comfy_start.before_torch()  # main.py: cudaMallocAsync, comfy-aimdo's init, before torch
    import comfy.model_management as mm

    comfy_start.after_model_management(mm)  # main.py: DynamicVRAM on where ComfyUI turns it on
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


def missing_modules(names: list[str]) -> list[str]:
    """Which of the top-level modules ``names`` cannot be found on this ``sys.path``."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}"
