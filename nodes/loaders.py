"""Loader nodes: the Ingredients transformer, the CogVideoX VAE, the folder's T5 and the face models.

Each loads weights onto ComfyUI's offload device and wraps the modules in a ``ModelPatcher``
(``host.manage``); the nodes that use them call ``host.load`` first.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from comfy_api.latest import io

from ..ingredients_core.model.storage import WEIGHT_DTYPES as STORAGE_DTYPES
from . import host, model_files
from .model_files import FACES, MODEL, T5, VAE
from .payloads import (
    ROUTING_MODES,
    FaceEncoderType,
    IngredientsFaceEncoder,
    IngredientsModel,
    IngredientsT5,
    IngredientsVAE,
    ModelType,
    T5Type,
    VAEType,
    WeightsIdentity,
)
from .schema import node_schema

logger = logging.getLogger(__name__)

# The README's section on the weights' terms (repository URL as in pyproject.toml; a test ties them).
LICENSE_URL = "https://github.com/ComfyUI-Ingredients/ComfyUI-Ingredients#license-and-credits"
MODEL_DESCRIPTION = ("Loads the Ingredients transformer (CogVideoX-5B-I2V with routed ID modules) and its scheduler "
                     "config from a folder in models/ingredients (the download of feizhengcong/Ingredients). The "
                     "weights come under their own terms (CogVideoX License; insightface's face models: "
                     f"non-commercial research only): {LICENSE_URL}")
MODEL_FOLDER_TOOLTIP = ("Folder in models/ingredients (or an extra model path) holding transformer/ (or "
                        "transformer_ema/) and scheduler/. The transformer is derived from CogVideoX-5B-I2V: the "
                        "CogVideoX License applies (commercial use needs registration); all weights' terms: "
                        f"{LICENSE_URL}")
DTYPES = ["auto", "bfloat16", "float16", "float32"]
PROVIDERS = ["auto", "CPUExecutionProvider", "CUDAExecutionProvider"]
DTYPE_TOOLTIP = ("Weight and compute dtype. auto = ComfyUI's choice for this kind of model on its device "
                 "(its flags for it apply: --bf16-vae, --fp16-text-enc, ...; float32 on the CPU).")
T5_DTYPES = [*DTYPES, "float8_e4m3fn", "float8_e5m2"]
T5_DTYPE_TOOLTIP = ("Weight dtype of T5-XXL (9.5 GB in bf16, 4.8 GB in fp8). auto = ComfyUI's choice for text "
                    "encoders (fp16; --fp8_e4m3fn-text-enc, --bf16-text-enc, ... apply). It runs on ComfyUI's own "
                    "T5, which computes in float32 and loads only what fits on the GPU, streaming the rest.")
MODEL_DTYPE_TOOLTIP = ("Weight dtype of the transformer. auto = ComfyUI's choice for diffusion models "
                       "(bfloat16 on recent GPUs, the dtype it was trained in; float32 on the CPU; "
                       "--fp16-unet/--bf16-unet/--fp8_e4m3fn-unet apply). float16 runs it in fp16 "
                       "where the GPU does that well (less precise: it was trained in bf16).")


def _parameter_count(folder) -> int:
    """Parameters in the transformer's safetensors files (read from their headers; 0 for other
    formats), for ComfyUI's dtype picker, which weighs the model against the free memory."""
    from safetensors import safe_open

    from ..ingredients_core.weights.checkpoint_files import resolve

    count = 0
    for path in resolve(folder).weights:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as weights:
                count += sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())
    return count


WEIGHT_DTYPES = list(STORAGE_DTYPES)  # default, fp8_e4m3fn, fp8_e4m3fn_fast, fp8_e5m2
WEIGHT_DTYPE_TOOLTIP = ("Storage of the transformer's large weights. default = the dtype above (or what ComfyUI's "
                        "--fp8_e4m3fn-unet/--fp8_e5m2-unet ask for); fp8_e4m3fn / fp8_e5m2 = 8-bit weights (6.4 GB "
                        "instead of 12.8 GB), computed in bf16 layer by layer; fp8_e4m3fn_fast also multiplies in "
                        "fp8 on GPUs that can (RTX 40xx and newer), slightly less precise.")


