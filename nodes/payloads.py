"""The values that travel on the pack's own sockets, and their socket types.

Each payload is a frozen dataclass: ComfyUI caches node outputs and hands the same object to every
consumer, so nothing downstream may change it. Models keep their ``ModelPatcher`` here, so ComfyUI
keeps managing them for as long as the output is cached.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfy_api.latest import io

ModelType = io.Custom("INGREDIENTS_MODEL")
VAEType = io.Custom("INGREDIENTS_VAE")
T5Type = io.Custom("INGREDIENTS_T5")
PromptType = io.Custom("INGREDIENTS_PROMPT")
FaceEncoderType = io.Custom("INGREDIENTS_FACE_ENCODER")
FaceType = io.Custom("INGREDIENTS_FACE")
IDsType = io.Custom("INGREDIENTS_IDS")
IDTokensType = io.Custom("INGREDIENTS_ID_TOKENS")
RoutedIDsType = io.Custom("INGREDIENTS_ROUTED_IDS")
LatentsType = io.Custom("INGREDIENTS_LATENTS")

MAX_IDS = 4
ROUTING_MODES = ("official", "per_sample")


@dataclass(frozen=True)
class IngredientsModel:
    """The transformer (held by ``patcher``), its scheduler config and the default routing mode."""

    transformer: Any
    patcher: Any
    scheduler_config: dict
    routing_mode: str
    folder: Path


@dataclass(frozen=True)
class IngredientsVAE:
    vae: Any
    patcher: Any
    folder: Path


@dataclass(frozen=True)
class IngredientsT5:
    tokenizer: Any
    encoder: Any
    patcher: Any
    folder: Path


@dataclass(frozen=True)
class IngredientsPrompt:
    """T5 embeddings (1, 226, D), float32 on the intermediate device, and where they came from."""

    positive: Any
    negative: Any
    source: str

    @property
    def width(self) -> int:
        return int(self.positive.shape[-1])


@dataclass(frozen=True)
class IngredientsFaceEncoder:
    """A ``FaceEncoder`` whose torch parts (detector, EVA-CLIP) are held by ``patcher``."""

    encoder: Any
    patcher: Any


@dataclass(frozen=True)
class IngredientsIDs:
    """1 to 4 people's ``FaceFeatures``; the order is the canvas slot order."""

    faces: tuple

    def __len__(self) -> int:
        return len(self.faces)


@dataclass(frozen=True)
class IngredientsIDTokens:
    """The q-former's ID tokens (n_ids, 32, D) for ``ids``, made by one model."""

    tokens: Any
    ids: IngredientsIDs
    model_folder: Path


@dataclass(frozen=True)
class IngredientsRoutedIDs:
    """ID tokens plus how they are routed into the video (a ``RoutingOptions``); with
    ``follow_model_mode`` the sampler uses the model loader's routing mode instead of ``routing.mode``."""

    tokens: IngredientsIDTokens
    routing: Any
    follow_model_mode: bool = False

    def routing_for(self, model: IngredientsModel):
        if not self.follow_model_mode:
            return self.routing
        return dataclasses.replace(self.routing, mode=model.routing_mode)


@dataclass(frozen=True)
class IngredientsLatents:
    """Denoised latents (1, F, 16, h, w) on the intermediate device, with the video size."""

    latents: Any
    height: int
    width: int
    frames: int
