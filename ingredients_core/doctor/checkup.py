"""The doctor: is everything the pack needs there, whole and working? Never downloads anything.

    python -m ingredients_core doctor [--model DIR] [--comfyui DIR]

and the *Ingredients Check Install* node run :func:`run_doctor`. It checks, each with the fix as a
command or a path:

1. the Python packages the face models need import (insightface, facexlib, consisid_eva_clip,
   onnxruntime, OpenCV), with numpy and the builds known to break under it; which ONNX Runtime build
   is installed (``onnxruntime`` and ``onnxruntime-gpu`` side by side share one module);
2. the GPU torch sees (name, VRAM);
3. what each loader offers, and every file of each model folder, read whole
   (:mod:`~ingredients_core.weights.integrity`; shards listed in an index must all be there);
4. the face models where the face-encoder loader finds them (nested antelopev2 layouts included),
   and the ONNX Runtime provider that really runs ArcFace (a session is made on glintr100.onnx with
   the providers the pack would pick, and ``get_providers()`` tells which one it got).

Exit code (CLI): 0 when nothing FAILs, 1 otherwise; WARN lines do not stop the pack from working.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import io
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import files
from .files import FAIL, OK, WARN, Check
from ..weights.integrity import download_location

logger = logging.getLogger(__name__)

# module, pip name, what needs it
FACE_PACKAGES = (
    ("cv2", "opencv-python", "image resizing, face alignment"),
    ("onnxruntime", "onnxruntime", "ArcFace, glintr100.onnx"),
    ("insightface", "insightface", "ArcFace"),
    ("facexlib", "facexlib", "the RetinaFace detector"),
    ("consisid_eva_clip", "consisid_eva_clip", "the EVA02-CLIP face features"),
)
OTHER_PACKAGES = ("torch", "diffusers", "transformers", "safetensors", "sentencepiece", "accelerate", "av", "scipy")
ONNXRUNTIME_BUILDS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                      "onnxruntime-rocm", "onnxruntime-silicon")
# What a module compiled against NumPy 1.x says when NumPy 2 imports it.
# Builds known to fail under NumPy 2: (module, first version that works, why).
NUMPY2_BREAKS = {"onnxruntime": ((1, 19), "onnxruntime before 1.19 was built against NumPy 1.x")}
IMPORT_ERRORS = (ImportError, AttributeError, OSError, ValueError, RuntimeError, SystemError)


def pip(args: str) -> str:
    """A pip command for the Python running this (ComfyUI's, when the node runs it)."""
    return f'"{sys.executable}" -m pip {args}'


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def text(self) -> str:
        lines, section = ["Ingredients install check (nothing is downloaded)"], None
        for check in self.checks:
            if check.section != section:
                section = check.section
                lines += ["", f"== {section} =="]
            lines.append(f"{check.status:<4}  {check.what}" + (f": {check.detail}" if check.detail else ""))
            if check.fix:
                lines.append(f"      fix: {check.fix}")
        fails = sum(c.status == FAIL for c in self.checks)
        warns = sum(c.status == WARN for c in self.checks)
        verdict = ("everything needed is there" if not fails else
                   f"{fails} problem{'s' * (fails != 1)} to fix (FAIL lines)")
        return "\n".join([*lines, "", f"Result: {verdict}; {warns} warning{'s' * (warns != 1)}."])


# -- 1. packages --------------------------------------------------------------------------------
def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _import(module: str) -> BaseException | None:
    """None when ``module`` imports; else the error (broken native modules raise more than ImportError)."""
    if module == "insightface":  # albumentations (imported by older insightface) asks the network for updates
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):  # consisid_eva_clip prints "Please 'pip install xformers'"
            importlib.import_module(module)
    except IMPORT_ERRORS as err:
        return err
    finally:
        for line in printed.getvalue().splitlines():
            logger.debug("%s: %s", module, line)
    return None


def _numpy_abi(err: BaseException) -> bool:
    from ..faces.deps import is_numpy_mismatch

    return any(is_numpy_mismatch(e) for e in (err, err.__cause__, err.__context__) if e is not None)