def transformer_dtypes(folder, choice: str, weight_choice: str = "default") -> tuple[torch.dtype, torch.dtype]:
    """(storage dtype, compute dtype) of the transformer: ComfyUI's picks for it
    (``host.diffusion_dtypes``: the node's dtype or auto, with the --*-unet flags); with an fp8
    ``weight_dtype``, or ``default`` and weights stored in fp8 (:func:`stored_fp8`), the weights are
    stored in it and computed in what the node's dtype computes in (auto: what ComfyUI computes fp8
    weights in, bf16 on capable GPUs). ``folder``: the checkpoint folder or single file."""
    params = _parameter_count(folder)
    weight, compute = host.diffusion_dtypes(choice, model_params=params)
    fp8 = STORAGE_DTYPES.get(weight_choice) or stored_fp8(folder, weight_choice)
    if fp8 is not None:  # fp8 weights, computed in the dtype above (auto: ComfyUI's)
        weight = fp8
        if choice == "auto":
            compute = host.diffusion_dtypes(host.dtype_name(weight), model_params=params)[1]
    if weight != compute:
        logger.info("Ingredients transformer: weights stored in %s, computed in %s", host.dtype_name(weight),
                    host.dtype_name(compute))
    if compute == torch.float16:
        logger.warning("Ingredients transformer runs in float16 (asked for with dtype=float16 or --fp16-unet); "
                       "it was trained in bfloat16, so fp16 may lose detail or overflow. Use auto or bfloat16 "
                       "where the GPU supports it.")
    if weight_choice.endswith("_fast") and not host.supports_fp8_compute():
        logger.warning("Ingredients transformer: %s asks for fp8 matrix multiplies, which this GPU does not have; "
                       "the fp8 weights are cast to %s per layer instead.", weight_choice, host.dtype_name(compute))
    return weight, compute


def stored_fp8(weights, weight_choice: str):
    """The fp8 dtype of weights stored in fp8 (a ModelSave file of an fp8 model, an fp8 repack) when
    ``weight_dtype`` is ``default``: kept as stored, as users of fp8 files expect; else None."""
    from ..ingredients_core.weights.checkpoint_keys import stored_dtype
    from ..ingredients_core.model.storage import FP8_DTYPES

    stored = stored_dtype(weights) if weight_choice == "default" else None
    return stored if stored in FP8_DTYPES else None


FOLDER_OWN = "folder's own"
TRANSFORMER_FILE_TOOLTIP = (
    "Transformer weights from one .safetensors file in ComfyUI's models/diffusion_models or models/checkpoints "
    "instead of the folder's transformer/: a file written by ModelSave from this pack's MODEL, or an fp8 repack "
    "(keys with or without the model.diffusion_model. prefix). An fp8 file stays fp8 with weight_dtype default. "
    "The scheduler and transformer configs still come from model_folder.")


def transformer_source(folder, transformer_file: str):
    """(weights: the folder or the chosen file, config.json for a file: the folder's transformer config)."""
    if transformer_file == FOLDER_OWN:
        return folder, None
    from ..ingredients_core.weights.checkpoint_files import resolve

    return host.single_file_path(transformer_file, "transformer_file"), resolve(folder).config


def _dtype_input(options: list[str], tooltip: str) -> io.Combo.Input:
    """A loader's ``dtype`` choice: ``auto`` (ComfyUI's pick for the model's role) or a named dtype."""
    return io.Combo.Input("dtype", options=options, default="auto", tooltip=tooltip)


def folder_loader(kind: model_files.FolderKind) -> type[io.ComfyNode]:
    """The one skeleton of the four loaders, as their base class: the first input, ``model_folder``, lists
    the folders of ``kind`` below ComfyUI's search folders (``loader_schema``); a name no longer there is
    refused before the run (``validate_inputs``: the message ComfyUI shows on the node), and ``folder``
    resolves it."""

    class FolderLoader(io.ComfyNode):
        @classmethod
        def loader_schema(cls, node_id: str, display_name: str, folder_tooltip: str, inputs: list, outputs: list,
                          description: str | None = None) -> io.Schema:
            folder = io.Combo.Input("model_folder", options=model_files.folder_names(kind), tooltip=folder_tooltip)
            return node_schema(cls, node_id, display_name, inputs=[folder, *inputs], outputs=outputs,
                               description=description)

        @classmethod
        def validate_inputs(cls, model_folder: str) -> bool | str:
            return model_files.validate_name(kind, model_folder, "model_folder")

        @classmethod
        def folder(cls, model_folder: str) -> Path:
            """The chosen folder, or FileNotFoundError naming it, the search folders and the source."""
            return model_files.resolve(kind, model_folder, "model_folder")

    return FolderLoader


