"""The native path's conditioning facts in a real ComfyUI, printed as JSON.

``tokens``: how many T5 tokens *CLIPTextEncode* gets from ComfyUI's own tokenizers: ``cogvideox``
(where ComfyUI has it), ``sd3`` as loaded, and ``sd3`` after the core *T5TokenizerOptions* node
(min_length 226), for a short and a long prompt. ``vae``: ComfyUI's real ``comfy.sd.VAE`` on a
full-size CogVideoX VAE state dict (diffusers' default config, seeded random weights): whether the
pack sees it as CogVideoX (``host.is_cogvideox_vae``), the largest relative difference between
Image to Video's ``comfy_vae`` canvas latent and the diffusers latent mean, and the largest
difference between ComfyUI's decode and the pack's of the same raw latents. ComfyUI 0.3.x has no
CogVideoX VAE: ``cogvideox`` is false there (with the load error, if any).

``python real_conditioning_check.py COMFYUI_PATH PACK_DIR`` (ComfyUI's interpreter).
"""

import importlib
import json
import sys

from real_tokenizer_check import load_pack

HEIGHT, WIDTH = 64, 96


def _relative(a, b) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


class OptionsOnlyClip:
    """What *T5TokenizerOptions* touches of ``comfy.sd.CLIP``: ``clone`` and ``set_tokenizer_option``."""

    def __init__(self):
        self.tokenizer_options = {}

    def clone(self):
        return OptionsOnlyClip()

    def set_tokenizer_option(self, name, value):
        self.tokenizer_options[name] = value


def token_counts() -> dict:
    """T5 tokens CLIPTextEncode's ``clip.tokenize(text)`` gives per tokenizer, short and long prompt."""
    import importlib.util

    import comfy.text_encoders.sd3_clip as sd3
    from comfy_extras.nodes_cond import T5TokenizerOptions

    clip = T5TokenizerOptions.execute(OptionsOnlyClip(), 0, 226)
    clip = clip.args[0] if hasattr(clip, "args") else clip[0]
    setups = {"sd3": (sd3.SD3Tokenizer(), {}), "sd3+T5TokenizerOptions": (sd3.SD3Tokenizer(), clip.tokenizer_options)}
    if importlib.util.find_spec("comfy.text_encoders.cogvideo") is not None:
        from comfy.text_encoders.cogvideo import CogVideoXTokenizer

        setups["cogvideox"] = (CogVideoXTokenizer(), {})
    out = {}
    for name, (tokenizer, options) in setups.items():
        kwargs = {"tokenizer_options": options} if options else {}
        out[name] = [sum(len(b) for b in tokenizer.tokenize_with_weights(text, **kwargs)["t5xxl"])
                     for text in ("Two men are seated in a dimly lit room.", "a very long prompt " * 120)]
    return out


def main(comfyui: str, pack_dir: str) -> dict:
    sys.path[0] = comfyui  # not this folder: its comfy stand-ins would shadow the real ones
    from comfy.cli_args import args

    args.cpu = True
    return {"tokens": token_counts(), "vae": vae_check(pack_dir)}


def vae_check(pack_dir: str) -> dict:
    import comfy.sd
    import numpy as np
    import torch
    from diffusers import AutoencoderKLCogVideoX

    text_node = load_pack(pack_dir)
    pack = text_node.__name__.removesuffix(".nodes.text")
    host = importlib.import_module(f"{pack}.nodes.host")
    to_video = importlib.import_module(f"{pack}.nodes.image_to_video")
    core_vae = importlib.import_module(f"{pack}.ingredients_core.encoders.vae")
    canvas = importlib.import_module(f"{pack}.ingredients_core.faces.canvas")

    torch.manual_seed(0)
    reference = AutoencoderKLCogVideoX().eval().requires_grad_(False)
    try:
        comfy_vae = comfy.sd.VAE(sd=reference.state_dict())
    except Exception as error:  # noqa: BLE001 (reported: 0.3.x cannot build it)
        return {"cogvideox": False, "error": type(error).__name__}
    if not host.is_cogvideox_vae(comfy_vae):
        return {"cogvideox": False}
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    image = canvas.make_canvas(crops)
    ours, _ = to_video.encode_canvas_latent(image, HEIGHT, WIDTH, 1, "mean", 0, None, comfy_vae)
    want = core_vae.encode_first_frame(reference, image, HEIGHT, WIDTH, torch.float32, sample=False)
    latents = torch.randn(1, 16, 3, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(1))
    frames = comfy_vae.decode(latents)                                          # (1, T, H, W, 3)
    pack_frames = core_vae.decode_raw(reference, latents, tiling=False, slicing=False)
    difference = (frames.reshape(pack_frames.shape).float() - pack_frames).abs()
    return {"cogvideox": True, "latent_shape": list(ours.shape), "encode": _relative(ours, want),
            "frames_shape": list(pack_frames.shape), "decode_max": float(difference.max()),
            "decode_mean": float(difference.mean())}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:3])))