def package_checks() -> list[Check]:
    section = "Python packages"
    numpy_version = _version("numpy")
    checks = [_numpy_check(numpy_version, section)]
    numpy2 = numpy_version is not None and _release(numpy_version)[:1] >= (2,)
    for module, name, needed_for in FACE_PACKAGES:
        version = _version(name)
        if module == "onnxruntime" and version is None:  # onnxruntime-gpu (or another build) brings it
            version = next((v for _, v in _onnxruntime_builds()), None)
        error = _import(module)
        if error is None:
            checks.append(Check(OK, module, f"{version or 'imports'} ({needed_for})", section=section))
            continue
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        if numpy2 and (_numpy_abi(error) or module in NUMPY2_BREAKS):
            fix = _numpy_fix(module, name, version)
            checks.append(Check(FAIL, module, f"built against NumPy 1.x, this is NumPy {numpy_version}: "
                                f"{type(error).__name__}: {first}", fix, section))
        elif isinstance(error, ModuleNotFoundError) and error.name == module:
            checks.append(Check(FAIL, module, f"not installed (needed for {needed_for})", pip(f"install {name}"),
                                section))
        else:
            checks.append(Check(FAIL, module, f"installed ({version}) but does not import: {type(error).__name__}: "
                                f"{first}", pip(f"install --force-reinstall --no-cache-dir {name}"), section))
    for name in OTHER_PACKAGES:
        version = _version(name)
        checks.append(Check(OK, name, version, section=section) if version else
                      Check(FAIL, name, "not installed", pip("install -r requirements.txt") + " (in the pack's folder)",
                            section))
    return checks + onnxruntime_checks(section)


def _numpy_check(version: str | None, section: str) -> Check:
    if version is None:
        return Check(FAIL, "numpy", "not installed", pip("install numpy"), section)
    detail = version + ("; packages built against NumPy 1.x fail to import under NumPy 2 (the lines below "
                        "show any)" if _release(version)[:1] >= (2,) else "")
    return Check(OK, "numpy", detail, section=section)


def _numpy_fix(module: str, name: str, version: str | None) -> str:
    if module in NUMPY2_BREAKS and version and _release(version) < NUMPY2_BREAKS[module][0]:
        least = ".".join(map(str, NUMPY2_BREAKS[module][0]))
        return f'{NUMPY2_BREAKS[module][1]}: {pip(f"install --upgrade {name}>={least}")}'
    # insightface is a source package: pip rebuilds it against today's numpy only without its cached wheel
    numpy1 = pip('install "numpy<2"')
    return (f"rebuild it for NumPy 2: {pip(f'install --force-reinstall --no-cache-dir --no-deps {name}')}; "
            f"or go back to NumPy 1: {numpy1}")


def _onnxruntime_builds() -> list[tuple[str, str]]:
    return [(name, v) for name in ONNXRUNTIME_BUILDS if (v := _version(name))]


def onnxruntime_checks(section: str) -> list[Check]:
    builds = _onnxruntime_builds()
    if not builds:
        return []
    from ..faces.deps import FaceDependencyError, require

    try:
        onnxruntime = require("onnxruntime")
    except FaceDependencyError:  # named by the import check above
        return []
    providers = onnxruntime.get_available_providers()
    listed = ", ".join(f"{n} {v}" for n, v in builds)
    checks = [Check(OK, "ONNX Runtime build", f"{listed}; providers: {', '.join(providers)}", section=section)]
    if len(builds) > 1:
        names = " ".join(n for n, _ in builds)
        keep = "onnxruntime-gpu" if any(n == "onnxruntime-gpu" for n, _ in builds) else builds[0][0]
        checks.append(Check(WARN, "ONNX Runtime", f"{listed} are installed side by side: they share one "
                            "onnxruntime module, the one installed last wins and uninstalling either breaks the other",
                            f"{pip(f'uninstall -y {names}')} then {pip(f'install {keep}')} (keep one build)", section))
    if any(n == "onnxruntime-gpu" for n, _ in builds) and "CUDAExecutionProvider" not in providers:
        checks.append(Check(WARN, "ONNX Runtime", "onnxruntime-gpu is installed but has no CUDA provider: the "
                            "files of another build are in use", f"{pip('uninstall -y ' + ' '.join(n for n, _ in builds))}"
                            f" then {pip('install onnxruntime-gpu')}", section))
    return checks


# -- 2. GPU -------------------------------------------------------------------------------------
def gpu_checks(device: str | None) -> list[Check]:
    section = "GPU"
    try:
        import torch
    except IMPORT_ERRORS as err:
        return [Check(FAIL, "torch", f"does not import: {err}", "install ComfyUI's torch (see pytorch.org)", section)]
    if not torch.cuda.is_available():
        why = ("this torch is a CPU build" if torch.version.cuda is None else
               f"torch has CUDA {torch.version.cuda} but sees no GPU (driver missing or too old?)")
        return [Check(WARN, "CUDA GPU", f"none: {why}; everything runs on the CPU, far too slow for the full model",
                      "install a CUDA build of torch for your GPU (https://pytorch.org/get-started/locally/); "
                      "check the driver with nvidia-smi", section)]
    checks = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        vram = props.total_memory / 2**30
        advice = ("; under 16 GB: set weight_dtype fp8_e4m3fn on Load Ingredients Model (README: VRAM)"
                  if vram < 15.5 else "")
        checks.append(Check(OK, f"cuda:{index}", f"{props.name}, {vram:.1f} GiB VRAM, compute capability "
                            f"{props.major}.{props.minor}; torch {torch.__version__}{advice}", section=section))
    if device is not None and torch.device(device).type == "cpu":
        checks.append(Check(WARN, "device", "ComfyUI runs the models on the CPU although a GPU is there "
                            "(started with --cpu?)", "start ComfyUI without --cpu", section))
    return checks


