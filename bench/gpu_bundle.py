"""What ``gpu_check.py`` needs on a GPU machine that has torch but no ComfyUI, no pip and no network.

Called by ``bench/prepare_gpu_bundle.sh``; each subcommand prints what it did:

    python bench/gpu_bundle.py comfy-files --comfyui PATH --dest bench/.gpu/comfyui
        imports ComfyUI in-process (--cpu) and the pack as ComfyUI would, records every ComfyUI file
        that import loaded, adds what those files import anywhere in their code (also inside
        functions: modules loaded lazily on CUDA), copies only those .py files (no tokenizer data,
        no web, no models) and writes the ComfyUI packages that import needed to requirements.txt
    python bench/gpu_bundle.py requirements --comfyui-files bench/.gpu/comfyui
        NAME==VERSION of each wheel to bring: what that import needed plus the pack's own lazy
        dependencies, less what the GPU machine has (MACHINE and what they depend on), at the versions
        installed here
    python bench/gpu_bundle.py size --bundle bench/.gpu
        bytes that travel: the repository working tree (tracked and untracked-not-ignored files,
        no .venv/.git) plus the bundle; fails above 64 MiB
    python bench/gpu_bundle.py emulate-machine DIR
        a folder of links to only the GPU machine's packages (MACHINE and their dependencies) from
        this environment, for a CPU dry run: PYTHONPATH=DIR python -S bench/gpu_check.py --bundle ...
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata as metadata
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_inproc as inproc  # noqa: E402

logger = logging.getLogger("bench.gpu_bundle")

REPO = inproc.REPO
LIMIT = 64 * 1024 ** 2
#: What the GPU machine has besides Python 3.12 (torch 2.11 + CUDA 13); their dependencies come with them.
MACHINE = ("torch", "transformers", "safetensors", "einops", "sentencepiece", "opencv-python-headless",
           "onnxruntime", "timm", "numpy", "scipy")
#: The pack's dependencies imported only when a node runs (not seen by an import of the pack).
PACK_LAZY = ("diffusers", "facexlib", "insightface", "onnx", "ml_dtypes", "protobuf", "scikit-image", "lazy_loader",
             "requests", "urllib3", "certifi", "charset-normalizer", "idna", "consisid_eva_clip", "ftfy", "wcwidth",
             "sageattention")
#: Fallbacks for machine packages that timm/torchvision should bring: appended after the
#: machine's own site-packages, so they are used only when the machine lacks them.
FALLBACKS = ("torchvision", "pillow")
#: Imported by ComfyUI but not brought (distribution names): av (36 MB; a stand-in module takes its
#: place, ComfyUI's video I/O is never used) and comfy-kitchen (a 56 MiB wheel ComfyUI 0.33 imports at
#: start; ``bench/comfy_kitchen_stand_in.py``, in the working tree, takes its place and reports its
#: kernels unavailable); module -> distribution of those brought only where ComfyUI imports them
#: outside a ``try`` (torchaudio: optional in some versions).
STAND_IN = tuple(_name.replace("_", "-") for _name in (*inproc.ABSENT_OK, *inproc.FILE_STAND_INS))
OPTIONAL = {"torchaudio": "torchaudio"}
#: CUDA libraries: the GPU machine's torch brings its own (some through extras of cuda-toolkit).
CUDA_PREFIXES = ("nvidia-", "cuda-")
#: Versions that do not come from this environment: sageattention 1.0.6 (the pure-Triton release, not
#: installed here) and the torchvision built for the GPU machine's torch 2.11 (INGREDIENTS_GPU_TORCHVISION).
PINS = {"sageattention": "1.0.6", "torchvision": os.environ.get("INGREDIENTS_GPU_TORCHVISION", "0.26.0"),
        "torchaudio": os.environ.get("INGREDIENTS_GPU_TORCHAUDIO", "2.11.0")}
#: Imported after the pack: what the checks use (the native MODEL path samples with ComfyUI's own
#: KSampler and SamplerCustomAdvanced) and main.py's start (cuda_malloc); a missing one is skipped.
ROOT_MODULES = ("comfy.model_management", "comfy.model_patcher", "comfy.ops", "comfy.utils", "comfy.latent_formats",
                "comfy.ldm.modules.attention", "folder_paths", "latent_preview", "comfy_api.latest", "comfy.sd",
                "comfy.samplers", "comfy.sample", "comfy.k_diffusion.sampling", "comfy.model_base", "nodes",
                "comfy_extras.nodes_custom_sampler", "cuda_malloc")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# -- comfy-files -----------------------------------------------------------------------------------------
def traced_files(comfyui: Path) -> tuple[set[Path], set[str]]:
    """ComfyUI files loaded by an in-process start (--cpu) plus the pack's import, and the
    third-party top-level modules that loaded (for requirements)."""
    before = set(sys.modules)
    inproc.stand_in_absent()
    inproc.start_comfyui(comfyui, ["--cpu"])
    inproc.load_pack()
    for name in ROOT_MODULES:
        try:
            __import__(name)
        except ModuleNotFoundError as error:
            if error.name != name:  # a dependency of it is missing: that is a finding
                raise
            logger.warning("%s is not in this ComfyUI: not traced", name)
    files, third = set(), set()
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and Path(path).resolve().is_relative_to(comfyui):
            files.add(Path(path).resolve())
        elif name not in before and "." not in name and name not in sys.stdlib_module_names:
            third.add(name)
    return files, third


def _imported_names(file: Path, root: Path | None) -> list[str]:
    """Every module name ``file`` imports anywhere (absolute; relative imports resolved against
    ``root``, skipped without one)."""
    package = list(file.relative_to(root).with_suffix("").parts[:-1]) if root else []
    names = []
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), str(file))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level and root is None:
                continue
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names += [module] + [f"{module}.{alias.name}" for alias in node.names]
    return [name for name in names if name]


def _module_file(name: str, root: Path) -> Path | None:
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        base = root.joinpath(*parts[:end])
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate.resolve()
    return None


def import_closure(start: set[Path], root: Path) -> set[Path]:
    """``start`` plus every ComfyUI file their imports reach (and their packages' ``__init__``)."""
    seen: set[Path] = set()
    todo = list(start)
    while todo:
        file = todo.pop()
        if file in seen:
            continue
        seen.add(file)
        for parent in file.relative_to(root).parents:
            init = root / parent / "__init__.py"
            if init.is_file():
                todo.append(init.resolve())
        todo += [found for name in _imported_names(file, root) if (found := _module_file(name, root))]
    return seen


def hard_imports(files: set[Path], root: Path, modules: set[str]) -> dict[str, str]:
    """{module: "file:line"} for ``modules`` some file imports at module level outside ``try``."""
    found: dict[str, str] = {}
    for file in sorted(files):
        for node in ast.parse(file.read_text(encoding="utf-8")).body:
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                top = name.split(".")[0]
                if top in modules and top not in found:
                    found[top] = f"{file.relative_to(root)}:{node.lineno}"
    return found


def distributions_of(modules: set[str]) -> dict[str, str]:
    """{distribution: version} installed here for top-level module names."""
    owners = metadata.packages_distributions()
    found = {}
    for module in modules:
        for dist in owners.get(module, []):
            found[_norm(dist)] = metadata.version(dist)
    return found


def pack_imports(comfyui: Path) -> set[Path]:
    """ComfyUI files the pack's node modules import anywhere (``nodes/host/`` imports some
    inside functions, e.g. ``comfy.text_encoders.t5``)."""
    names = [name for file in sorted((REPO / "nodes").rglob("*.py")) for name in _imported_names(file, None)]
    return {found for name in names if (found := _module_file(name, comfyui))}


def comfy_files(args) -> int:
    comfyui, dest = Path(args.comfyui).resolve(), Path(args.dest)
    loaded, third = traced_files(comfyui)
    files = import_closure(loaded | pack_imports(comfyui), comfyui)
    files |= {p.resolve() for p in [comfyui / "comfyui_version.py"] if p.is_file()}
    if dest.exists():
        shutil.rmtree(dest)
    for file in sorted(files):
        target = dest / file.relative_to(comfyui)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, target)
    requirements = distributions_of(third)
    needed = hard_imports(loaded, comfyui, set(OPTIONAL) & third)
    for module, dist in OPTIONAL.items():
        if dist in requirements and module not in needed:
            del requirements[dist]
    (dest / "requirements.txt").write_text("".join(f"{n}=={v}\n" for n, v in sorted(requirements.items())))
    for module, where in sorted(needed.items()):
        sys.stdout.write(f"{module} ({OPTIONAL[module]}) is required at import by {where}: it must travel\n")
    for module in sorted(set(inproc.FILE_STAND_INS) & third):
        where = hard_imports(loaded, comfyui, {module}).get(module, "inside a try")
        sys.stdout.write(f"{module} is imported by {where}: its STAND-IN travels instead "
                         f"({inproc.FILE_STAND_INS[module].relative_to(REPO)})\n")
    size = sum(f.stat().st_size for f in files)
    sys.stdout.write(f"ComfyUI {inproc.comfyui_version(comfyui)} from {comfyui}: {len(loaded)} files loaded at import, "
                     f"{len(files)} with what they import, {size / 2**20:.2f} MiB copied to {dest}\n"
                     f"third-party packages that import needed: {', '.join(sorted(requirements))}\n")
    return 0


