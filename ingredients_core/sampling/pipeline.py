"""End-to-end Ingredients generation outside any host: faces + prompt -> video frames.

The order of work and of random draws follows the official ``IngredientsPipeline``: one
``torch.Generator(device).manual_seed(seed)``; T5 prompt embeddings (no randomness); the face canvas
is VAE-encoded and its latent *sampled* with the generator; the initial noise is drawn next from the
same generator (``randn_tensor``) and scaled by ``init_noise_sigma``; the scheduler steps then draw
from that generator too (``CogVideoXDPMScheduler`` is stochastic). Same seed, same settings, same
device and dtype: same video.

The ID tokens are projected once per run (the official code recomputes them at every step).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import ERROR_NAMESPACE
from .settings import (  # noqa: F401  (the settings are part of this module's interface)
    DTYPE_NAMES,
    MAX_TEACACHE,
    GenerationSettings,
    SettingsError,
    resolve_device,
    resolve_dtype,
    same_device,
)
from ..encoders.text import MAX_SEQUENCE_LENGTH

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..faces.features import FaceFeatures
    from ..routing.plan import RoutingOptions
    from .official import StepInfo

logger = logging.getLogger(__name__)

MODEL_FOLDER_PARTS = {
    "transformer": "the Ingredients transformer (config.json + safetensors; transformer_ema/ also works)",
    "vae": "the CogVideoX VAE (AutoencoderKLCogVideoX config.json + safetensors)",
    "text_encoder": "the T5 v1.1 XXL encoder (config.json + safetensors)",
    "tokenizer": "the T5 tokenizer (spiece.model + tokenizer_config.json)",
    "scheduler": "scheduler/scheduler_config.json (CogVideoXDPMScheduler)",
}


class ModelFolderError(FileNotFoundError):
    """A model folder without the parts Ingredients needs; the message lists them."""

    __module__ = ERROR_NAMESPACE


@dataclass
class ModelBundle:
    """Everything loaded from one model folder. ``tokenizer``/``text_encoder`` may be None when
    prompts are given as precomputed embeddings."""

    transformer: Any
    vae: Any
    tokenizer: Any
    text_encoder: Any
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype
    folder: Path | None = None
    offload: str = "none"


def check_model_folder(folder: str | Path, need_text: bool = True) -> Path:
    """Return the folder, or raise :class:`ModelFolderError` listing what is missing in it."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelFolderError(
            f"model folder not found: {folder}. Expected a folder with "
            + ", ".join(f"{name}/" for name in MODEL_FOLDER_PARTS)
            + " (the layout of the official weights, feizhengcong/Ingredients)."
        )
    text_parts = ("text_encoder", "tokenizer")
    parts = [name for name in MODEL_FOLDER_PARTS if need_text or name not in text_parts]
    missing = [name for name in parts if not _has_part(folder, name)]
    if missing:
        lines = "\n".join(f"  {name}/: {MODEL_FOLDER_PARTS[name]}" for name in missing)
        raise ModelFolderError(f"model folder {folder} is incomplete; missing:\n{lines}")
    return folder


def _has_part(folder: Path, name: str) -> bool:
    if name == "transformer":
        return (folder / "transformer_ema").is_dir() or (folder / "transformer").is_dir()
    if name == "scheduler":
        return (folder / "scheduler" / "scheduler_config.json").is_file()
    return (folder / name).is_dir()