def _pack_device(device: str | None) -> str:
    if device is not None:
        return str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# -- 3. ONNX Runtime on ArcFace -----------------------------------------------------------------
def provider_check(arcface: Path, device: str, section: str) -> Check:
    """Make an ONNX Runtime session on ``arcface`` with the providers the pack picks for ``device``
    and report the provider it really got (called only once onnxruntime imported)."""
    from ..faces.arcface import CUDA_PROVIDER, onnx_providers
    from ..faces.deps import require

    onnxruntime = require("onnxruntime")

    requested = onnx_providers(device)
    names = [p if isinstance(p, str) else p[0] for p in requested]
    try:
        session = onnxruntime.InferenceSession(str(arcface), providers=requested)
    except Exception as err:  # ONNX Runtime's errors (Fail, InvalidProtobuf, ...) subclass Exception only
        return Check(FAIL, "ArcFace session", f"ONNX Runtime cannot load {arcface}: {str(err).strip()[:300]}",
                     f"download {download_location(arcface)} again", section)
    active = session.get_providers()
    if CUDA_PROVIDER in names and CUDA_PROVIDER not in active:
        return Check(WARN, "ArcFace provider", f"CUDA asked for, ONNX Runtime runs it on {', '.join(active)}: the "
                     "CUDA provider did not load (the CUDA/cuDNN libraries of this onnxruntime-gpu are missing or "
                     "of another version); the pack still works, ArcFace takes milliseconds per photo on the CPU",
                     "install the CUDA and cuDNN versions your onnxruntime-gpu needs (onnxruntime.ai, CUDA execution "
                     f"provider requirements), or use the CPU build: {pip('uninstall -y onnxruntime-gpu')} then "
                     f"{pip('install --force-reinstall onnxruntime')}", section)
    return Check(OK, "ArcFace provider", f"{active[0]} (the pack asks for {', '.join(names)} on {device}; ONNX "
                 f"Runtime gave {', '.join(active)})", section=section)


# -- 4. the whole run ---------------------------------------------------------------------------
def run_doctor(model_dirs: Sequence[Path] = (), roots: dict[str, list[Path]] | None = None,
               device: str | None = None, notes: Sequence[Check] = ()) -> Report:
    """Every check (module doc). ``model_dirs``: folders given by name (each must be a complete
    Ingredients folder); ``roots``: the search folders per ComfyUI folder name (``ingredients``,
    ``insightface``, ``text_encoders``), whose folders are checked as the loaders offer them;
    ``device``: where the pack runs the face models (ComfyUI's device; default: CUDA when there)."""
    report = Report([*package_checks(), *gpu_checks(device), *notes])
    insightface = list((roots or {}).get(files.INSIGHTFACE_FOLDER, []))
    offered: list[Path] = []
    if roots is not None:
        lists, offered = files.loader_lists(roots)
        report.checks.extend(lists)
    elif not model_dirs:
        report.checks.append(Check(WARN, "model folders", "none checked", "give --model DIR (an Ingredients folder) "
                                   "or --comfyui DIR (a ComfyUI folder)", "Model folders"))
    folders = files.unique([*model_dirs, *offered])
    arcface = None
    for folder in folders:
        report.checks.extend(files.model_folder_checks(folder, required=folder in model_dirs))
        if folder in model_dirs or files.FACES.matches(folder):
            section = f"Face models for {folder}"
            checks, found = files.face_checks(files.face_dirs_for(folder, insightface), section, folder)
            report.checks.extend(checks)
            arcface = arcface or found
    if arcface is not None and not _import("onnxruntime"):
        report.checks.append(provider_check(arcface, _pack_device(device), "ONNX Runtime"))
    return report


def add_doctor_parser(commands) -> None:
    doctor = commands.add_parser(
        "doctor", help="check the install: packages, GPU, every model file read whole (downloads nothing)",
        description="Check the Python packages, the GPU, the ONNX Runtime provider and every model file "
                    "(read whole, not guessed from sizes). Exit code 0: everything needed is there; 1: a FAIL line.")
    doctor.add_argument("--model", type=Path, action="append", default=[], metavar="DIR",
                        help="an Ingredients model folder (repeatable)")
    doctor.add_argument("--comfyui", type=Path, default=None, metavar="DIR",
                        help="a ComfyUI folder: check what its loaders offer (models/ingredients, models/insightface, "
                             "models/text_encoders, extra_model_paths.yaml)")


def run_doctor_command(args) -> int:
    roots, notes = (None, [])
    if args.comfyui is not None:
        roots, notes = files.comfyui_roots(args.comfyui.expanduser())
    report = run_doctor([m.expanduser() for m in args.model], roots, None, notes)
    sys.stdout.write(report.text() + "\n")
    return 0 if report.ok else 1
