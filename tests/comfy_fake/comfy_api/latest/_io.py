"""Fake of comfy_api.latest._io: the types, inputs, Schema, ComfyNode and NodeOutput the pack
uses, with ComfyUI 0.3.64's constructor signatures (extra keywords are a TypeError, as there)."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class Input:
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 extra_dict=None):
        self.id, self.display_name, self.optional, self.tooltip, self.lazy = id, display_name, optional, tooltip, lazy
        self.extra_dict = extra_dict or {}

    @property
    def io_type(self) -> str:
        return self.Parent.io_type


class WidgetInput(Input):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 default: Any = None, socketless: bool = None, widget_type: str = None, force_input: bool = None,
                 extra_dict=None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
        self.default, self.socketless, self.widget_type, self.force_input = default, socketless, widget_type, force_input


class Output:
    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None, is_output_list=False):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name, tooltip, is_output_list

    @property
    def io_type(self) -> str:
        return self.Parent.io_type


class ComfyTypeIO:
    io_type: str = None
    Input = Input
    Output = Output


def comfytype(io_type: str):
    """Bind ``io_type`` and give the type its own Input/Output subclasses knowing their parent."""
    def decorator(cls):
        cls.io_type = io_type
        cls.Input = type("Input", (cls.Input,), {"Parent": cls})
        cls.Output = type("Output", (cls.Output,), {"Parent": cls})
        return cls
    return decorator


def Custom(io_type: str) -> type[ComfyTypeIO]:
    @comfytype(io_type=io_type)
    class CustomComfyType(ComfyTypeIO):
        pass
    return CustomComfyType


class NumberDisplay(str, Enum):
    number = "number"
    slider = "slider"


@comfytype(io_type="INT")
class Int(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                     default: int = None, min: int = None, max: int = None, step: int = None,
                     control_after_generate: bool = None, display_mode: NumberDisplay = None,
                     socketless: bool = None, force_input: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.min, self.max, self.step, self.control_after_generate = min, max, step, control_after_generate


@comfytype(io_type="FLOAT")
class Float(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                     default: float = None, min: float = None, max: float = None, step: float = None,
                     round: float = None, display_mode: NumberDisplay = None, socketless: bool = None,
                     force_input: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.min, self.max, self.step, self.round = min, max, step, round


@comfytype(io_type="BOOLEAN")
class Boolean(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                     default: bool = None, label_on: str = None, label_off: str = None, socketless: bool = None,
                     force_input: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.label_on, self.label_off = label_on, label_off


@comfytype(io_type="STRING")
class String(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                     multiline=False, placeholder: str = None, default: str = None, dynamic_prompts: bool = None,
                     socketless: bool = None, force_input: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.multiline, self.placeholder, self.dynamic_prompts = multiline, placeholder, dynamic_prompts


@comfytype(io_type="COMBO")
class Combo(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id: str, options: list[str] | list[int] | type[Enum] = None, display_name: str = None,
                     optional=False, tooltip: str = None, lazy: bool = None, default: str | int | Enum = None,
                     control_after_generate: bool = None, upload=None, image_folder=None, remote=None,
                     socketless: bool = None):
            if isinstance(options, type) and issubclass(options, Enum):
                options = [v.value for v in options]
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless)
            self.options = options


@comfytype(io_type="IMAGE")
class Image(ComfyTypeIO):
    pass


@comfytype(io_type="LATENT")
class Latent(ComfyTypeIO):
    pass


@comfytype(io_type="CONDITIONING")
class Conditioning(ComfyTypeIO):
    pass


@comfytype(io_type="CLIP")
class Clip(ComfyTypeIO):
    pass


@comfytype(io_type="VAE")
class Vae(ComfyTypeIO):
    pass


@comfytype(io_type="MODEL")
class Model(ComfyTypeIO):
    pass


@comfytype(io_type="UPSCALE_MODEL")
class UpscaleModel(ComfyTypeIO):
    pass


class Hidden(str, Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"


@dataclass
class Schema:
    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list[Input] = None
    outputs: list[Output] = None
    hidden: list[Hidden] = None
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False

    def validate(self):
        ids = [i.id for i in self.inputs or []] + [o.id for o in self.outputs or [] if o.id is not None]
        if len(ids) != len(set(ids)):
            raise ValueError(f"Input and output ids must be unique, got {ids}")


class ComfyNode:
    """V3 nodes are used as classes: ComfyUI never keeps an instance's state."""

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs) -> NodeOutput:
        raise NotImplementedError

    @classmethod
    def GET_SCHEMA(cls) -> Schema:
        schema = cls.define_schema()
        schema.validate()
        return schema


class NodeOutput:
    def __init__(self, *args: Any, ui=None, expand: dict = None, block_execution: str = None):
        self.args, self.ui, self.expand, self.block_execution = args, ui, expand, block_execution

    @property
    def result(self):
        return self.args if len(self.args) > 0 else None

    def __getitem__(self, index) -> Any:
        return self.args[index]
