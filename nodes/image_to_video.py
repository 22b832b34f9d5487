"""Ingredients Image to Video: the face canvas as the image latent of the native MODEL path.

The canvas (the people's aligned crops in slot order, as the pack's sampler builds it) is encoded
with the pack's VAE or ComfyUI's CogVideoX VAE and put on positive and negative under
``concat_latent_image``, in raw VAE units (B, 16, latent frames, h, w): the canvas latent first,
zero frames after it, as the official pipeline lays them out. The MODEL scales it by the VAE's
0.7 as it scales every latent (ComfyUI's ``process_latent_in``). The empty LATENT has the same size.

``encoding``: ``mean`` is ComfyUI's way (its VAE encode returns the latent mean); ``official``
samples the latent with a generator seeded with ``canvas_seed`` on the VAE's device, as the official
pipeline does before it draws the noise (the pack's sampler, with the same seed and the VAE on the
transformer's device, starts from the same canvas latent).
"""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io, ui

from ..ingredients_core import InputError
from . import host
from .payloads import IDsType, IngredientsIDs, IngredientsVAE, VAEType
from .schema import MAX_SEED, node_schema, size_inputs, video_settings

logger = logging.getLogger(__name__)

ENCODINGS = ["mean", "official"]
LATENT_CHANNELS = 16
MAX_BATCH = 64


def _check_conditioning(value, name: str) -> None:
    if not isinstance(value, list) or not value or not all(isinstance(e, (list, tuple)) and len(e) == 2 for e in value):
        raise InputError(f"{name}: expected a ComfyUI CONDITIONING (from Ingredients Encode Prompt or "
                         f"CLIPTextEncode), got {type(value).__name__}")


def _pick_vae(vae: IngredientsVAE | None, comfy_vae, encoding: str) -> None:
    """Refuse a missing, doubled or unusable VAE with the fix."""
    if vae is None and comfy_vae is None:
        raise InputError("vae: connect Load Ingredients VAE to vae (or a CogVideoX VAE from VAELoader to comfy_vae) "
                         "to encode the face canvas.")
    if vae is not None and comfy_vae is not None:
        raise InputError("vae, comfy_vae: both are connected; connect only one (they encode the same canvas).")
    if comfy_vae is None:
        return
    if not host.is_cogvideox_vae(comfy_vae):
        raise InputError("comfy_vae: this VAE is not ComfyUI's CogVideoX VAE (ComfyUI 0.21 and later load one "
                         "with VAELoader; 0.3.x cannot): connect Load Ingredients VAE to vae instead.")
    if encoding == "official":
        raise InputError("encoding: official samples the canvas latent, and ComfyUI's VAE gives only its mean: "
                         "choose mean, or connect Load Ingredients VAE to vae for the official encoding.")