# its description names LICENSE_URL, so it is MODEL_DESCRIPTION rather than the class docstring
class ModelLoader(folder_loader(MODEL)):
    @classmethod
    def define_schema(cls) -> io.Schema:
        outputs = [ModelType.Output("model", display_name="model",
                                    tooltip="The Ingredients transformer, managed by ComfyUI, for the pack's sampler "
                                            "and Project IDs."),
                   io.Model.Output("MODEL", display_name="MODEL",
                                   tooltip=("The same transformer as a ComfyUI MODEL, for KSampler, "
                                            "SamplerCustomAdvanced, LoRA loaders and MODEL patches; add the "
                                            "people with Ingredients Apply IDs."))]
        return cls.loader_schema("IngredientsModelLoader", "Load Ingredients Model", MODEL_FOLDER_TOOLTIP, [
            _dtype_input(DTYPES, MODEL_DTYPE_TOOLTIP),
            io.Combo.Input("routing_mode", options=list(ROUTING_MODES), default="official",
                           tooltip=("Default routing of ID features. official: every batch element uses "
                                    "the router of the first (negative-prompt) half, as the paper's code; "
                                    "per_sample: each half is routed on its own. Route IDs can override it.")),
            io.Combo.Input("weight_dtype", options=WEIGHT_DTYPES, default="default", optional=True,
                           tooltip=WEIGHT_DTYPE_TOOLTIP),
            io.Combo.Input("transformer_file", options=[FOLDER_OWN, *host.single_file_names()],
                           default=FOLDER_OWN, optional=True, tooltip=TRANSFORMER_FILE_TOOLTIP),
        ], outputs, description=MODEL_DESCRIPTION)

    @classmethod
    def execute(cls, model_folder: str, dtype: str, routing_mode: str, weight_dtype: str = "default",
                transformer_file: str = FOLDER_OWN) -> io.NodeOutput:
        settings = (model_folder, dtype, routing_mode, weight_dtype, transformer_file)
        payload = load_model(*settings)
        # how ComfyUI 0.33 rebuilds a MODEL as a plain ModelPatcher (its non-dynamic delegates under
        # DynamicVRAM: hooks, multi-GPU), as its own loaders register it
        payload.patcher.cached_patcher_init = (reload_model_patcher, settings)
        return io.NodeOutput(payload, payload.patcher)


def load_model(model_folder: str, dtype: str, routing_mode: str, weight_dtype: str = "default",
               transformer_file: str = FOLDER_OWN, disable_dynamic: bool = False) -> IngredientsModel:
    """The INGREDIENTS_MODEL payload (its ``patcher`` is the MODEL) for the loader's inputs."""
    from ..ingredients_core.weights.checkpoint import load_transformer

    folder = ModelLoader.folder(model_folder)
    config_file = model_files.require_file(folder / "scheduler" / "scheduler_config.json",
                                           "scheduler config", folder / "scheduler")
    scheduler_config = json.loads(config_file.read_text(encoding="utf-8"))
    _, offload = host.devices("diffusion")
    weights, transformer_config = transformer_source(folder, transformer_file)
    storage, compute = transformer_dtypes(weights, dtype, weight_dtype)
    layers = host.transformer_layers(storage, compute, fast_fp8=weight_dtype.endswith("_fast"))
    keep = stored_fp8(weights, weight_dtype) is not None  # fp8 tensors as stored, the others in compute
    transformer = load_transformer(weights, dtype=compute, weight_dtype=None if keep else storage, device=offload,
                                   keep_fp8=keep, config_file=transformer_config, **layers)
    weights = WeightsIdentity(folder, None if transformer_file == FOLDER_OWN else transformer_file,
                              host.dtype_name(storage))
    patcher = host.model_patcher(transformer, storage, compute, routing_mode, folder, disable_dynamic,
                                         weights)
    # the q-former's own patcher (Project IDs loads 0.15 B parameters, not 6.4 B); none under DynamicVRAM,
    # where ComfyUI keeps per-layer state on the modules and streams them itself: one patcher per layer
    projector = None if host.is_dynamic(patcher) else host.manage_projector(transformer)
    return IngredientsModel(transformer, patcher, scheduler_config, routing_mode, folder, projector, weights)


def reload_model_patcher(*settings, disable_dynamic: bool = False):
    """The MODEL loaded afresh from the loader's inputs (ComfyUI's ``cached_patcher_init`` factory)."""
    return load_model(*settings, disable_dynamic=disable_dynamic).patcher


