"""The IDs on the native MODEL: Apply IDs (a MODEL patch) and the routing it recorded (for Routing Maps).

*Ingredients Apply IDs* clones the MODEL and puts the routed ID tokens on it as one patch
(``nodes/host/patches.py``); KSampler or SamplerCustomAdvanced then run the routed ID layers at every
model evaluation, with everything Route IDs sets (routing mode, per-person strength, masks, step
ranges). *Ingredients MODEL Routing* comes after the sampler (it takes the sampler's LATENT only to
run after it) and gives what the router recorded during that run, for Routing Maps.
"""

from __future__ import annotations

import logging

from comfy_api.latest import io

from ..ingredients_core import InputError
from . import host, qformer_lora
from .payloads import IngredientsRoutedIDs, IngredientsRouting, RoutedIDsType, RoutingType, check_projected_with
from .schema import node_schema

logger = logging.getLogger(__name__)



def _check_tokens(routed: IngredientsRoutedIDs, transformer, config) -> None:
    check_projected_with(routed.tokens, getattr(config, "weights", None), config.model_folder, "this MODEL")
    width = int(routed.tokens.tokens.shape[-1])
    if width != transformer.config.ids.token_dim:
        raise InputError(f"routed_ids: ID tokens {width} wide, this MODEL reads {transformer.config.ids.token_dim}: "
                         "project the IDs with the same model.")


class ApplyIDs(io.ComfyNode):
    """Puts the people on the Ingredients MODEL (a MODEL patch, like IPAdapter's): KSampler and
    SamplerCustomAdvanced then keep each person's identity, routed as Route IDs says (mode, strengths, masks,
    step ranges). A second Apply IDs on the same MODEL replaces the first."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(cls, "IngredientsApplyIDs", "Ingredients Apply IDs", inputs=[
            io.Model.Input("model", tooltip=("The MODEL output of Load Ingredients Model (LoRA loaders and other "
                                             "MODEL patches may come in between).")),
            RoutedIDsType.Input("routed_ids", tooltip=("From Ingredients Route IDs (its 'from model' routing mode "
                                                       "is the loader's).")),
        ], outputs=[io.Model.Output("MODEL", display_name="MODEL",
                                    tooltip="The MODEL with the people applied, for KSampler or a guider.")])

    @classmethod
    def execute(cls, model, routed_ids: IngredientsRoutedIDs) -> io.NodeOutput:
        return io.NodeOutput(put_ids(model, routed_ids))


def put_ids(model, routed_ids: IngredientsRoutedIDs):
    """A clone of the Ingredients MODEL ``model`` carrying the routed IDs (Apply IDs, and the
    Ingredients Sampler on its MODEL); the "from model" routing mode is the loader's."""
    from ..ingredients_core.routing.host_ids import IDPatch
    from ..ingredients_core.routing.plan import RoutingError

    transformer = host.transformer_of(model)
    config = model.model.model_config
    _check_tokens(routed_ids, transformer, config)
    qformer_lora.check_tokens_have_model_qformer(routed_ids.tokens, model)
    options = routed_ids.routing_for(config.routing_mode)
    try:
        options.check(len(routed_ids.tokens.ids))
    except RoutingError as error:
        raise InputError(f"routed_ids: {error}") from error
    patch = IDPatch(routed_ids.tokens.tokens, options, routed_ids.tokens.model_folder)
    return host.apply_ids(model, patch)


class ModelRouting(io.ComfyNode):
    """Which person the router gave each video region during the last sampler run of this MODEL (KSampler,
    SamplerCustomAdvanced), for Routing Maps: the counterpart of the Ingredients Sampler's routing output. Runs
    after the sampler because it takes its LATENT."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        model = io.Model.Input("model", tooltip="The MODEL from Ingredients Apply IDs that the sampler used.")
        samples = io.Latent.Input("samples", tooltip=("The sampler's output LATENT (only so that this node runs after "
                                                      "the sampler; the latents are not read)."))
        routing = RoutingType.Output("routing", display_name="routing",
                                     tooltip="Routing per routed layer (last step and mean over steps).")
        return node_schema(cls, "IngredientsModelRouting", "Ingredients MODEL Routing", inputs=[model, samples],
                           outputs=[routing])

    @classmethod
    def execute(cls, model, samples) -> io.NodeOutput:
        transformer = host.transformer_of(model)
        patch = host.ids_patch(model)
        if patch is None:
            raise InputError("model: this MODEL carries no IDs: connect the MODEL output of Ingredients Apply IDs.")
        recorded = patch.recorder.finished if patch.recorder is not None else None
        if recorded is None:
            raise InputError("model: no routing was recorded with this MODEL yet (no sampler has run it, or every "
                             "person had strength 0 or was outside its start/end range at every step).")
        frames, rows, cols = recorded.grid
        unit = transformer.config.patch_size * 8
        return io.NodeOutput(routing_payload(recorded, rows * unit, cols * unit, (frames - 1) * 4 + 1))


def routing_payload(recorded, height: int, width: int, frames: int) -> IngredientsRouting:
    """What a run's router recorded (a core ``RoutingRecorder``, maps on the CPU) per routed layer, for
    a video of ``height x width x frames``; no layers when nothing was recorded (nobody routed)."""
    layers = tuple(sorted(recorded.last)) if recorded is not None else ()
    return IngredientsRouting(layers, tuple(recorded.maps("last", k) for k in layers),
                              tuple(recorded.maps("mean", k) for k in layers), height, width, frames)