def encode_canvas_latent(canvas, height: int, width: int, batch: int, encoding: str, seed: int,
                         vae: IngredientsVAE | None, comfy_vae) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw canvas latent (B, 16, 1, h, w) float32, the encoded pixels as IMAGE (1, H, W, 3)).

    ``official``: one latent sample per video, drawn in turn from one generator seeded with ``seed``
    on the VAE's load device (the first equals the official single-video draw); ``mean``: the mean.
    """
    from ..ingredients_core.encoders.vae import canvas_pixels, encode_first_frame, spatial_factor

    if comfy_vae is not None:
        pixels = canvas_pixels(canvas, height, width)                       # (1, 3, H, W) in [-1, 1]
        image = (pixels / 2 + 0.5).permute(0, 2, 3, 1).contiguous()        # (1, H, W, 3) in [0, 1]
        first = host.comfy_vae_encode(comfy_vae, image)                     # (1, 16, 1, h, w), the mean
        return first.expand(batch, -1, -1, -1, -1).contiguous(), image.to(host.output_device())
    host.load(vae.patcher)
    pixels = canvas_pixels(canvas, height, width, spatial_factor(vae.vae))
    image = (pixels / 2 + 0.5).permute(0, 2, 3, 1).contiguous().to(host.output_device())
    official = encoding == "official"
    generator = torch.Generator(host.load_device(vae.patcher)).manual_seed(seed) if official else None
    first = encode_first_frame(vae.vae, canvas, height, width, torch.float32, generator, sample=official, count=batch)
    return first.to(host.output_device()), image


def image_latent(first: torch.Tensor, latent_frames: int) -> torch.Tensor:
    """(B, 16, latent_frames, h, w): the canvas latent ``first`` (B, 16, 1, h, w), then zero frames."""
    padding = first.new_zeros((first.shape[0], first.shape[1], latent_frames - 1, *first.shape[3:]))
    return torch.cat([first, padding], dim=2)


class ImageToVideo(io.ComfyNode):
    """For KSampler on the Ingredients MODEL: encodes the face canvas of the people (as the pack's sampler builds
    it) and puts it on positive and negative as the image latent the video starts from; gives the empty LATENT
    of the video's size. Official: 720 x 480, 49 frames."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(cls, "IngredientsImageToVideo", "Ingredients Image to Video", inputs=[
            io.Conditioning.Input("positive", tooltip="The prompt: Ingredients Encode Prompt or CLIPTextEncode."),
            io.Conditioning.Input("negative", tooltip=("The negative prompt: Ingredients Encode Prompt or "
                                                       "CLIPTextEncode (official: empty text).")),
            IDsType.Input("ids", tooltip="From Ingredients IDs: the people, in canvas slot order."),
            VAEType.Input("vae", optional=True,
                          tooltip="From Load Ingredients VAE (both encodings). Connect this or comfy_vae."),
            io.Vae.Input("comfy_vae", optional=True,
                         tooltip=("A CogVideoX VAE from ComfyUI's Load VAE (ComfyUI 0.21 and later; mean "
                                  "encoding only). Connect this or vae.")),
            *size_inputs(),
            io.Int.Input("batch_size", default=1, min=1, max=MAX_BATCH,
                         tooltip="Videos per run (the same canvas each; official encoding draws one sample each)."),
            io.Combo.Input("encoding", options=ENCODINGS, default="mean",
                           tooltip=("How the canvas becomes a latent. mean = ComfyUI's way (the VAE's latent "
                                    "mean); official = a latent sample drawn with canvas_seed, as the official "
                                    "pipeline (needs the Ingredients VAE).")),
            io.Int.Input("canvas_seed", default=42, min=0, max=MAX_SEED,
                         tooltip=("With encoding official: the seed of the canvas latent sample (the pack's "
                                  "sampler with this seed draws the same one); stays as set (KSampler's seed "
                                  "makes the noise). Ignored with mean.")),
        ], outputs=[
            io.Conditioning.Output("positive_with_image", display_name="positive",
                                   tooltip="The prompt with the canvas latent (concat_latent_image), for KSampler."),
            io.Conditioning.Output("negative_with_image", display_name="negative",
                                   tooltip="The negative prompt with the same canvas latent, for KSampler."),
            io.Latent.Output("latent", display_name="latent",
                             tooltip="The empty video LATENT (batch, 16, latent frames, height/8, width/8)."),
            io.Image.Output("canvas", display_name="canvas",
                            tooltip="The face canvas as encoded (1, height, width, 3), for a preview."),
        ])

    @classmethod
    def execute(cls, positive, negative, ids: IngredientsIDs, width: int, height: int, frames: int, batch_size: int,
                encoding: str, canvas_seed: int, vae: IngredientsVAE | None = None, comfy_vae=None) -> io.NodeOutput:
        from ..ingredients_core.faces import make_canvas
        from ..ingredients_core.encoders.vae import latent_frame_count

        video_settings(height=height, width=width, frames=frames)  # names the input at fault
        _check_conditioning(positive, "positive")
        _check_conditioning(negative, "negative")
        if encoding not in ENCODINGS:
            raise InputError(f"encoding: {encoding!r} is not one of {', '.join(ENCODINGS)}")
        _pick_vae(vae, comfy_vae, encoding)
        canvas = make_canvas([face.crop for face in ids.faces])
        first, image = encode_canvas_latent(canvas, height, width, batch_size, encoding, canvas_seed, vae, comfy_vae)
        latent_frames = latent_frame_count(frames)
        concat = image_latent(first, latent_frames)
        empty = torch.zeros((batch_size, LATENT_CHANNELS, latent_frames, height // 8, width // 8),
                            device=host.output_device())
        values = {"concat_latent_image": concat}
        return io.NodeOutput(host.conditioning_with(positive, values),
                             host.conditioning_with(negative, values),
                             {"samples": empty}, image, ui=ui.PreviewImage(image, cls=cls))
