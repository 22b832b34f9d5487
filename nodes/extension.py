"""The ComfyExtension that lists the pack's nodes (returned by the root ``comfy_entrypoint``)."""

from __future__ import annotations

import logging

from comfy_api.latest import ComfyExtension, io

from . import host
from .apply_ids import ApplyIDs, ModelRouting
from .doctor import CheckInstall
from .faces import EncodeFace, FaceCanvas, IDList
from .identity import IdentityCheck
from .image_to_video import ImageToVideo
from .ids import ProjectIDs, RouteIDs
from .loaders import FaceEncoderLoader, ModelLoader, T5Loader, VAELoader
from .long_video import LongVideo
from .lora import LoraLoader
from .native_samplers import DynamicCFG, OfficialSampler, OfficialScheduler, TeaCache
from .routing_maps import RoutingMaps
from .sampling import Decode, DecodeLatent, Sampler
from .text import EncodePrompt, EncodePromptCLIP

logger = logging.getLogger(__name__)

NODES: list[type[io.ComfyNode]] = [
    ModelLoader,
    VAELoader,
    T5Loader,
    EncodePrompt,
    EncodePromptCLIP,
    FaceEncoderLoader,
    EncodeFace,
    IDList,
    FaceCanvas,
    ProjectIDs,
    RouteIDs,
    Sampler,
    Decode,
    RoutingMaps,
    IdentityCheck,
    CheckInstall,
    ApplyIDs,
    ModelRouting,
    LoraLoader,
    OfficialSampler,
    OfficialScheduler,
    DynamicCFG,
    ImageToVideo,
    DecodeLatent,
    TeaCache,
    LongVideo,
]


class IngredientsExtension(ComfyExtension):
    async def on_load(self) -> None:
        host.register_model_folders()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        # ComfyUI 0.3.x never calls on_load: register here too (registering twice changes nothing).
        host.register_model_folders()
        return list(NODES)
