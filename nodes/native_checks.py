"""What the native MODEL refuses before it samples, and the per-block replaces it honours.

ComfyUI calls ``IngredientsBaseModel.extra_conds`` once per conditioning entry when a sampler starts
(after the MODEL is loaded, its object patches set and ``model.current_patcher`` set): the checks
here run there, so a wiring the model cannot sample fails on the sampler node before the first step,
with the fix. Plain Python on the objects ComfyUI hands over (no ComfyUI import; ``host/model.py``
calls it):

- :func:`check_size`: a latent the checkpoint's learned positions do not cover (the pack sampler's
  check, ``GenerationSettings.check_model``);
- :func:`check_canvas`: no canvas latent, or one with another frame count than the sampled latent;
- :func:`check_model_sampling`: a ``model_sampling`` that is not v-prediction on a discrete schedule
  (*ModelSamplingSD3*, *ModelSamplingFlux*, ...);
- :func:`check_model_options` / :func:`block_replaces`: MODEL patches the model cannot honour
  (*PerturbedAttentionGuidance*, ``patches_replace`` other than ``("double_block", i)``, ``patches``);
  ``("double_block", i)`` replaces (*SkipLayerGuidanceDiT*) become the core transformer's
  ``block_replace`` (:func:`core_block_replace`).
"""

from __future__ import annotations

from typing import Callable, Optional
from ..ingredients_core import InputError

MODEL_NAME = "Ingredients MODEL"
SAMPLING_FIX = ("the Ingredients model predicts v on CogVideoX's discrete 1000-step schedule (zero terminal SNR), "
                "as trained: remove that node, or use ModelSamplingDiscrete with sampling v_prediction and zsnr on "
                "(the MODEL's own sampling)")
# model_sampling base classes of ComfyUI's model-sampling nodes -> the node that puts them on a MODEL
SAMPLING_NODES = {
    "ModelSamplingDiscreteFlow": "ModelSamplingSD3 (or ModelSamplingAuraFlow)",
    "ModelSamplingFlux": "ModelSamplingFlux",
    "ModelSamplingContinuousV": "ModelSamplingContinuousV",
    "ModelSamplingContinuousEDM": "ModelSamplingContinuousEDM",
    "StableCascadeSampling": "ModelSamplingStableCascade",
}
PATCH_NODES = {"attn1": "PerturbedAttentionGuidance or another attention replace (attn1)",
               "attn2": "an attention replace (attn2: IPAdapter-style nodes)"}
BlockReplace = Callable  # (video, text, emb, rotary, original(video, text)) -> (video, text)


# -- the latent ----------------------------------------------------------------------------------
def check_size(config, noise_shape, window_frames: Optional[int] = None, schedule: Optional[str] = None) -> None:
    """Refuse a latent (B, 16, F, H, W) whose size the checkpoint's learned positions do not cover
    (``window_frames``: the frames of a context window when ComfyUI samples the video in windows,
    ``schedule`` the handler's schedule that made it; ``native_windows.check_run`` decides)."""
    from ..ingredients_core.sampling.settings import GenerationSettings, SettingsError

    frames, height, width = window_frames or noise_shape[2], noise_shape[3], noise_shape[4]
    settings = GenerationSettings(height=height * 8, width=width * 8, frames=(frames - 1) * 4 + 1)
    try:
        settings.check_model(config)
    except SettingsError as error:
        w, h, f = config.sample_width * 8, config.sample_height * 8, config.sample_frames
        if window_frames:
            raise InputError(
                f"{MODEL_NAME}: a context window of {window_frames} latent frames ({settings.frames} frames"
                f"{', schedule ' + schedule if schedule else ''}) at {width * 8} x {height * 8}; this checkpoint takes "
                f"windows of exactly {(f - 1) // 4 + 1} latent frames ({f} frames) at {w} x {h}: {error} Use "
                f"Ingredients Long Video, or Context Windows (Manual) with context_length {(f - 1) // 4 + 1}, dim 2 "
                "and the standard_static schedule (batched leaves a shorter last window).") from error
        longer = (f" For more than {f} frames, put Ingredients Long Video on the MODEL (windows of {f} frames)."
                  if settings.frames > f and (width * 8, height * 8) == (w, h) else "")
        raise InputError(
            f"{MODEL_NAME}: the latent is {width * 8} x {height * 8} x {settings.frames} frames (width x height x "
            f"frames); this checkpoint takes {w} x {h} x {f} only: {error} Set width {w}, height {h}, "
            f"frames {f} on Ingredients Image to Video (or on the node that made the empty latent).{longer}"
        ) from error


def no_canvas_error(prompt_type: Optional[str]) -> ValueError:
    which = f"the {prompt_type} conditioning" if prompt_type else "a conditioning"
    return ValueError(
        f"{MODEL_NAME}: {which} has no canvas latent (concat_latent_image): the model is image-to-video and would "
        "sample on a blank canvas, without the people. Put Ingredients Image to Video between the prompts and the "
        "sampler and connect its positive, negative and LATENT outputs.")


