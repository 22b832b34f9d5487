"""Stand-in for ``comfy.utils``: ``ProgressBar`` records every update (value, total, preview);
``load_torch_file`` reads a safetensors or (weights-only) torch file as the real one does."""

import torch

updates: list[tuple] = []


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
