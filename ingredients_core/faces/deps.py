"""The face packages, imported in one place: :func:`require` or one clear error.

insightface (ArcFace on ONNX Runtime), facexlib (the RetinaFace detector) and consisid_eva_clip
(the EVA02-CLIP tower) are imported only when a face model is loaded or a photo is processed, and
only through :func:`require`, so:

- the node pack always loads, whatever state these packages are in (nothing imports them at
  import time);
- a package that is missing (``ModuleNotFoundError``) or fails inside its own import (a compiled
  part built against another numpy raises ``ImportError``, ``AttributeError`` or ``ValueError``)
  gives one :class:`FaceDependencyError` on one line: the package, the import error, the
  ``pip install`` with the pack's requirement, and the doctor that checks the whole install.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re

from .. import ERROR_NAMESPACE

#: The pack's requirement for each face package, as in requirements.txt (a test ties them).
REQUIREMENTS = {
    "insightface": "insightface>=0.7.3",
    "facexlib": "facexlib>=0.3.0",
    "consisid_eva_clip": "consisid_eva_clip>=1.0.2",
    "onnxruntime": "onnxruntime>=1.17",
}
#: The modules the face models import (consisid_eva_clip through eva_clip.import_eva_clip).
FACE_MODULES = ("facexlib.detection.retinaface", "facexlib.detection.retinaface_utils", "insightface.model_zoo",
                "onnxruntime")
#: The face packages with a compiled part of their own (built against the numpy present at build time).
COMPILED = ("insightface",)
DOCTOR = "python -m ingredients_core doctor"
DOCTOR_NODE = "Ingredients Check Install"
# What numpy's C-API check says when a compiled module was built against another numpy major version.
_NUMPY_ABI = re.compile(r"numpy\.dtype size changed|compiled using NumPy|_ARRAY_API not found|"
                        r"numpy\.core\.multiarray failed to import|numpy\.core\._multiarray_umath|"
                        r"module compiled against ABI version", re.I)
_LONGEST_ERROR = 400


class FaceDependencyError(ImportError):
    """A face package cannot be imported. One line: the package, the error, the fix, the doctor.

    Attributes:
        package: the top-level package (``insightface``, ``facexlib``, ``consisid_eva_clip``, ...).
        error: the exception its import raised (also the ``__cause__``).
        fix: the command that repairs it.
    """

    __module__ = ERROR_NAMESPACE

    def __init__(self, package: str, error: BaseException):
        self.package = package
        self.error = error
        self.fix = fix_for(package, error)
        detail = " ".join(f"{type(error).__name__}: {error}".split())
        if len(detail) > _LONGEST_ERROR:
            detail = detail[:_LONGEST_ERROR - 3] + "..."
        super().__init__(
            f"{package} cannot be imported ({detail}); the Ingredients face models (Load Ingredients Face "
            f"Encoder, Encode Face, Identity Check) need it. Fix: {self.fix}. Check the whole install with "
            f"`{DOCTOR}` or the node {DOCTOR_NODE}.",
            name=package,
        )


def numpy_version() -> str:
    """The installed numpy's version (from its metadata: numpy itself is not imported), or ``"?"``."""
    try:
        return importlib.metadata.version("numpy")
    except importlib.metadata.PackageNotFoundError:
        return "?"


def is_numpy_mismatch(error: BaseException) -> bool:
    """Whether an import error says a compiled part was built against another numpy than the one here."""
    return bool(_NUMPY_ABI.search(str(error)))


def fix_for(package: str, error: BaseException) -> str:
    """The command that repairs ``package`` given what its import raised."""
    requirement = REQUIREMENTS.get(package, package)
    pip = "python -m pip install"
    where = "with the Python that runs ComfyUI"
    if isinstance(error, ModuleNotFoundError):
        # the package itself, or a module it imports (pip installs the dependencies it lacks)
        return f'{pip} "{requirement}" ({where}), then restart ComfyUI'
    if is_numpy_mismatch(error):
        numpy = numpy_version()
        other = '"numpy<2"' if numpy.split(".")[0] not in ("0", "1", "?") else '"numpy>=2"'
        if package in COMPILED:  # insightface builds a Cython extension against the numpy of its build
            rebuild = (f"its compiled part was built for another numpy than the installed numpy {numpy}: rebuild "
                       f"it against this numpy with {pip} --force-reinstall --no-deps --no-build-isolation "
                       f'--no-cache-dir "{requirement}" ({where}; needs Cython and a C/C++ compiler)')
        else:
            rebuild = (f"a compiled module it imports (named in the error's traceback) was built for another "
                       f"numpy than the installed numpy {numpy}: reinstall that module's package for this numpy "
                       f"({where})")
        return f"{rebuild}, or install the numpy it was built for ({pip} {other}) if your other nodes allow; " \
               "then restart ComfyUI"
    return f'{pip} --force-reinstall --no-deps "{requirement}" ({where}), then restart ComfyUI'


def require(name: str):
    """Import ``name`` (a face package or one of its modules, e.g. ``"facexlib.detection.retinaface"``)
    and return the module, or raise :class:`FaceDependencyError` for its top-level package."""
    package = name.split(".")[0]
    if package not in REQUIREMENTS:
        raise ValueError(f"{name!r} is not one of the face packages {sorted(REQUIREMENTS)}")
    try:
        return importlib.import_module(name)
    except Exception as error:  # a package's own import can raise anything (ValueError from numpy's C-API check)
        raise FaceDependencyError(package, error) from error
