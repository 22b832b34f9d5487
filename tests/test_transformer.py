"""Tiny-config module tests of the transformer and its ID modules."""

from __future__ import annotations

import pytest
import torch

from ingredients_core.weights.checkpoint import load_transformer
from ingredients_core.model.config import ConfigError, IDModuleConfig, TransformerConfig
from ingredients_core.model.id_modules import RoutedCrossAttention
from ingredients_core.routing.plan import RoutingOptions, RoutingPlan
from ingredients_core.sampling.official import rotary_embeddings


def _faces(n, seed=0, scales=5):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(1, 1280, generator=g), [torch.randn(1, 17, 64, generator=g) for _ in range(scales)])
            for _ in range(n)]


@pytest.fixture(scope="module")
def model(tiny_transformer_dir):
    return load_transformer(tiny_transformer_dir, dtype=torch.float32)


def _inputs(batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, 32, 8, 12, generator=g), torch.randn(batch, 226, 32, generator=g),
            torch.full((batch,), 700))


def test_official_sizes_follow_from_width():
    ids = IDModuleConfig.for_width(3072)
    assert (ids.token_dim, ids.extractor_dim, ids.extractor_head_dim, ids.attn_head_dim) == (2048, 1024, 64, 128)
    cfg = TransformerConfig()
    assert cfg.num_routed_layers == 21 and cfg.ids == ids


def test_config_rejects_inconsistent_interval():
    with pytest.raises(ConfigError, match="cross_attn_interval"):
        TransformerConfig(num_layers=5, cross_attn_interval=2)


def test_project_ids_shape_and_independence(model):
    tokens = model.project_ids(_faces(3))
    assert tokens.shape == (3, 32, model.config.ids.token_dim)
    single = model.project_ids(_faces(3)[1:2])
    torch.testing.assert_close(tokens[1:2], single, rtol=1e-5, atol=1e-5)


