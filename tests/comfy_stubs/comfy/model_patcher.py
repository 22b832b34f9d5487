"""Stand-in for ``comfy.model_patcher.ModelPatcher``: it keeps the model and its devices and, like
the real one, writes ``model.device`` (which fails on modules whose ``device`` is a property)."""


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model = model
        if not hasattr(self.model, "device") or self.model.device is None:
            self.model.device = offload_device
        self.load_device = load_device
        self.offload_device = offload_device
        self.size = size
