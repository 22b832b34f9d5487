"""The doctor's model-file checks: the folders the loaders offer and every file in them, read whole.

The folders come from the host (the ComfyUI node passes ComfyUI's search folders) or from a ComfyUI
folder on disk (:func:`comfyui_roots`: ``models/ingredients``, ``models/insightface``,
``models/text_encoders`` and ``models/clip``, and what its ``extra_model_paths.yaml`` adds). The face
models are looked up with the loaders' own :func:`~ingredients_core.faces.paths.find_face_models`,
so a layout the doctor accepts is one the loader uses.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..weights.integrity import SOURCE, check_file, download_location, index_problems
from ..weights.model_folders import FACES, INGREDIENTS_FOLDER, INSIGHTFACE_FOLDER, KINDS, MODEL, TEXT_ENCODERS_FOLDER, find_folders

OK, WARN, FAIL = "OK", "WARN", "FAIL"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass(frozen=True)
class Check:
    """One line of the report: OK / WARN / FAIL, what was checked, what was found, the fix."""

    status: str
    what: str
    detail: str = ""
    fix: str = ""
    section: str = ""


# -- 1. search folders --------------------------------------------------------------------------
def comfyui_roots(comfyui: Path) -> tuple[dict[str, list[Path]], list[Check]]:
    """The search folders a ComfyUI installation at ``comfyui`` gives the loaders, as ComfyUI builds
    them (its ``extra_model_paths.yaml`` included), and notes on reading them."""
    section = "ComfyUI folders"
    models = comfyui / "models"
    notes = []
    if not models.is_dir():
        notes.append(Check(FAIL, f"ComfyUI folder {comfyui}", "has no models/ folder", "give --comfyui the folder "
                           "that holds ComfyUI's main.py and models/", section))
    extra, yaml_notes = extra_model_paths(comfyui / "extra_model_paths.yaml")
    notes.extend(yaml_notes)
    roots = {
        INGREDIENTS_FOLDER: [*extra.get(INGREDIENTS_FOLDER, []), models / INGREDIENTS_FOLDER],
        INSIGHTFACE_FOLDER: [*extra.get(INSIGHTFACE_FOLDER, []), models / INSIGHTFACE_FOLDER],
        TEXT_ENCODERS_FOLDER: [models / TEXT_ENCODERS_FOLDER, models / "clip", *extra.get(TEXT_ENCODERS_FOLDER, []),
                               *extra.get("clip", [])],
    }
    return {key: list(dict.fromkeys(paths)) for key, paths in roots.items()}, notes


def extra_model_paths(yaml_file: Path) -> tuple[dict[str, list[Path]], list[Check]]:
    """Folder name -> paths from an ``extra_model_paths.yaml``, resolved as ComfyUI resolves them
    (``base_path`` relative to the file, each line of a value one path)."""
    section = "ComfyUI folders"
    if not yaml_file.is_file():
        return {}, []
    try:
        import yaml
    except ImportError:
        return {}, [Check(WARN, str(yaml_file), "not read: PyYAML is not installed here (ComfyUI's Python has it)",
                          "run the doctor with ComfyUI's Python, or pip install pyyaml", section)]
    try:
        config = yaml.safe_load(yaml_file.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        return {}, [Check(FAIL, str(yaml_file), f"cannot be read: {err}", "fix its YAML (ComfyUI cannot read it "
                          "either)", section)]
    found: dict[str, list[Path]] = {}
    for entry in (c for c in config.values() if isinstance(c, dict)):
        base = entry.get("base_path")
        if isinstance(base, str):
            base = Path(os.path.expandvars(os.path.expanduser(base)))
            base = base if base.is_absolute() else yaml_file.parent / base
        for key, value in entry.items():
            if key in ("base_path", "is_default") or not isinstance(value, str):
                continue
            for line in filter(None, (v.strip() for v in value.split("\n"))):
                path = Path(line)
                path = base / path if isinstance(base, Path) else (path if path.is_absolute() else yaml_file.parent / path)
                found.setdefault(key, []).append(Path(os.path.normpath(path)))
    return found, [Check(OK, str(yaml_file), "read (its paths are searched too)", section=section)]


def roots_for(kind, roots: dict[str, list[Path]]) -> list[Path]:
    return list(dict.fromkeys(p for key in kind.roots for p in roots.get(key, [])))


def loader_lists(roots: dict[str, list[Path]]) -> tuple[list[Check], list[Path]]:
    """What each loader offers (one line per loader) and every folder offered."""
    section = "What the loaders offer"
    checks, folders = [], []
    for kind in KINDS:
        searched = roots_for(kind, roots)
        found = find_folders(kind, searched)
        folders.extend(f for f in found.values() if f not in folders)
        where = ", ".join(str(r) for r in searched) or "(no search folders)"
        if found:
            checks.append(Check(OK, kind.loader, f"offers {', '.join(sorted(found, key=str.lower))} (searched {where})",
                                section=section))
        else:
            target = (searched[0] if searched else Path("ComfyUI/models/ingredients")) / "Ingredients"
            checks.append(Check(FAIL, kind.loader, f"offers nothing: no folder with {kind.describe()} in {where}",
                                f"download {SOURCE} as a whole folder to {target}", section))
    return checks, folders


# -- 2. files of one model folder ---------------------------------------------------------------
def _file_check(path: Path, folder: Path, section: str, deep: bool = True) -> Check:
    state = check_file(path, deep=deep)
    try:
        shown = path.relative_to(folder).as_posix()
    except ValueError:
        shown = str(path)
    if state.ok:
        detail = state.detail + (f"; {state.note}" if state.note else "")
        return Check(OK, shown, f"{state.kind}, {detail}", section=section)
    return Check(FAIL, shown, state.detail, f"download {download_location(path)} again (to {path})", section)


def _weight_checks(sub: Path, folder: Path, section: str) -> list[Check]:
    indexes = sorted(sub.glob("*.safetensors.index.json")) or sorted(sub.glob("*.bin.index.json"))
    if indexes:
        checks = [_file_check(indexes[0], folder, section)]
        if checks[0].status != OK:
            return checks
        problems = index_problems(indexes[0])
        checks.extend(Check(FAIL, f"{sub.name}/{indexes[0].name}", problem, f"download {sub.name}/ again from "
                            f"{SOURCE} (every shard)", section) for problem in problems)
        shards = sorted(set(json.loads(indexes[0].read_text(encoding="utf-8"))["weight_map"].values()))
        return checks + [_file_check(sub / s, folder, section) for s in shards if (sub / s).is_file()]
    files = next((sorted(sub.glob(f"*{suffix}")) for suffix in WEIGHT_SUFFIXES if list(sub.glob(f"*{suffix}"))), [])
    if not files:
        return [Check(FAIL, f"{sub.name}/", "holds no weight files (*.safetensors)", f"download {sub.name}/ from "
                      f"{SOURCE}", section)]
    return [_file_check(f, folder, section) for f in files]


# Parts the pack can do without: the prompts may come from ComfyUI's CLIPLoader (Encode Prompt (CLIP)).
OPTIONAL_PARTS = {"text_encoder": "T5", "tokenizer": "T5"}


def _part(folder: Path, sub: str, files: Sequence[str], section: str, weights: bool) -> list[Check]:
    path = folder / sub
    if not path.is_dir() and sub in OPTIONAL_PARTS:
        return [Check(WARN, f"{sub}/", "missing: Load Ingredients T5 cannot use this folder (fine when the prompts "
                      "come from CLIPLoader and Encode Prompt (CLIP))", f"download {sub}/ from {SOURCE} into {folder}",
                      section)]
    if not path.is_dir():
        return [Check(FAIL, f"{sub}/", "missing", f"download {sub}/ from {SOURCE} into {folder}", section)]
    checks = []
    for name in files:
        names = name.split("|")
        found = next((path / n for n in names if (path / n).is_file()), None)
        checks.append(_file_check(found, folder, section) if found else Check(
            FAIL, f"{sub}/{' or '.join(names)}", "missing", f"download {sub}/{names[0]} from {SOURCE}", section))
    return checks + (_weight_checks(path, folder, section) if weights else [])


PARTS = {  # subfolder -> (files besides the weights, has weights)
    "vae": (("config.json",), True),
    "text_encoder": (("config.json",), True),
    "tokenizer": (("spiece.model|tokenizer.json", "tokenizer_config.json"), False),
    "scheduler": (("scheduler_config.json",), False),
}


def model_folder_checks(folder: Path, required: bool = True) -> list[Check]:
    """Every file the loaders read from ``folder`` (not the face models: :func:`face_checks`).
    ``required``: a part that is absent is a FAIL (else only the parts present are read)."""
    section = f"Model files in {folder}"
    if not folder.is_dir():
        return [Check(FAIL, str(folder), "does not exist", f"download {SOURCE} as a whole folder there", section)]
    if required and not MODEL.matches(folder):
        inner = sorted(find_folders(MODEL, [folder]).values())
        hint = f"did you mean {inner[0]}?" if inner else f"download {SOURCE} as a whole folder"
        return [Check(FAIL, str(folder), f"not an Ingredients folder (no {MODEL.describe()})", hint, section)]
    checks = []
    transformer = "transformer_ema" if (folder / "transformer_ema").is_dir() else "transformer"
    if required or (folder / transformer).is_dir():
        checks += _part(folder, transformer, ("config.json",), section, weights=True)
    for sub, (files, weights) in PARTS.items():
        if required or (folder / sub).is_dir():
            checks += _part(folder, sub, files, section, weights)
    return checks


# -- 3. face models -----------------------------------------------------------------------------
def face_checks(face_dirs: Sequence[Path], section: str, base: Path) -> tuple[list[Check], Path | None]:
    """The face models as the face-encoder loader finds them in ``face_dirs`` (each read whole), and
    the ArcFace file found (for the ONNX Runtime check), or None."""
    from ..identity.curricularface import CURRICULARFACE_FILE, find_curricularface
    from ..faces.errors import FaceModelsNotFoundError
    from ..faces.paths import ARCFACE_FILE, find_face_models, is_official_arcface

    try:
        paths = find_face_models(face_dirs)
    except FaceModelsNotFoundError as err:
        searched = ", ".join(str(p) for p in err.searched)
        return [Check(FAIL, name, f"missing (searched {searched} and their face_encoder/)",
                      f"download {download_location(name)} to {Path(face_dirs[0]) / name}", section)
                for name in err.missing], None
    checks = [_file_check(paths.detection, base, section), _file_check(paths.eva_clip, base, section)]
    arcface = _file_check(paths.arcface, base, section)
    layout = "official layout" if is_official_arcface(paths.arcface) else (
        f"not the official {ARCFACE_FILE}, found and used where it is")
    checks.append(Check(arcface.status, f"{arcface.what} (ArcFace)",
                        f"{arcface.detail} ({layout})" if arcface.status == OK else arcface.detail, arcface.fix, section))
    curricular = find_curricularface(face_dirs)
    if curricular is None:
        checks.append(Check(OK, CURRICULARFACE_FILE, "not present (optional: CurricularFace scores in the identity "
                            "check; from face_encoder/ of BestWishYsh/ConsisID-preview)", section=section))
    else:
        checks.append(_file_check(curricular, base, section))
    return checks, paths.arcface if arcface.status == OK else None


def unique(paths: Iterable[Path]) -> list[Path]:
    return list(dict.fromkeys(Path(p) for p in paths))


def face_dirs_for(folder: Path, insightface_roots: Sequence[Path]) -> list[Path]:
    """The folders the face-encoder loader searches for ``folder``'s face models."""
    return unique([folder / "face_encoder", *insightface_roots])


def offered_face_folders(folders: Sequence[Path]) -> list[Path]:
    return [f for f in folders if FACES.matches(f)]
