"""Stand-in for ComfyUI's ``folder_paths``: the model folder registry and its file lists.

Tests point ``models_dir`` at a temporary folder with :func:`reset`.
"""

import os

models_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_models")
folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {}
supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}


def reset(new_models_dir: str) -> None:
    global models_dir
    models_dir = new_models_dir
    folder_names_and_paths.clear()
    folder_names_and_paths["text_encoders"] = ([os.path.join(models_dir, "text_encoders"),
                                                os.path.join(models_dir, "clip")], {".safetensors"})
    for name, folders in (("diffusion_models", ("unet", "diffusion_models")), ("checkpoints", ("checkpoints",)),
                          ("loras", ("loras",))):
        folder_names_and_paths[name] = ([os.path.join(models_dir, f) for f in folders], set(supported_pt_extensions))


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    if folder_name in folder_names_and_paths:
        paths, _ = folder_names_and_paths[folder_name]
        if full_folder_path in paths:
            if is_default and paths[0] != full_folder_path:
                paths.remove(full_folder_path)
                paths.insert(0, full_folder_path)
        elif is_default:
            paths.insert(0, full_folder_path)
        else:
            paths.append(full_folder_path)
    else:
        folder_names_and_paths[folder_name] = ([full_folder_path], set())


def get_folder_paths(folder_name: str) -> list[str]:
    return folder_names_and_paths[folder_name][0][:]


# -- files in model folders (ComfyUI's names: paths relative to a search folder) --------------------
def get_filename_list(folder_name: str) -> list[str]:
    folders, extensions = folder_names_and_paths[folder_name]
    names = set()
    for root in folders:
        for dirpath, _, files in os.walk(root, followlinks=True):
            for file in files:
                if not extensions or os.path.splitext(file)[1].lower() in extensions:
                    names.add(os.path.relpath(os.path.join(dirpath, file), root))
    return sorted(names)


def get_full_path(folder_name: str, filename: str) -> str | None:
    if folder_name not in folder_names_and_paths:
        return None
    filename = os.path.relpath(os.path.join("/", filename), "/")
    for root in folder_names_and_paths[folder_name][0]:
        if os.path.isfile(os.path.join(root, filename)):
            return os.path.join(root, filename)
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    full_path = get_full_path(folder_name, filename)
    if full_path is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return full_path
