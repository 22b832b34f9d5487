"""The Ingredients transformer: CogVideoX-I2V blocks plus routed ID layers.

Checkpoint keys match the official ``IngredientsTransformer3DModel``. Differences in computation,
none of which changes the result:

- ID tokens are projected once per generation (:meth:`IngredientsTransformer.project_ids`) and the
  step-independent keys/values of every routed layer are cached (:meth:`prepare_ids`); the official
  code recomputes both at every forward.
- All persons share one query projection and one output projection in the routed cross-attention.
- Any number of persons (1 to 4) instead of exactly two.

Host integration (as ComfyUI's ``comfy/ldm`` models): layers come from ``operations`` and attention
from ``attention`` (see :mod:`ingredients_core.model.layers`); the compute dtype is the dtype of
the inputs and the compute device their device, so the weights' storage dtype (fp8, ...) and where
a host keeps them are the host's business. The model keeps no device and no tensor outside its
parameters and buffers.

Shapes: ``B`` batch, ``F`` latent frames, ``C`` channels, ``H x W`` latent size, ``N`` video tokens
(``F * H/p * W/p``), ``S`` text tokens, ``P`` persons, ``T`` ID tokens per person, ``D`` width.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

import torch
from torch import nn

from .config import TransformerConfig
from ..routing.plan import StepRouting
from .cogvideox import CogVideoXBlock, PatchEmbed
from .id_modules import FacialProjector, IDRouter, RoutedCrossAttention
from .layers import TORCH_OPS, AdaptiveOutputNorm, AttentionFn, TimestepEmbedding, sdpa_attention, timestep_features

logger = logging.getLogger(__name__)

#: a per-block replace: (video (B, N, D), text (B, S, D), emb (B, time_dim), rotary, original) -> (video, text)
BlockReplace = Callable[..., tuple[torch.Tensor, torch.Tensor]]


@dataclass
class IDState:
    """ID tokens of one generation and the per-layer tensors derived from them (no step dependence)."""

    tokens: torch.Tensor                                  # (P, T, token_dim)
    cross_kv: list[tuple[torch.Tensor, torch.Tensor]]     # per routed layer: k, v (P, heads, T, d)
    router_keys: list[torch.Tensor]                       # per routed layer: (P, token_dim)

    @property
    def num_ids(self) -> int:
        return self.tokens.shape[0]


class IngredientsTransformer(nn.Module):
    """CogVideoX-5B-I2V transformer with Ingredients' q-former, routed cross-attention and router."""

    def __init__(self, config: TransformerConfig, operations=None, attention: Optional[AttentionFn] = None):
        super().__init__()
        ops = operations or TORCH_OPS
        attention = attention or sdpa_attention
        self.config = config
        c, dim = config, config.inner_dim
        # 1. patch + text embedding (learned positional embedding for the I2V model)
        self.patch_embed = PatchEmbed(c, ops)
        # 2. timestep embedding
        self.time_embedding = TimestepEmbedding(dim, c.time_embed_dim, c.timestep_activation_fn, ops)
        # 3. CogVideoX blocks
        self.transformer_blocks = nn.ModuleList(CogVideoXBlock(c, ops, attention) for _ in range(c.num_layers))
        self.norm_final = ops.LayerNorm(dim, eps=c.norm_eps, elementwise_affine=c.norm_elementwise_affine)
        # 4. output
        self.norm_out = AdaptiveOutputNorm(c.time_embed_dim, dim, c.norm_elementwise_affine, c.norm_eps, ops)
        self.proj_out = ops.Linear(dim, c.patch_size * c.patch_size * c.out_channels)
        # 5. ID modules
        ids = c.ids
        self.local_facial_extractor = FacialProjector(ids, ops, attention)
        self.perceiver_cross_attention = nn.ModuleList(
            RoutedCrossAttention(dim, ids.token_dim, ids.heads, ops, attention) for _ in range(c.num_routed_layers))
        self.router = nn.ModuleList(
            IDRouter(dim, ids.token_dim, ids.num_tokens, ops) for _ in range(c.num_routed_layers))

    def placement(self) -> tuple[torch.device, torch.dtype]:
        """Where the weights are now and the dtype of the unquantised ones: a default for callers
        that do not say where to compute (a host that streams the model always says)."""
        return self.norm_final.weight.device, self.norm_final.weight.dtype

    # -- ID tokens -------------------------------------------------------------------------------
    def project_ids(self, faces: Sequence, device: Optional[torch.device] = None,
                    dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """Face features of P persons -> ID tokens (P, T, token_dim), computed on ``device`` in ``dtype``.

        ``faces``: objects with ``id_cond`` (1, id_cond_dim) and ``vit_hidden`` (5 x (1, S, vit_dim)),
        such as :class:`ingredients_core.faces.FaceFeatures`, or ``(id_cond, vit_hidden)`` pairs.
        """
        pairs = [(f.id_cond, f.vit_hidden) if hasattr(f, "id_cond") else tuple(f) for f in faces]
        if not pairs:
            raise ValueError("project_ids needs the face features of at least one person")
        default_device, default_dtype = self.placement()
        dev, dt = device or default_device, dtype or default_dtype
        id_cond = torch.cat([p[0].reshape(1, -1) for p in pairs]).to(dev, dt)
        scales = len(pairs[0][1])
        vit = [torch.cat([p[1][i].reshape(1, *p[1][i].shape[-2:]) for p in pairs]).to(dev, dt)
               for i in range(scales)]
        return self.local_facial_extractor(id_cond, vit)

    def prepare_ids(self, tokens: torch.Tensor, device: Optional[torch.device] = None,
                    dtype: Optional[torch.dtype] = None) -> IDState:
        """Cache every routed layer's keys/values and router keys for these ID tokens (once per run)."""
        default_device, default_dtype = self.placement()
        tokens = tokens.to(device or default_device, dtype or default_dtype)
        return IDState(
            tokens=tokens,
            cross_kv=[attn.keys_values(tokens) for attn in self.perceiver_cross_attention],
            router_keys=[router.person_keys(tokens) for router in self.router])

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                timestep: torch.Tensor, image_rotary_emb: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                ids: Optional[IDState] = None, routing: Optional[StepRouting] = None,
                cache=None, ff_chunk: Optional[int] = None,
                block_replace: Optional[Mapping[int, BlockReplace]] = None) -> torch.Tensor:
        """hidden_states (B, F, in_channels, H, W), encoder_hidden_states (B, S, text_dim), timestep (B,)
        -> (B, F, out_channels, H, W), in the dtype of ``hidden_states`` (the compute dtype).

        Without ``ids`` no ID features are injected. ``cache``: a step cache (:mod:`..step_cache`)
        that may reuse the previous step's block residual instead of running the blocks.
        ``ff_chunk``: feed-forward token chunk (less activation memory, same result).
        ``block_replace``: {block index i: replace} run instead of CogVideoX block i, as
        ``replace(video, text, emb, rotary, original) -> (video, text)`` where ``original(video, text)``
        runs the block (a host's per-block patches: ComfyUI's ``patches_replace["dit"]``); the ID
        injection after a routed block is not part of the block.
        """
        c = self.config
        batch, frames, _, height, width = hidden_states.shape
        # 1. time embedding: (B, time_embed_dim)
        features = timestep_features(timestep, c.inner_dim, c.flip_sin_to_cos, c.freq_shift)
        emb = self.time_embedding(features.to(hidden_states.dtype))
        # 2. tokens: text (B, S, D), video (B, N, D)
        text, video = self.patch_embed(encoder_hidden_states.to(hidden_states.dtype), hidden_states)
        # 3. blocks, with ID injection after every routed block, or the cached residual
        if cache is not None and cache.skip(emb):
            video, text = cache.reuse(video, text)
        else:
            start = (video, text)
            video, text = self._blocks(video, text, emb, image_rotary_emb, ids, routing, ff_chunk, block_replace)
            if cache is not None:
                cache.store(video - start[0], text - start[1])
        # 4. final norm (per token: the text tokens do not change the video's), adaptive norm,
        #    projection: (B, N, p*p*out)
        video = self.proj_out(self.norm_out(self.norm_final(video), emb))
        # 5. unpatchify: (B, F, out, H, W)
        p = c.patch_size
        out = video.reshape(batch, frames, height // p, width // p, -1, p, p)
        return out.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)

    def _blocks(self, video, text, emb, rotary, ids: Optional[IDState], routing: Optional[StepRouting],
                ff_chunk: Optional[int], block_replace: Optional[Mapping[int, BlockReplace]] = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        routed = 0
        for i, block in enumerate(self.transformer_blocks):
            replace = block_replace.get(i) if block_replace else None
            if replace is None:
                video, text = block(video, text, emb, rotary, ff_chunk)              # (B, N, D), (B, S, D)
            else:
                def original(v, t, block=block):
                    return block(v, t, emb, rotary, ff_chunk)

                video, text = replace(video, text, emb, rotary, original)
            if ids is not None and self.config.is_routed(i):
                video = self._inject(routed, video, ids, routing)
                routed += 1
        return video, text

    def _inject(self, k: int, video: torch.Tensor, ids: IDState, routing: Optional[StepRouting]) -> torch.Tensor:
        """Add the routed ID features of routed layer ``k`` to the video tokens (B, N, dim)."""
        return video + self.id_features(k, video, ids, routing)

    def id_features(self, k: int, video: torch.Tensor, ids: IDState,
                    routing: Optional[StepRouting]) -> torch.Tensor:
        """The ID features routed layer ``k`` adds to the video tokens: (b, N, dim), b = 1 in the
        official mode (broadcast over the batch), else B; exactly zero where nobody is assigned."""
        if routing is None:
            routing = StepRouting.default(ids.num_ids, self.config.local_face_scale, video.device)
        if not routing.enabled:
            return video.new_zeros(1, 1, 1)
        # official mode: batch element 0 decides for the whole batch (the official zip quirk)
        source = video[:1] if routing.mode == "official" else video
        logits = self.router[k](source, ids.router_keys[k])                     # (b, N, P)
        assignment, strengths = routing.assign(logits), routing.strengths(logits)  # (b, N, P), (P,)
        if routing.recorder is not None:
            routing.recorder.add(k, assignment * (strengths > 0))
        weights = assignment * strengths
        persons = [j for j, on in enumerate(routing.on) if on] if routing.on else None
        features = self.perceiver_cross_attention[k](source, ids.cross_kv[k], weights, persons)  # (b, N, dim)
        return routing.scale * features