def _official_cross_attention(attn: RoutedCrossAttention, tokens, hidden, weights):
    """The official per-person computation: one attention per person, outputs mixed afterwards."""
    outs = []
    for j in range(tokens.shape[0]):
        x, lat = attn.norm1(tokens[j:j + 1]), attn.norm2(hidden)
        q = attn.to_q(lat)
        k, v = attn.to_kv(x).chunk(2, dim=-1)
        split = lambda t: t.view(t.shape[0], t.shape[1], attn.heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        s = q.shape[-1] ** -0.25
        p = torch.softmax(((q * s) @ (k * s).transpose(-2, -1)).float(), -1)
        outs.append(attn.to_out((p @ v).transpose(1, 2).flatten(2)))
    per_person = torch.stack(outs, dim=-1)  # (B, N, dim, P)
    return (per_person * weights.unsqueeze(2)).sum(-1)


def test_shared_projection_equals_per_person_attention(model):
    attn = model.perceiver_cross_attention[0]
    tokens = model.project_ids(_faces(3))
    hidden = torch.randn(2, 24, model.config.inner_dim)
    weights = torch.softmax(torch.randn(2, 24, 3), -1)
    ours = attn(hidden, attn.keys_values(tokens), weights)
    torch.testing.assert_close(ours, _official_cross_attention(attn, tokens, hidden, weights),
                               rtol=1e-5, atol=1e-5)


def test_forward_without_ids_differs_and_ids_of_any_count_work(model):
    x, text, t = _inputs()
    rot = rotary_embeddings(model.config, 64, 96, 3, "cpu")
    with torch.no_grad():
        plain = model(x, text, t, rot)
        outs = [model(x, text, t, rot, ids=model.prepare_ids(model.project_ids(_faces(n)))) for n in (1, 2, 4)]
    assert plain.shape == (2, 3, 16, 8, 12)
    for out in outs:
        assert out.shape == plain.shape and not torch.allclose(out, plain)


def test_official_mode_uses_batch_element_zero(model):
    x, text, t = _inputs()
    rot = rotary_embeddings(model.config, 64, 96, 3, "cpu")
    ids = model.prepare_ids(model.project_ids(_faces(2)))
    plan = lambda mode: RoutingPlan(RoutingOptions(mode=mode), 2, (3, 4, 6), 1.0, torch.device("cpu")).step(0, 1)  # noqa: E731
    with torch.no_grad():
        official = model(x, text, t, rot, ids=ids, routing=plan("official"))
        per_sample = model(x, text, t, rot, ids=ids, routing=plan("per_sample"))
        # element 0 alone is routed the same way in both modes
        alone = model(x[:1], text[:1], t[:1], rot, ids=ids, routing=plan("per_sample"))
    torch.testing.assert_close(official[0], per_sample[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(per_sample[0], alone[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(official[1], per_sample[1])


def test_full_scale_on_meta_device():
    """The released model: 6.38 B parameters, and every shape of a 2-ID forward at 49 x 480 x 720."""
    from ingredients_core.model.transformer import IngredientsTransformer

    config = TransformerConfig()  # 42 layers, 48 heads, cross_attn_interval 2
    with torch.device("meta"):
        model = IngredientsTransformer(config)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count / 1e9 - 6.38) < 0.01, count
    assert model.state_dict()["patch_embed.pos_embedding"].shape == (1, 226 + 13 * 30 * 45, 3072)
    meta = dict(device="meta")
    faces = [(torch.empty(1, 1280, **meta), [torch.empty(1, 577, 1024, **meta)] * 5)] * 2
    tokens = model.project_ids(faces)
    assert tokens.shape == (2, 32, 2048)
    rot = tuple(r.to("meta") for r in rotary_embeddings(config, 480, 720, 13, "cpu"))
    out = model(torch.empty(2, 13, 32, 60, 90, **meta), torch.empty(2, 226, 4096, **meta),
                torch.empty(2, dtype=torch.long, **meta), rot, ids=model.prepare_ids(tokens))
    assert out.shape == (2, 13, 16, 60, 90)


def _diffusers_reference(m):
    """diffusers' own CogVideoX modules with our model's weights (same keys): the reference for
    everything but the ID modules."""
    from diffusers.models.embeddings import CogVideoXPatchEmbed, TimestepEmbedding, Timesteps
    from diffusers.models.normalization import AdaLayerNorm
    from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock

    c, dim = m.config, m.config.inner_dim
    ref = torch.nn.Module()
    ref.patch_embed = CogVideoXPatchEmbed(
        patch_size=c.patch_size, in_channels=c.in_channels, embed_dim=dim, text_embed_dim=c.text_embed_dim,
        sample_width=c.sample_width, sample_height=c.sample_height, sample_frames=c.sample_frames,
        max_text_seq_length=c.max_text_seq_length, use_positional_embeddings=False,
        use_learned_positional_embeddings=True)
    ref.time_proj = Timesteps(dim, c.flip_sin_to_cos, c.freq_shift)
    ref.time_embedding = TimestepEmbedding(dim, c.time_embed_dim, c.timestep_activation_fn)
    ref.transformer_blocks = torch.nn.ModuleList(
        CogVideoXBlock(dim=dim, num_attention_heads=c.num_attention_heads, attention_head_dim=c.attention_head_dim,
                       time_embed_dim=c.time_embed_dim, attention_bias=c.attention_bias) for _ in range(c.num_layers))
    ref.norm_final = torch.nn.LayerNorm(dim, c.norm_eps)
    ref.norm_out = AdaLayerNorm(c.time_embed_dim, output_dim=2 * dim, norm_elementwise_affine=True, chunk_dim=1)
    ref.proj_out = torch.nn.Linear(dim, c.patch_size ** 2 * c.out_channels)
    state = {k: v for k, v in m.state_dict().items() if k.split(".")[0] in dict(ref.named_children())}
    ref.load_state_dict(state, strict=True)
    return ref


def test_interval_two_matches_diffusers_blocks_and_official_mix(tmp_path):
    """A 4-layer model routed after blocks 0 and 2 equals diffusers' CogVideoX modules (same weights)
    with the official per-person cross-attention mix injected after exactly those blocks (official
    batch-0 routing)."""
    from ingredients_core.testing.tiny_transformer import tiny_config, write_tiny_transformer

    write_tiny_transformer(tmp_path, tiny_config(num_layers=4, cross_attn_interval=2))
    m = load_transformer(tmp_path, dtype=torch.float32)
    assert m.config.num_routed_layers == 2
    ref_model = _diffusers_reference(m)
    x, text, t = _inputs()
    rot = rotary_embeddings(m.config, 64, 96, 3, "cpu")
    tokens = m.project_ids(_faces(2))
    with torch.no_grad():
        ours = m(x, text, t, rot, ids=m.prepare_ids(tokens))
        emb = ref_model.time_embedding(ref_model.time_proj(t).to(x.dtype))
        seq = ref_model.patch_embed(text, x)
        enc, video = seq[:, :226], seq[:, 226:]
        for i, block in enumerate(ref_model.transformer_blocks):
            video, enc = block(hidden_states=video, encoder_hidden_states=enc, temb=emb, image_rotary_emb=rot)
            if i % 2 == 0:
                k, router = i // 2, m.router[i // 2]
                merged = router.id_merge(router.norm1(tokens).transpose(-2, -1)).squeeze(-1)
                logits = router.to_q(router.norm2(video[:1])) @ router.to_kv(merged).T
                weights = torch.softmax(logits, -1)
                video = video + _official_cross_attention(m.perceiver_cross_attention[k], tokens, video[:1], weights)
        video = ref_model.norm_final(torch.cat([enc, video], 1))[:, 226:]
        ref = ref_model.proj_out(ref_model.norm_out(video, temb=emb))
        ref = ref.reshape(2, 3, 4, 6, -1, 2, 2).permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_strength_scales_injection_linearly(model):
    from ingredients_core.routing.plan import RoutingOptions, RoutingPlan

    ids = model.prepare_ids(model.project_ids(_faces(2)))
    video = torch.randn(2, 72, model.config.inner_dim)
    step = lambda s: RoutingPlan(RoutingOptions(strengths=s), 2, (3, 4, 6), 1.0, torch.device("cpu")).step(0, 1)  # noqa: E731
    with torch.no_grad():
        full = model._inject(0, video, ids, step([1.0, 1.0])) - video
        scaled = model._inject(0, video, ids, step([0.25, 0.25])) - video
    torch.testing.assert_close(scaled, 0.25 * full, rtol=1e-5, atol=1e-6)


def test_bfloat16_forward_and_denoise(tiny_transformer_dir):
    from ingredients_core.sampling.official import denoise, make_scheduler
    from ingredients_core.testing.make_tiny import COGVIDEOX_I2V_SCHEDULER_CONFIG as SCHEDULER_CONFIG

    m = load_transformer(tiny_transformer_dir, dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    latents, image = torch.randn(1, 3, 16, 8, 12, generator=g), torch.randn(1, 3, 16, 8, 12, generator=g)
    text = torch.randn(1, 226, 32, generator=g)
    out = denoise(m, make_scheduler("dpm", SCHEDULER_CONFIG), latents, image, text, torch.zeros_like(text),
                  m.project_ids(_faces(2)), steps=2, cfg=6.0, generator=torch.Generator().manual_seed(1),
                  routing=RoutingOptions(mode="per_sample", masks=[torch.ones(8, 8), None]))
    assert out.dtype == torch.bfloat16 and out.shape == latents.shape and torch.isfinite(out.float()).all()
