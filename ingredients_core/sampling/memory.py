"""Memory estimates a host needs to decide how much of a model to keep on the GPU.

The figures are activation bytes of one transformer forward and of a VAE decode, from the token
count and the widths; weights are not included (a host counts those itself). They are estimates
with a margin, not measurements: ``bench/bench_memory.py`` and ``bench/gpu_check.py`` print what
a GPU really used.
"""

from __future__ import annotations

from dataclasses import dataclass

#: (B, S+N, D)-sized tensors alive at the peak of a block: the residual streams of video and text
#: and their gated update (3), plus the larger of the attention phase (joined input, q, k, v, the
#: attention output and its projection: 6) and the feed-forward phase (joined input and output: 2,
#: plus the 4 D wide hidden state and its GELU: 8 per chunked token share).
RESIDUAL_COPIES = 3
ATTENTION_COPIES = 6
FF_IO_COPIES = 2
FF_HIDDEN_COPIES = 8
MARGIN = 1.25


@dataclass(frozen=True)
class ForwardSize:
    """Sizes of one transformer forward."""

    batch: int            # 2 with classifier-free guidance
    video_tokens: int     # latent frames x (h / p) x (w / p)
    text_tokens: int      # 226
    width: int            # heads x head size (3072)
    id_heads: int
    id_head_dim: int
    num_ids: int


def forward_size(config, batch: int, latent_frames: int, latent_height: int, latent_width: int,
                 num_ids: int, text_tokens: int = 226) -> ForwardSize:
    p = config.patch_size
    video = latent_frames * (latent_height // p) * (latent_width // p)
    return ForwardSize(batch, video, text_tokens, config.inner_dim, config.ids.heads, config.ids.attn_head_dim,
                       num_ids)


def transformer_activation_bytes(size: ForwardSize, element_size: int, ff_chunk: int | None = None) -> int:
    """Peak activation bytes of one forward (see the constants above), with a 25 % margin.

    The routed cross-attention adds its query and one output per person (B, N, heads x head size);
    attention kernels are assumed not to materialise the (S+N)^2 score matrix (SDPA, flash, sage,
    xformers and ComfyUI's split attention all avoid it).
    """
    tokens = size.text_tokens + size.video_tokens
    row = size.batch * tokens * size.width                     # elements of one (B, S+N, D) tensor
    ff_share = 1.0 if ff_chunk is None else min(1.0, ff_chunk / tokens)
    phase = max(ATTENTION_COPIES, FF_IO_COPIES + FF_HIDDEN_COPIES * ff_share)
    routed = size.batch * size.video_tokens * size.id_heads * size.id_head_dim * (2 + size.num_ids)
    return int(MARGIN * element_size * ((RESIDUAL_COPIES + phase) * row + routed))


def t5_activation_bytes(config: dict, batch: int, tokens: int) -> int:
    """Peak activation bytes of one T5 encoder forward in float32 (ComfyUI's text-encoder compute
    dtype), from its HF config: the gated feed-forward's (batch, tokens, d_ff) states (3), a few
    (batch, tokens, d_model) streams (6) and the attention scores (2 x heads x tokens), with a margin."""
    d_ff, d_model, heads = config["d_ff"], config["d_model"], config["num_heads"]
    return int(MARGIN * 4 * batch * tokens * (3 * d_ff + 6 * d_model + 2 * heads * tokens))


#: Channels of the CogVideoX VAE decoder at full resolution (its last up block) and the number of
#: such (channels, 8 frames, H, W) tensors alive at its peak (input, two convolution outputs,
#: normalisation and the causal-convolution cache).
VAE_FULL_RES_CHANNELS = 128
VAE_LIVE_TENSORS = 6


def vae_decode_bytes(latent_frames: int, latent_height: int, latent_width: int, element_size: int,
                     tiled: bool) -> int:
    """Estimated peak bytes of a CogVideoX VAE decode, with the margin.

    The decoder works on two latent frames at a time (8 video frames); its peak is at full
    resolution (:data:`VAE_FULL_RES_CHANNELS` channels, :data:`VAE_LIVE_TENSORS` tensors). Tiled
    decoding works on overlapping tiles of 240 x 360 pixels (diffusers' default for CogVideoX),
    288 x 432 with the blending overlap.
    """
    pixels = latent_height * 8 * latent_width * 8
    if tiled:
        pixels = min(pixels, 288 * 432)
    frames = min(8, 4 * latent_frames)
    return int(MARGIN * element_size * VAE_LIVE_TENSORS * VAE_FULL_RES_CHANNELS * frames * pixels)