# -- requirements --------------------------------------------------------------------------------------------
def _requires(dist: str) -> list[str]:
    """Names of ``dist``'s unconditional requirements (no extras)."""
    out = []
    for req in metadata.requires(dist) or []:
        name, _, marker = req.partition(";")
        if "extra" in marker:
            continue
        out.append(_norm(re.split(r"[\s<>=!~\[(]", name.strip(), maxsplit=1)[0]))
    return out


def machine_closure(names=MACHINE) -> set[str]:
    """The machine's distributions and everything they require, as installed here."""
    seen, todo = set(), [_norm(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            requirements = _requires(name)
        except metadata.PackageNotFoundError:
            if name == "opencv-python-headless":
                todo.append("opencv-python")  # the same module (cv2) here
            continue
        seen.add(name)
        todo += requirements
    return seen


def requirements(args) -> int:
    comfy = Path(args.comfyui_files) / "requirements.txt"
    wanted = dict(line.strip().split("==") for line in comfy.read_text().splitlines() if "==" in line)
    wanted.update({name: PINS[name] for name in wanted if name in PINS})  # built for the GPU machine's torch
    for name in PACK_LAZY + FALLBACKS:
        try:
            wanted[_norm(name)] = PINS.get(name) or metadata.version(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{name} is not installed here and has no pin in PINS: install it or pin it") from None
    machine = machine_closure() - {_norm(n) for n in FALLBACKS}
    for name, version in sorted(wanted.items()):
        if name not in machine and name not in STAND_IN and not name.startswith(CUDA_PREFIXES):
            sys.stdout.write(f"{name}=={version}\n")
    return 0


# -- size ---------------------------------------------------------------------------------------------------
def travelling_files(repo: Path) -> list[Path]:
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-co", "--exclude-standard", "-z"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    return [repo / name for name in listed if name and (repo / name).is_file()
            and not name.startswith((".venv/", ".git/"))]


def size(args) -> int:
    tree = sum(p.stat().st_size for p in travelling_files(REPO))
    bundle = Path(args.bundle)
    parts = {sub.name: sum(p.stat().st_size for p in sub.rglob("*") if p.is_file())
             for sub in sorted(bundle.iterdir()) if sub.is_dir()}
    parts["logs and lists"] = sum(p.stat().st_size for p in bundle.iterdir() if p.is_file())
    total = tree + sum(parts.values())
    listing = ", ".join(f"{name} {value / 2**20:.2f} MiB" for name, value in parts.items())
    sys.stdout.write(f"working tree {tree / 2**20:.2f} MiB + bundle ({listing}) = {total / 2**20:.2f} MiB "
                     f"of {LIMIT / 2**20:.0f} MiB: {'fits' if total <= LIMIT else 'TOO LARGE'}\n")
    if total > LIMIT:
        largest = sorted((p.stat().st_size, p.name) for p in (bundle / "wheels").glob("*.whl"))[-3:]
        sizes = ", ".join(f"{n} {b / 2**20:.1f} MiB" for b, n in reversed(largest))
        sys.stdout.write(f"largest wheels: {sizes}\n")
    return 0 if total <= LIMIT else 1


# -- emulate-machine -------------------------------------------------------------------------------------------
def emulate_machine(args) -> int:
    """Links to the top-level files of the machine's distributions (and their dist-info)."""
    dest = Path(args.dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    linked = []
    cuda = {_norm(d.metadata["Name"]) for d in metadata.distributions()
            if _norm(d.metadata["Name"]).startswith(CUDA_PREFIXES)}  # torch's CUDA libraries
    for name in sorted(machine_closure() | cuda):
        dist = metadata.distribution(name)
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            source = Path(dist.locate_file(top))
            if source.exists() and not (dest / top).exists() and not top.endswith(".pth"):
                (dest / top).symlink_to(source)
        linked.append(f"{name}=={dist.version}")
    sys.stdout.write(f"{len(linked)} distributions linked into {dest}: {', '.join(linked)}\n")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    files = sub.add_parser("comfy-files", help="copy the ComfyUI files an in-process import needs")
    files.add_argument("--comfyui", required=True)
    files.add_argument("--dest", required=True)
    reqs = sub.add_parser("requirements", help="print the wheels to bring, NAME==VERSION")
    reqs.add_argument("--comfyui-files", required=True)
    sized = sub.add_parser("size", help="bytes that travel to the GPU machine")
    sized.add_argument("--bundle", required=True)
    emulate = sub.add_parser("emulate-machine", help="link only the GPU machine's packages into a folder")
    emulate.add_argument("dest")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    commands = {"comfy-files": comfy_files, "requirements": requirements, "size": size,
                "emulate-machine": emulate_machine}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
