"""Stand-in for ``comfy.utils``: ``PROGRESS_BAR_ENABLED``, ``ProgressBar`` (records every update: value, total, preview),
``deepcopy_list_dict`` (copies dicts and lists, shares every other object, as ComfyUI's clone does)
and ``load_torch_file`` (a safetensors or weights-only torch file, as the real one reads it)."""

import torch

updates: list[tuple] = []
PROGRESS_BAR_ENABLED = True  # ComfyUI's console-bar switch (samplers pass disable_pbar=not it)


class ProgressBar:
    def __init__(self, total, node_id=None):
        self.total = total
        self.current = 0
        self.node_id = node_id

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        updates.append((self.current, self.total, preview))

    def update(self, value):
        self.update_absolute(self.current + value)


def deepcopy_list_dict(obj, memo=None):
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, dict):
        res = {deepcopy_list_dict(k, memo): deepcopy_list_dict(v, memo) for k, v in obj.items()}
    elif isinstance(obj, list):
        res = [deepcopy_list_dict(i, memo) for i in obj]
    else:
        res = obj
    memo[id(obj)] = res
    return res


def load_torch_file(ckpt, safe_load=False, device=None, return_metadata=False):
    device = torch.device("cpu") if device is None else device
    metadata = None
    if str(ckpt).lower().endswith((".safetensors", ".sft")):
        from safetensors import safe_open

        with safe_open(str(ckpt), framework="pt", device=str(device)) as f:
            sd = {k: f.get_tensor(k) for k in f.keys()}
            metadata = f.metadata() if return_metadata else None
    else:
        sd = torch.load(ckpt, map_location=device, weights_only=True)
        sd = sd.get("state_dict", sd)
    return (sd, metadata) if return_metadata else sd


def set_attr(obj, attr, value):
    attrs = attr.split(".")
    for name in attrs[:-1]:
        obj = getattr(obj, name)
    prev = getattr(obj, attrs[-1])
    setattr(obj, attrs[-1], value)
    return prev


def get_attr(obj, attr: str):
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj
