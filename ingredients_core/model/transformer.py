"""The Ingredients transformer: CogVideoX-I2V blocks (from diffusers) plus routed ID layers.

Checkpoint keys match the official ``IngredientsTransformer3DModel``. Differences in computation,
none of which changes the result:

- ID tokens are projected once per generation (:meth:`IngredientsTransformer.project_ids`) and the
  step-independent keys/values of every routed layer are cached (:meth:`prepare_ids`); the official
  code recomputes both at every forward.
- All persons share one query projection and one output projection in the routed cross-attention.
- Any number of persons (1 to 4) instead of exactly two.

Shapes: ``B`` batch, ``F`` latent frames, ``C`` channels, ``H x W`` latent size, ``N`` video tokens
(``F * H/p * W/p``), ``S`` text tokens, ``P`` persons, ``T`` ID tokens per person.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from ..config import TransformerConfig
from ..routing import StepRouting
from .id_modules import FacialProjector, IDRouter, RoutedCrossAttention

logger = logging.getLogger(__name__)


@dataclass
class IDState:
    """ID tokens of one generation and the per-layer tensors derived from them (no step dependence)."""

    tokens: torch.Tensor                                  # (P, T, token_dim)
    cross_kv: list[tuple[torch.Tensor, torch.Tensor]]     # per routed layer: k, v (heads, P*T, d)
    router_keys: list[torch.Tensor]                       # per routed layer: (P, token_dim)

    @property
    def num_ids(self) -> int:
        return self.tokens.shape[0]


class IngredientsTransformer(nn.Module):
    """CogVideoX-5B-I2V transformer with Ingredients' q-former, routed cross-attention and router."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        from diffusers.models.embeddings import CogVideoXPatchEmbed, TimestepEmbedding, Timesteps
        from diffusers.models.normalization import AdaLayerNorm
        from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock

        self.config = config
        c, dim = config, config.inner_dim
        # 1. patch + text embedding (learned positional embedding for the I2V model)
        self.patch_embed = CogVideoXPatchEmbed(
            patch_size=c.patch_size, in_channels=c.in_channels, embed_dim=dim, text_embed_dim=c.text_embed_dim,
            bias=True, sample_width=c.sample_width, sample_height=c.sample_height, sample_frames=c.sample_frames,
            temporal_compression_ratio=c.temporal_compression_ratio, max_text_seq_length=c.max_text_seq_length,
            spatial_interpolation_scale=c.spatial_interpolation_scale,
            temporal_interpolation_scale=c.temporal_interpolation_scale,
            use_positional_embeddings=not c.use_rotary_positional_embeddings,
            use_learned_positional_embeddings=c.use_learned_positional_embeddings)
        self.embedding_dropout = nn.Dropout(c.dropout)
        # 2. timestep embedding
        self.time_proj = Timesteps(dim, c.flip_sin_to_cos, c.freq_shift)
        self.time_embedding = TimestepEmbedding(dim, c.time_embed_dim, c.timestep_activation_fn)
        # 3. CogVideoX blocks
        self.transformer_blocks = nn.ModuleList(
            CogVideoXBlock(dim=dim, num_attention_heads=c.num_attention_heads,
                           attention_head_dim=c.attention_head_dim, time_embed_dim=c.time_embed_dim,
                           dropout=c.dropout, activation_fn=c.activation_fn, attention_bias=c.attention_bias,
                           norm_elementwise_affine=c.norm_elementwise_affine, norm_eps=c.norm_eps)
            for _ in range(c.num_layers))
        self.norm_final = nn.LayerNorm(dim, c.norm_eps, c.norm_elementwise_affine)
        # 4. output
        self.norm_out = AdaLayerNorm(embedding_dim=c.time_embed_dim, output_dim=2 * dim,
                                     norm_elementwise_affine=c.norm_elementwise_affine, norm_eps=c.norm_eps,
                                     chunk_dim=1)
        self.proj_out = nn.Linear(dim, c.patch_size * c.patch_size * c.out_channels)
        # 5. ID modules
        ids = c.ids
        self.local_facial_extractor = FacialProjector(ids)
        self.perceiver_cross_attention = nn.ModuleList(
            RoutedCrossAttention(dim, ids.token_dim, ids.heads) for _ in range(c.num_routed_layers))
        self.router = nn.ModuleList(
            IDRouter(dim, ids.token_dim, ids.num_tokens) for _ in range(c.num_routed_layers))

    @property
    def dtype(self) -> torch.dtype:
        return self.proj_out.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.proj_out.weight.device

    # -- ID tokens -------------------------------------------------------------------------------
    def project_ids(self, faces: Sequence) -> torch.Tensor:
        """Face features of P persons -> ID tokens (P, T, token_dim).

        ``faces``: objects with ``id_cond`` (1, id_cond_dim) and ``vit_hidden`` (5 x (1, S, vit_dim)),
        such as :class:`ingredients_core.faces.FaceFeatures`, or ``(id_cond, vit_hidden)`` pairs.
        """
        pairs = [(f.id_cond, f.vit_hidden) if hasattr(f, "id_cond") else tuple(f) for f in faces]
        if not pairs:
            raise ValueError("project_ids needs the face features of at least one person")
        dev, dt = self.device, self.dtype
        id_cond = torch.cat([p[0].reshape(1, -1) for p in pairs]).to(dev, dt)
        scales = len(pairs[0][1])
        vit = [torch.cat([p[1][i].reshape(1, *p[1][i].shape[-2:]) for p in pairs]).to(dev, dt)
               for i in range(scales)]
        return self.local_facial_extractor(id_cond, vit)

    def prepare_ids(self, tokens: torch.Tensor) -> IDState:
        """Cache every routed layer's keys/values and router keys for these ID tokens (once per run)."""
        tokens = tokens.to(self.device, self.dtype)
        return IDState(
            tokens=tokens,
            cross_kv=[attn.keys_values(tokens) for attn in self.perceiver_cross_attention],
            router_keys=[router.person_keys(tokens) for router in self.router])

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                timestep: torch.Tensor, image_rotary_emb: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                ids: Optional[IDState] = None, routing: Optional[StepRouting] = None) -> torch.Tensor:
        """hidden_states (B, F, in_channels, H, W), encoder_hidden_states (B, S, text_dim), timestep (B,)
        -> (B, F, out_channels, H, W). Without ``ids`` no ID features are injected."""
        batch, frames, _, height, width = hidden_states.shape
        # 1. time embedding: (B, time_embed_dim)
        emb = self.time_embedding(self.time_proj(timestep).to(hidden_states.dtype))
        # 2. patch embedding: (B, S + N, dim), split into text and video tokens
        tokens = self.embedding_dropout(self.patch_embed(encoder_hidden_states, hidden_states))
        text_len = encoder_hidden_states.shape[1]
        text, video = tokens[:, :text_len], tokens[:, text_len:]
        # 3. blocks, with ID injection after every routed block
        routed = 0
        for i, block in enumerate(self.transformer_blocks):
            video, text = block(hidden_states=video, encoder_hidden_states=text, temb=emb,
                                image_rotary_emb=image_rotary_emb)
            if ids is not None and self.config.is_routed(i):
                video = self._inject(routed, video, ids, routing)
                routed += 1
        # 4. final norm over [text, video], adaptive norm, projection: (B, N, p*p*out)
        video = self.norm_final(torch.cat([text, video], dim=1))[:, text_len:]
        video = self.proj_out(self.norm_out(video, temb=emb))
        # 5. unpatchify: (B, F, out, H, W)
        p = self.config.patch_size
        out = video.reshape(batch, frames, height // p, width // p, -1, p, p)
        return out.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)

    def _inject(self, k: int, video: torch.Tensor, ids: IDState, routing: Optional[StepRouting]) -> torch.Tensor:
        """Add the routed ID features of routed layer ``k`` to the video tokens (B, N, dim)."""
        if routing is None:
            routing = StepRouting.default(ids.num_ids, self.config.local_face_scale, video.device)
        if not routing.enabled:
            return video
        # official mode: batch element 0 decides for the whole batch (the official zip quirk)
        source = video[:1] if routing.mode == "official" else video
        logits = self.router[k](source, ids.router_keys[k])                     # (b, N, P)
        assignment, strengths = routing.assign(logits), routing.strengths(logits)  # (b, N, P), (P,)
        if routing.recorder is not None:
            routing.recorder.add(k, assignment * (strengths > 0))
        weights = assignment * strengths
        features = self.perceiver_cross_attention[k](source, ids.cross_kv[k], weights)  # (b, N, dim)
        return video + routing.scale * features
