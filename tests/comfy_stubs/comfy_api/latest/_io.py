"""Stand-in for ``comfy_api.latest.io`` (V3 node schema), reduced to what the pack uses.

Constructor signatures and ``as_dict`` keys follow ComfyUI 0.3.64's ``_io.py`` (0.33 adds keyword
arguments the pack does not use); ``test_comfyui_real`` compares the signatures with the real ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _pruned(values: dict) -> dict:
    return {k: v for k, v in values.items() if v is not None}


class Input:
    io_type = None

    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 extra_dict=None):
        self.id = id
        self.display_name = display_name
        self.optional = optional
        self.tooltip = tooltip
        self.lazy = lazy
        self.extra_dict = extra_dict or {}

    def as_dict(self) -> dict:
        return _pruned({"display_name": self.display_name, "optional": self.optional or None,
                        "tooltip": self.tooltip, "lazy": self.lazy}) | _pruned(self.extra_dict)

    def get_io_type(self) -> str:
        return self.io_type


class WidgetInput(Input):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 default: Any = None, socketless: bool = None, widget_type: str = None, force_input: bool = None,
                 extra_dict=None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
        self.default = default
        self.socketless = socketless
        self.widget_type = widget_type
        self.force_input = force_input

    def as_dict(self) -> dict:
        return super().as_dict() | _pruned({"default": self.default, "socketless": self.socketless,
                                            "widgetType": self.widget_type, "forceInput": self.force_input})


class Output:
    io_type = None

    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None, is_output_list=False):
        self.id = id
        self.display_name = display_name
        self.tooltip = tooltip
        self.is_output_list = is_output_list

    def as_dict(self) -> dict:
        return _pruned({"display_name": self.display_name, "tooltip": self.tooltip,
                        "is_output_list": self.is_output_list or None})

    def get_io_type(self) -> str:
        return self.io_type


def _socket_type(io_type: str) -> type:
    """A ComfyType with plain Input and Output classes bound to ``io_type``."""
    socket_input = type("Input", (Input,), {"io_type": io_type})
    socket_output = type("Output", (Output,), {"io_type": io_type})
    return type(io_type, (), {"io_type": io_type, "Input": socket_input, "Output": socket_output})


def Custom(io_type: str) -> type:
    return _socket_type(io_type)


Image = _socket_type("IMAGE")
Clip = _socket_type("CLIP")
Mask = _socket_type("MASK")
Model = _socket_type("MODEL")
Latent = _socket_type("LATENT")
Conditioning = _socket_type("CONDITIONING")
Vae = _socket_type("VAE")
Sampler = _socket_type("SAMPLER")
Sigmas = _socket_type("SIGMAS")
Noise = _socket_type("NOISE")
Guider = _socket_type("GUIDER")


class Boolean:
    io_type = "BOOLEAN"

    class Input(WidgetInput):
        io_type = "BOOLEAN"

        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None,
                     lazy: bool = None, default: bool = None, label_on: str = None, label_off: str = None,
                     socketless: bool = None, force_input: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.label_on, self.label_off = label_on, label_off

    Output = type("Output", (Output,), {"io_type": "BOOLEAN"})


class Int:
    io_type = "INT"

    class Input(WidgetInput):
        io_type = "INT"

        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None,
                     lazy: bool = None, default: int = None, min: int = None, max: int = None, step: int = None,
                     control_after_generate: bool = None, display_mode=None, socketless: bool = None,
                     force_input: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.min, self.max, self.step = min, max, step
            self.control_after_generate = control_after_generate

        def as_dict(self) -> dict:
            return super().as_dict() | _pruned({"min": self.min, "max": self.max, "step": self.step,
                                                "control_after_generate": self.control_after_generate})

    Output = type("Output", (Output,), {"io_type": "INT"})


class Float:
    io_type = "FLOAT"

    class Input(WidgetInput):
        io_type = "FLOAT"

        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None,
                     lazy: bool = None, default: float = None, min: float = None, max: float = None,
                     step: float = None, round: float = None, display_mode=None, socketless: bool = None,
                     force_input: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.min, self.max, self.step, self.round = min, max, step, round

        def as_dict(self) -> dict:
            return super().as_dict() | _pruned({"min": self.min, "max": self.max, "step": self.step,
                                                "round": self.round})

    Output = type("Output", (Output,), {"io_type": "FLOAT"})


class String:
    io_type = "STRING"

    class Input(WidgetInput):
        io_type = "STRING"

        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None,
                     lazy: bool = None, multiline=False, placeholder: str = None, default: str = None,
                     dynamic_prompts: bool = None, socketless: bool = None, force_input: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.multiline, self.placeholder, self.dynamic_prompts = multiline, placeholder, dynamic_prompts

        def as_dict(self) -> dict:
            return super().as_dict() | _pruned({"multiline": self.multiline or None,
                                                "placeholder": self.placeholder})

    Output = type("Output", (Output,), {"io_type": "STRING"})


class Combo:
    io_type = "COMBO"

    class Input(WidgetInput):
        io_type = "COMBO"

        def __init__(self, id: str, options: list = None, display_name: str = None, optional=False,
                     tooltip: str = None, lazy: bool = None, default: str = None,
                     control_after_generate: bool = None, upload=None, image_folder=None, remote=None,
                     socketless: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless)
            self.options = options
            self.control_after_generate = control_after_generate

        def as_dict(self) -> dict:
            return super().as_dict() | _pruned({"options": self.options,
                                                "control_after_generate": self.control_after_generate})


@dataclass
class Schema:
    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    hidden: list = field(default_factory=list)
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False

    def validate(self) -> None:
        """As ComfyUI: ids unique among inputs, among outputs, and between the two."""
        inputs = [i.id for i in self.inputs]
        outputs = [o.id for o in self.outputs]
        problems = []
        if len(set(inputs)) != len(inputs):
            problems.append(f"Input ids must be unique: {inputs}")
        if len(set(outputs)) != len(outputs):
            problems.append(f"Output ids must be unique: {outputs}")
        if set(inputs) & set(outputs):
            problems.append(f"Ids must be unique between inputs and outputs, but {set(inputs) & set(outputs)} are not.")
        if problems:
            raise ValueError("\n".join(problems))


class ComfyNode:
    """Nodes are used as classes, never instantiated; ComfyUI runs ``execute`` on a class clone."""

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs) -> NodeOutput:
        raise NotImplementedError

    @classmethod
    def validate_inputs(cls, **kwargs) -> bool:
        raise NotImplementedError

    @classmethod
    def GET_SCHEMA(cls) -> Schema:
        schema = cls.define_schema()
        schema.validate()
        return schema


class NodeOutput:
    def __init__(self, *args: Any, ui=None, expand: dict = None, block_execution: str = None):
        self.args = args
        self.ui = ui
        self.expand = expand
        self.block_execution = block_execution

    @property
    def result(self):
        return self.args if len(self.args) > 0 else None