def load_bundle(folder: str | Path, device: str = "auto", dtype: str = "auto", load_text: bool = True,
                weight_dtype: str = "default", offload: str = "none", attention: str = "sdpa") -> ModelBundle:
    """Load transformer (``transformer_ema`` preferred), VAE, T5, tokenizer and scheduler config.

    ``weight_dtype``, ``offload`` and ``attention``: see :mod:`ingredients_core.sampling.offload` (fp8
    storage, CPU offloading, SageAttention).
    """
    import json

    from ..weights.checkpoint import load_transformer
    from .offload import (
        home_device,
        load_text_encoder_for,
        prepare_transformer,
        resolve_attention,
        resolve_weight_dtype,
    )
    from ..encoders.text import load_tokenizer
    from ..encoders.vae import load_vae

    folder = check_model_folder(folder, need_text=load_text)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    storage = resolve_weight_dtype(weight_dtype)
    attention_fn = resolve_attention(attention, torch_device, torch_dtype)
    home = home_device(offload, torch_device)
    logger.info("loading Ingredients from %s (%s, %s, weights %s, offload %s)", folder, torch_device, torch_dtype,
                weight_dtype, offload)
    scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    transformer = load_transformer(folder, dtype=torch_dtype, device=home, weight_dtype=storage,
                                   attention=attention_fn)
    prepare_transformer(transformer, storage, torch_dtype, offload, torch_device)
    text_encoder = load_text_encoder_for(folder, torch_dtype, offload, torch_device) if load_text else None
    return ModelBundle(
        transformer=transformer,
        vae=load_vae(folder, torch_dtype, home),
        tokenizer=load_tokenizer(folder) if load_text else None,
        text_encoder=text_encoder,
        scheduler_config=scheduler_config,
        device=torch_device,
        dtype=torch_dtype,
        folder=folder,
        offload=offload,
    )


def read_transformer_config(folder: str | Path):
    """The transformer config of a model folder from its config.json (no weights read), or None.

    Raises :class:`~ingredients_core.weights.checkpoint_files.CheckpointError` naming the config file when it
    is not valid JSON or does not describe an Ingredients transformer.
    """
    from ..weights.checkpoint import read_config
    from ..weights.checkpoint_files import resolve

    files = resolve(folder)
    if files.config is None:
        return None
    # No shapes: the config alone (checks against the weights happen when they are loaded).
    return read_config(files, {})


def encode_texts_once(folder: str | Path, texts: Sequence[str], device: torch.device,
                      dtype: torch.dtype, offload: str = "none") -> list[torch.Tensor]:
    """Load T5, encode each text to (1, 226, D) (one at a time, as officially), free T5.

    For single runs: the 9.5 GB T5-XXL then never shares device memory with the transformer.
    With ``offload="blocks"`` T5 stays in CPU RAM and is streamed layer by layer.
    """
    import gc

    import torch

    from .offload import load_text_encoder_for
    from ..encoders.text import encode_prompts, load_tokenizer

    tokenizer = load_tokenizer(folder)
    encoder = load_text_encoder_for(folder, dtype, offload, device)
    try:
        return [encode_prompts(tokenizer, encoder, [text], device, dtype) for text in texts]
    finally:
        del encoder
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


@dataclass
class GenerationResult:
    """frames (T, H, W, 3) float32 in [0, 1] on the CPU; canvas (480, 720, 3) uint8 RGB (the I2V
    conditioning image); latents (1, F_lat, 16, h, w) the denoised latents; cache: the run's TeaCache
    (its counts of computed and skipped transformer evaluations), None when it was off."""

    frames: torch.Tensor
    canvas: np.ndarray
    latents: torch.Tensor
    settings: GenerationSettings
    cache: Any = None


def prompt_embeddings(bundle: ModelBundle, prompt: str | torch.Tensor) -> torch.Tensor:
    """(1, 226, D) embeddings for a prompt string, or validated precomputed embeddings."""
    from ..encoders.text import check_prompt_embeds, encode_prompts

    width = bundle.transformer.config.text_embed_dim
    if isinstance(prompt, str):
        if bundle.tokenizer is None or bundle.text_encoder is None:
            raise ValueError("this model bundle has no T5 text encoder: pass prompt embeddings "
                             f"of shape (1, {MAX_SEQUENCE_LENGTH}, {width}) instead of text")
        embeds = encode_prompts(bundle.tokenizer, bundle.text_encoder, [prompt], bundle.device,
                                bundle.dtype)
    else:
        embeds = prompt
    embeds = check_prompt_embeds(embeds, embed_dim=width)
    return embeds.to(device=bundle.device, dtype=bundle.dtype)