class VAELoader(folder_loader(VAE)):
    """Loads the CogVideoX VAE (vae/ of the Ingredients folder) for the face canvas and decoding."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        vae = VAEType.Output("vae", display_name="vae", tooltip="The CogVideoX VAE, managed by ComfyUI.")
        return cls.loader_schema("IngredientsVAELoader", "Load Ingredients VAE",
                                 "Folder in models/ingredients holding vae/ (AutoencoderKLCogVideoX).",
                                 [_dtype_input(DTYPES, DTYPE_TOOLTIP)], [vae])

    @classmethod
    def execute(cls, model_folder: str, dtype: str) -> io.NodeOutput:
        from ..ingredients_core.encoders.vae import load_vae

        folder = cls.folder(model_folder)
        model_files.require_file(folder / "vae" / "config.json", "VAE config", folder / "vae")
        _, offload = host.devices("vae")
        vae = load_vae(folder, host.vae_dtype(dtype), offload)
        return io.NodeOutput(IngredientsVAE(vae, host.manage("vae", vae=vae), folder))


class T5Loader(folder_loader(T5)):
    """Loads the T5 v1.1 XXL encoder and tokenizer that ship with Ingredients (text_encoder/ and tokenizer/) into
    ComfyUI's own T5, which ComfyUI can load partially. Alternative: CLIPLoader (type sd3, a t5xxl fp8 file)
    with 'Encode Prompt (CLIP)'."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        t5 = T5Type.Output("t5", display_name="t5", tooltip="The T5 encoder and tokenizer.")
        return cls.loader_schema("IngredientsT5Loader", "Load Ingredients T5",
                                 "Folder in models/ingredients or models/text_encoders holding text_encoder/ and "
                                 "tokenizer/.", [_dtype_input(T5_DTYPES, T5_DTYPE_TOOLTIP)], [t5])

    @classmethod
    def execute(cls, model_folder: str, dtype: str) -> io.NodeOutput:
        from ..ingredients_core.encoders.text import load_tokenizer, text_encoder_config, text_encoder_tensors

        folder = cls.folder(model_folder)
        model_files.require_file(folder / "text_encoder" / "config.json", "T5 config", folder / "text_encoder")
        model_files.require_file(folder / "tokenizer" / "spiece.model", "T5 tokenizer", folder / "tokenizer",
                                 "tokenizer.json")
        config = text_encoder_config(folder)
        encoder = host.native_t5(config, text_encoder_tensors(folder), host.text_encoder_dtype(dtype))
        tokenizer = load_tokenizer(folder)
        return io.NodeOutput(IngredientsT5(tokenizer, encoder, host.manage("text", t5=encoder), folder, config))


def curricularface_dirs(encoder) -> list:
    """Where the identity check's optional CurricularFace file may be: the ``face_encoder/`` the loaded
    ArcFace model sits in (``face_encoder/models/antelopev2/glintr100.onnx``), then every Ingredients
    folder's ``face_encoder/``."""
    from ..ingredients_core.faces.paths import arcface_home

    dirs = [arcface_home(encoder.arcface.path)]
    for folder in model_files.find_folders(FACES).values():
        if folder / "face_encoder" not in dirs:
            dirs.append(folder / "face_encoder")
    return dirs


class FaceEncoderLoader(folder_loader(FACES)):
    """Loads the face models of face_encoder/: RetinaFace detector, ArcFace (glintr100.onnx, also found in
    models/insightface) and EVA02-CLIP-L."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return cls.loader_schema(
            "IngredientsFaceEncoderLoader", "Load Ingredients Face Encoder",
            "Folder in models/ingredients holding face_encoder/.",
            [io.Combo.Input("provider", options=PROVIDERS, default="auto",
                            tooltip=("ONNX Runtime provider for ArcFace. auto follows ComfyUI's device "
                                     "(CUDA when ComfyUI uses a GPU and onnxruntime-gpu is installed)."))],
            [FaceEncoderType.Output("face_encoder", display_name="face_encoder",
                                    tooltip="Detector, ArcFace and EVA-CLIP, ready for Encode Face.")])

    @classmethod
    def execute(cls, model_folder: str, provider: str) -> io.NodeOutput:
        from ..ingredients_core.faces import FaceEncoder, find_face_models
        from ..ingredients_core.identity.check import IdentityModels

        folder = cls.folder(model_folder)
        paths = find_face_models(model_files.search_dirs(folder / "face_encoder", [host.INSIGHTFACE_FOLDER]))
        _, offload = host.devices("face")
        # auto: ArcFace's providers follow the device ComfyUI has the face models on at each run
        encoder = FaceEncoder.load(paths, device=offload, dtype=host.face_dtype(),
                                   providers=None if provider == "auto" else [provider])
        patcher = host.manage("face", detector=encoder.detector, eva=encoder.eva)
        identity = IdentityModels.from_encoder(encoder, curricularface_dirs(encoder), offload)
        curricularface = identity.curricularface
        return io.NodeOutput(IngredientsFaceEncoder(
            encoder, patcher, curricularface,
            host.manage("face", curricularface=curricularface) if curricularface is not None else None,
            identity.curricularface_note))