def check_canvas(image_shape, noise_shape) -> None:
    """Refuse a canvas latent (B, 16, F, H, W) whose channels, size or frames differ from the video's."""
    if tuple(image_shape[1:]) != tuple(noise_shape[1:]):
        def frames(f):
            return (f - 1) * 4 + 1
        raise InputError(
            f"{MODEL_NAME}: the canvas latent (concat_latent_image) is {tuple(image_shape[1:])} (channels, latent "
            f"frames, height, width: {frames(image_shape[2])} frames), the sampled latent {tuple(noise_shape[1:])} "
            f"({frames(noise_shape[2])} frames): sample the LATENT output of the same Ingredients Image to Video, "
            "or make the empty latent with its width, height and frames.")


# -- model sampling ------------------------------------------------------------------------------
def check_model_sampling(model_sampling) -> None:
    """Refuse a ``model_sampling`` other than v-prediction on a discrete schedule (the trained one)."""
    names = [cls.__name__ for cls in type(model_sampling).__mro__]
    node = next((SAMPLING_NODES[n] for n in names if n in SAMPLING_NODES), None)
    if node is not None or not hasattr(model_sampling, "num_timesteps"):
        kind = "flow-matching" if "CONST" in names else "continuous"
        raise InputError(f"{MODEL_NAME}: {node or type(model_sampling).__name__} is on this MODEL (a {kind} "
                         f"model_sampling: a shift or sigma range of another model family does not apply); "
                         f"{SAMPLING_FIX}.")
    if "V_PREDICTION" not in names:
        prediction = next((n for n in names if n.isupper()), type(model_sampling).__name__)
        raise InputError(f"{MODEL_NAME}: the MODEL's sampling predicts {prediction} (ModelSamplingDiscrete with "
                         f"sampling {prediction.lower()}?); {SAMPLING_FIX}.")


# -- MODEL patches -------------------------------------------------------------------------------
def check_model_options(model_options: dict, blocks: int) -> None:
    """Refuse, before sampling, the MODEL patches the model cannot honour: PerturbedAttentionGuidance
    (a UNet's middle-block attention) and ``transformer_options`` patches (:func:`block_replaces`)."""
    for function in model_options.get("sampler_post_cfg_function", []):
        if "PerturbedAttentionGuidance" in getattr(function, "__qualname__", "").split("."):
            raise InputError(
                f"{MODEL_NAME}: PerturbedAttentionGuidance replaces the self-attention of a UNet's middle block "
                "(patches_replace attn1 ('middle', 0, 0)); the Ingredients transformer is a DiT without one, so "
                "it would do nothing: remove it (SkipLayerGuidanceDiT works on this MODEL: double_layers are "
                f"its blocks 0 to {blocks - 1}).")
    block_replaces(model_options.get("transformer_options", {}), blocks)


def block_replaces(transformer_options: dict, blocks: int) -> dict:
    """{block index: ComfyUI replace} from ``patches_replace["dit"][("double_block", i)]``; every other
    replace or patch is refused naming its key (the model would otherwise ignore it)."""
    replaces = {}
    for name, table in (transformer_options.get("patches_replace") or {}).items():
        for key, patch in table.items():
            if name == "dit" and isinstance(key, tuple) and len(key) == 2 and key[0] == "double_block":
                if not 0 <= key[1] < blocks:
                    raise InputError(f"{MODEL_NAME}: a block replace (SkipLayerGuidanceDiT double_layers?) names "
                                     f"block {key[1]}; the model has blocks 0 to {blocks - 1}.")
                replaces[key[1]] = patch
                continue
            if name == "dit" and isinstance(key, tuple) and key and key[0] == "single_block":
                raise InputError(f"{MODEL_NAME}: SkipLayerGuidanceDiT's single_layers name block {key[1:]} of the "
                                 "'single' kind, which this model does not have (its CogVideoX blocks are all of one "
                                 f"kind: double_layers, 0 to {blocks - 1}): clear single_layers (its default is "
                                 "'7, 8, 9') and name the blocks to skip in double_layers.")
            node = PATCH_NODES.get(name, "a MODEL patch")
            raise InputError(f"{MODEL_NAME}: {node} sets patches_replace[{name!r}][{key!r}], which the Ingredients "
                             "transformer cannot honour (it has only 'dit' ('double_block', i) replaces, one per "
                             f"CogVideoX block 0 to {blocks - 1}): remove that node.")
    for name, patches in (transformer_options.get("patches") or {}).items():
        if patches:
            raise InputError(f"{MODEL_NAME}: a MODEL patch sets transformer_options patches[{name!r}], which the "
                             "Ingredients transformer never calls: remove that node.")
    return replaces


def core_block_replace(replaces: dict, transformer_options: dict) -> Optional[dict[int, BlockReplace]]:
    """ComfyUI's ``("double_block", i)`` replaces as the core transformer's ``block_replace``: each is
    called as a DiT's (``{"img", "txt", "vec", "pe", "transformer_options"}``, ``{"original_block",
    "transformer_options"}``) and returns ``{"img", "txt"}`` (a replace that returns its args, SLG's
    skip, leaves the block out)."""
    if not replaces:
        return None

    def wrap(patch) -> BlockReplace:
        def replace(video, text, emb, rotary, original):
            def original_block(args: dict) -> dict:
                v, t = original(args["img"], args["txt"])
                return {"img": v, "txt": t}

            out = patch({"img": video, "txt": text, "vec": emb, "pe": rotary,
                         "transformer_options": transformer_options},
                        {"original_block": original_block, "transformer_options": transformer_options})
            return out["img"], out.get("txt", text)

        return replace

    return {i: wrap(patch) for i, patch in replaces.items()}