def _routing_options(routing: RoutingOptions | None, scale: float | None):
    from ..routing.plan import RoutingOptions

    routing = routing or RoutingOptions()
    return routing if scale is None else dataclasses.replace(routing, scale=scale)


def _check_placement(settings: GenerationSettings, bundle: ModelBundle) -> None:
    """The settings' device/dtype ("auto" matches any) must describe where the bundle lives."""
    problems = []
    if settings.device != "auto" and not same_device(resolve_device(settings.device), bundle.device):
        problems.append(f"device={settings.device!r}")
    if settings.dtype != "auto" and resolve_dtype(settings.dtype, bundle.device) != bundle.dtype:
        problems.append(f"dtype={settings.dtype!r}")
    if problems:
        loaded = str(bundle.dtype).replace("torch.", "")
        raise SettingsError(
            f"settings ask for {' and '.join(problems)} but the models are loaded on {bundle.device} "
            f"in {loaded}; load them with load_bundle(folder, device=..., dtype=...) or use 'auto'"
        )


def _check_faces(faces: Sequence[FaceFeatures]) -> None:
    from ..routing.plan import MAX_IDS

    if not 1 <= len(faces) <= MAX_IDS:
        raise ValueError(f"Ingredients takes the faces of 1 to {MAX_IDS} people; got {len(faces)}")
    for i, face in enumerate(faces):
        if getattr(face, "crop", None) is None or getattr(face, "id_cond", None) is None:
            raise TypeError(f"face {i + 1}: expected FaceFeatures (id_cond, vit_hidden, crop); "
                            f"got {type(face).__name__}")


def generate(
    bundle: ModelBundle,
    faces: Sequence[FaceFeatures],
    prompt: str | torch.Tensor,
    negative_prompt: str | torch.Tensor = "",
    settings: GenerationSettings | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    routing: RoutingOptions | None = None,
    recorder=None,
) -> GenerationResult:
    """Generate one video of the given people (ID order = canvas slot order).

    ``callback`` is called after every sampling step; an exception raised in it (for example
    :class:`ingredients_core.sampling.official.Interrupted`) stops the run and propagates. ``recorder`` (a
    :class:`~ingredients_core.routing.plan.RoutingRecorder`) receives what the router decided.
    """
    import torch

    from .generation import VAE_STAGE, RunHooks, RunPlacement, sample_video
    from .offload import StageMover
    from ..encoders.vae import decode

    settings = settings or GenerationSettings()
    settings.validate()
    settings.check_model(bundle.transformer.config)
    _check_placement(settings, bundle)
    _check_faces(faces)
    device, dtype = bundle.device, bundle.dtype
    guided = settings.cfg > 1.0
    prompt_embeds = prompt_embeddings(bundle, prompt)
    negative_embeds = prompt_embeddings(bundle, negative_prompt) if guided else None
    mover = StageMover(bundle.offload, device, bundle.transformer, bundle.vae)
    with torch.no_grad():
        # "model" offloading keeps the transformer in CPU RAM until sampling: project the IDs there
        ids_device = torch.device("cpu") if bundle.offload == "model" else device
        id_tokens = bundle.transformer.project_ids(list(faces), ids_device, dtype)
    result = sample_video(
        bundle.transformer, bundle.vae, bundle.scheduler_config, [face.crop for face in faces], prompt_embeds,
        negative_embeds, id_tokens, settings, RunPlacement(device, dtype, device),
        RunHooks(load=mover, step=callback), routing=_routing_options(routing, settings.local_face_scale),
        recorder=recorder)
    mover(VAE_STAGE)
    frames = decode(bundle.vae, result.latents, tiling=settings.vae_tiling, slicing=settings.vae_slicing)
    return GenerationResult(frames=frames, canvas=result.canvas, latents=result.latents, settings=settings,
                            cache=result.cache)
