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
from ..ingredients_core import InputError

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
RoutingType = io.Custom("INGREDIENTS_ROUTING")

MAX_IDS = 4
ROUTING_MODES = ("official", "per_sample")
MASK_MODES = ("soft", "hard")


@dataclass(frozen=True)
class WeightsIdentity:
    """Which transformer weights a loader loaded: equal for two loads of the same weights (same folder,
    ``transformer_file`` and storage dtype), different otherwise."""

    folder: Path
    file: Any  # the loader's transformer_file, None for the folder's own transformer
    storage: str

    def __str__(self) -> str:
        source = f"transformer_file {self.file}" if self.file else "its own transformer"
        return f"{self.folder.name} ({source}, {self.storage} weights)"


def check_projected_with(tokens: "IngredientsIDTokens", weights: Any, folder: Path, user: str) -> None:
    """Refuse ID tokens projected with other transformer weights than ``weights`` (the model at
    ``folder`` that will use them; ``user``: what uses it). Serves Apply IDs and the Ingredients Sampler."""
    mine = getattr(tokens, "weights", None)
    if mine is not None and weights is not None:
        if mine != weights:
            raise InputError(f"routed_ids: the ID tokens were projected with {mine}, {user} holds {weights}: feed "
                             "Project IDs the model output of the same Load Ingredients Model (same model_folder, "
                             "transformer_file, dtype and weight_dtype).")
        return
    if folder is not None and tokens.model_folder != folder:
        raise InputError(f"routed_ids: the ID tokens were projected with the model in {tokens.model_folder}, {user} "
                         f"comes from {folder}: feed Project IDs the model output of the same Load Ingredients Model.")


@dataclass(frozen=True)
class IngredientsModel:
    """The transformer, its scheduler config and the default routing mode. ``patcher`` is the MODEL
    (the whole transformer), ``projector`` a patcher of the q-former alone (what Project IDs needs;
    None under DynamicVRAM, where Project IDs uses ``patcher``)."""

    transformer: Any
    patcher: Any
    scheduler_config: dict
    routing_mode: str
    folder: Path
    projector: Any
    weights: Any = None  # a WeightsIdentity


@dataclass(frozen=True)
class IngredientsVAE:
    vae: Any
    patcher: Any
    folder: Path


@dataclass(frozen=True)
class IngredientsT5:
    """The folder's T5 on ComfyUI's own T5 (held by ``patcher``), its tokenizer and HF config."""

    tokenizer: Any
    encoder: Any
    patcher: Any
    folder: Path
    config: dict


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
    """A ``FaceEncoder`` whose torch parts (detector, EVA-CLIP) are held by ``patcher``; with the
    optional CurricularFace backbone of the identity check (``curricularface``, held by
    ``curricularface_patcher``; None when its file is absent, ``curricularface_note`` says why)."""

    encoder: Any
    patcher: Any
    curricularface: Any = None
    curricularface_patcher: Any = None
    curricularface_note: str = ""


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
    weights: Any = None          # the WeightsIdentity of the model that projected them
    qformer_patches: tuple = ()  # the q-former LoRA patches they were projected with (Project IDs' MODEL)


@dataclass(frozen=True)
class IngredientsRoutedIDs:
    """ID tokens plus how they are routed into the video (a ``RoutingOptions``); with
    ``follow_model_mode`` the sampler uses the model loader's routing mode instead of ``routing.mode``."""

    tokens: IngredientsIDTokens
    routing: Any
    follow_model_mode: bool = False

    def routing_for(self, loader_mode: str):
        """The routing options to run: ``routing``, with the loader's ``loader_mode`` ("official" or
        "per_sample") when Route IDs says "from model" (the one place this is resolved)."""
        if not self.follow_model_mode:
            return self.routing
        return dataclasses.replace(self.routing, mode=loader_mode)


@dataclass(frozen=True)
class IngredientsLatents:
    """Denoised latents (1, F, 16, h, w) on the intermediate device, with the video size."""

    latents: Any
    height: int
    width: int
    frames: int


@dataclass(frozen=True)
class IngredientsRouting:
    """What the router gave each video region during one sampler run, for routing maps.

    ``last`` and ``mean``: per routed layer (in ``layers`` order), the assignment weights
    (latent frames, token rows, token columns, people) on the CPU, of the last step and averaged over
    the steps (from the core's ``RoutingRecorder``). ``height``, ``width``, ``frames``: the video size.
    """

    layers: tuple
    last: tuple
    mean: tuple
    height: int
    width: int
    frames: int

    def maps(self, steps: str, layer: int):
        """Weights (F, rows, cols, people) of one routed layer, or their mean over all layers (-1)."""
        import torch

        if not self.layers:
            raise InputError("routing: nothing was recorded (every person had strength 0 or was outside its "
                             "start/end range at every step): give a person a strength above 0 on Route IDs.")
        if not -1 <= layer < len(self.layers):
            raise InputError(f"layer: {layer} is out of range; this model has {len(self.layers)} routed layers: "
                             f"use -1 (mean over all) or 0 to {len(self.layers) - 1}.")
        per_layer = self.last if steps == "last" else self.mean
        return torch.stack(per_layer).mean(0) if layer == -1 else per_layer[layer]
