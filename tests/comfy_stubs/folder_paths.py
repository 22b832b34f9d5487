"""Stand-in for ComfyUI's ``folder_paths``: the model folder registry, nothing else.

Tests point ``models_dir`` at a temporary folder with :func:`reset`.
"""

import os

models_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_models")
folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {}


def reset(new_models_dir: str) -> None:
    global models_dir
    models_dir = new_models_dir
    folder_names_and_paths.clear()
    folder_names_and_paths["text_encoders"] = ([os.path.join(models_dir, "text_encoders"),
                                                os.path.join(models_dir, "clip")], {".safetensors"})


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
