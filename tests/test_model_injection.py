"""The transformer on injected layers and attention, fp8 storage, and the TeaCache step cache."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ingredients_core.weights.checkpoint import load_transformer
from ingredients_core.model.layers import sdpa_attention
from ingredients_core.model.storage import enable_storage_casting, storage_module_names, weight_bytes
from ingredients_core.testing.parity import relative_error, write_golden_checkpoint
from ingredients_core.sampling.official import denoise, make_scheduler, rotary_embeddings
from ingredients_core.sampling.step_cache import COGVIDEOX_5B_COEFFICIENTS, TeaCache
from ingredients_core.testing.make_tiny import COGVIDEOX_I2V_SCHEDULER_CONFIG as SCHEDULER_CONFIG

# fp8 rounding of every Linear weight of the golden model (random weights, 2 blocks at full width),
# measured as max |fp8 - fp32| / max |fp32| of a forward (bench/bench_memory.py --sweep, t = 999/500,
# bf16/fp32 compute): 0.067 to 0.080 (e4m3fn) and 0.120 to 0.129 (e5m2); bf16 weights and compute give
# 0.011 to 0.021. The bounds leave room for other CPUs and torch versions (docs/speed-and-memory.md, VRAM section).
FP8_BOUNDS = {torch.float8_e4m3fn: 0.12, torch.float8_e5m2: 0.2}


def _faces(n, width=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(1, 1280, generator=g), [torch.randn(1, 17, width, generator=g) for _ in range(5)])
            for _ in range(n)]


def _tiny_inputs(batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, 32, 8, 12, generator=g), torch.randn(batch, 226, 32, generator=g),
            torch.full((batch,), 700))


class CountingLinear(nn.Linear):
    calls = 0

    def forward(self, x):
        type(self).calls += 1
        return super().forward(x)


def test_layers_and_attention_are_the_injected_ones(tiny_transformer_dir):
    calls = []

    def attention(q, k, v, heads):
        calls.append(q.shape)
        return sdpa_attention(q, k, v, heads)

    ops = SimpleNamespace(Linear=CountingLinear, LayerNorm=nn.LayerNorm, Conv2d=nn.Conv2d)
    plain = load_transformer(tiny_transformer_dir, dtype=torch.float32)
    injected = load_transformer(tiny_transformer_dir, dtype=torch.float32, operations=ops, attention=attention)
    linears = [m for m in injected.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is CountingLinear for m in linears)
    x, text, t = _tiny_inputs()
    rot = rotary_embeddings(plain.config, 64, 96, 3, "cpu")
    with torch.no_grad():
        expected = plain(x, text, t, rot, ids=plain.prepare_ids(plain.project_ids(_faces(2))))
        CountingLinear.calls = 0
        ours = injected(x, text, t, rot, ids=injected.prepare_ids(injected.project_ids(_faces(2))))
    # per block one joint attention, per routed layer one attention per person, plus the q-former's
    config = plain.config
    expected_calls = config.num_layers + 2 * config.num_routed_layers + config.ids.extractor_depth
    assert len(calls) == expected_calls and CountingLinear.calls >= len(linears)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


def test_no_tensor_or_device_outside_parameters_and_buffers(tiny_transformer_dir):
    model = load_transformer(tiny_transformer_dir, dtype=torch.float32)
    for name, module in model.named_modules():
        for attr, value in vars(module).items():
            assert not isinstance(value, (torch.Tensor, torch.device)), f"{name}.{attr} is a plain {type(value)}"


@pytest.fixture(scope="module")
def golden_model(golden_dir, tmp_path_factory):
    from safetensors.torch import load_file

    folder = write_golden_checkpoint(golden_dir, tmp_path_factory.mktemp("golden_ckpt"))
    inputs = load_file(str(golden_dir / "inputs.safetensors"))
    faces = [(inputs[f"id{i}.id_cond"], [inputs[f"id{i}.vit_hidden.{k}"] for k in range(5)]) for i in range(2)]
    hidden = torch.cat([torch.cat([inputs["latents"]] * 2), torch.cat([inputs["image_latents"]] * 2)], dim=2)
    text = torch.cat([inputs["negative_prompt_embeds"], inputs["prompt_embeds"]])
    case = json.loads((golden_dir / "case.json").read_text())
    return SimpleNamespace(folder=folder, faces=faces, hidden=hidden, text=text, case=case)


def _golden_forward(model, g, dtype):
    with torch.no_grad():
        ids = model.prepare_ids(model.project_ids(g.faces, dtype=dtype), dtype=dtype)
        rot = rotary_embeddings(model.config, g.case["height_px"], g.case["width_px"], g.hidden.shape[1], "cpu")
        return model(g.hidden.to(dtype), g.text.to(dtype), torch.tensor([500, 500]), rot, ids=ids).float()


def test_fp8_storage_halves_weight_bytes_within_stated_error(golden_model):
    g = golden_model
    reference = load_transformer(g.folder, dtype=torch.float32)
    expected = _golden_forward(reference, g, torch.float32)
    bf16_bytes = weight_bytes(reference) // 2
    del reference
    for storage, bound in FP8_BOUNDS.items():
        model = load_transformer(g.folder, dtype=torch.bfloat16, weight_dtype=storage)
        stored = {p.dtype for name, p in model.named_parameters() if name.rpartition(".")[0]
                  in storage_module_names(model)}
        assert stored == {storage}
        assert model.norm_final.weight.dtype == model.patch_embed.pos_embedding.dtype == torch.bfloat16
        assert weight_bytes(model) < 0.55 * bf16_bytes
        assert enable_storage_casting(model, storage, torch.bfloat16) == len(storage_module_names(model))
        error = relative_error(_golden_forward(model, g, torch.bfloat16), expected)
        assert 0 < error < bound, (storage, error)
        # the hooks cast back after each forward: the weights stay in storage
        assert model.transformer_blocks[0].ff.net[2].weight.dtype == storage


def _denoise(model, cache=None, steps=6):
    g = torch.Generator().manual_seed(0)
    latents, image = torch.randn(1, 3, 16, 8, 12, generator=g), torch.randn(1, 3, 16, 8, 12, generator=g)
    text = torch.randn(1, 226, 32, generator=g)
    return denoise(model, make_scheduler("dpm", SCHEDULER_CONFIG), latents, image, text, torch.zeros_like(text),
                   model.project_ids(_faces(2)), steps=steps, cfg=6.0, generator=torch.Generator().manual_seed(1),
                   cache=cache)


def _count_block_runs(model):
    runs = []
    handle = model.transformer_blocks[0].register_forward_hook(lambda *_: runs.append(1))
    return runs, handle


def test_teacache_off_is_bit_identical_to_no_cache(tiny_transformer_dir):
    """Threshold 0 (the default) means no cache; a cache whose estimate always exceeds its
    threshold computes every step, stores residuals and still changes nothing."""
    from ingredients_core.sampling.pipeline import GenerationSettings

    model = load_transformer(tiny_transformer_dir, dtype=torch.float32)
    plain = _denoise(model)
    cache = TeaCache(threshold=1e-6, steps=6, coefficients=(1.0, 1.0))  # estimate = d + 1 > threshold
    cached = _denoise(model, cache)
    assert cache.skipped == 0 and cache.evaluations == 6
    assert torch.equal(plain, cached)
    assert GenerationSettings().teacache == 0.0
    with pytest.raises(ValueError, match="teacache"):
        GenerationSettings(teacache=-0.1).validate()


def test_teacache_skips_evaluations_but_never_the_first_or_last(tiny_transformer_dir):
    model = load_transformer(tiny_transformer_dir, dtype=torch.float32)
    plain = _denoise(model)
    runs, handle = _count_block_runs(model)
    cache = TeaCache(threshold=100.0, steps=6, coefficients=(1.0, 0.0))  # estimate = the raw distance
    try:
        cached = _denoise(model, cache)
    finally:
        handle.remove()
    assert cache.skipped_steps == [1, 2, 3, 4] and cache.evaluations == 2  # first and last computed
    assert len(runs) == cache.evaluations  # the blocks really did not run on skipped steps
    assert torch.isfinite(cached).all() and not torch.equal(plain, cached)
    assert "4 of 6 transformer evaluations skipped" in cache.summary()


def test_teacache_uses_the_published_cogvideox_5b_coefficients_in_their_fitted_range():
    assert COGVIDEOX_5B_COEFFICIENTS == (-1.53880483e+03, 8.43202495e+02, -1.34363087e+02, 7.97131516e+00,
                                         -5.23162339e-02)
    cache = TeaCache(threshold=0.15, steps=50)
    assert cache.coefficients == COGVIDEOX_5B_COEFFICIENTS
    assert cache.estimate(0.1) == pytest.approx(0.0905064, rel=1e-5)  # the published polynomial
    assert cache.estimate(0.001) == 0.0                                 # below its lower root: no change
    assert cache.estimate(0.5) == float("inf")                          # beyond its fit: always computed
    with pytest.raises(ValueError, match="threshold"):
        TeaCache(threshold=0.0, steps=4)


def test_feed_forward_in_token_chunks_gives_the_same_output(tiny_transformer_dir):
    """ff_chunk bounds the (B, tokens, 4 D) activation; every token is computed on its own."""
    from ingredients_core.sampling.memory import forward_size, transformer_activation_bytes
    from ingredients_core.sampling.settings import FF_CHUNK, GenerationSettings

    model = load_transformer(tiny_transformer_dir, dtype=torch.float32)
    x, text, t = _tiny_inputs()
    rot = rotary_embeddings(model.config, 64, 96, 3, "cpu")
    with torch.no_grad():
        ids = model.prepare_ids(model.project_ids(_faces(2)))
        whole = model(x, text, t, rot, ids=ids)
        chunked = model(x, text, t, rot, ids=ids, ff_chunk=50)  # 226 + 72 tokens in 6 pieces
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    assert GenerationSettings().ff_chunk == FF_CHUNK
    from ingredients_core.model.config import TransformerConfig

    size = forward_size(TransformerConfig(), 2, 13, 60, 90, 2)
    assert transformer_activation_bytes(size, 2, FF_CHUNK) < 0.8 * transformer_activation_bytes(size, 2)


def test_teacache_decides_per_step_for_every_call_and_keeps_a_residual_per_chunk():
    """A host's calls (cond and uncond apart, two per step) get their step's one decision; each chunk
    reuses its own residual, put together in the call's row order."""
    from ingredients_core.sampling.step_cache import WHOLE, chunk_keys

    assert chunk_keys(4, [1, 0]) == [(1, 0), (0, 0)] and chunk_keys(2, [0], ["c"]) == [(0, "c")]
    assert chunk_keys(4, [0, 1], ["c", "u"], torch.tensor([2, 3, 0, 1])) == [(1, "u"), (0, "c")]
    assert chunk_keys(3, [0, 1]) == [WHOLE] and chunk_keys(2, [0], part=(0, 1)) == [((0, 0), (0, 1))]
    cache = TeaCache(threshold=100.0, steps=4, coefficients=(1.0, 0.0))
    emb = torch.ones(1, 4)
    uncond, cond = cache.call(0, [(1, 0)]), cache.call(0, [(0, 0)])
    assert not uncond.skip(emb) and not cond.skip(emb)
    uncond.store(torch.full((1, 2), 1.0), torch.full((1, 1), 1.0))
    cond.store(torch.full((1, 2), 2.0), torch.full((1, 1), 2.0))
    both = cache.call(1, [(1, 0), (0, 0)])
    assert both.skip(emb * 1.1) and cache.call(1, [(0, 0)]).skip(emb * 5)  # the step's first call decided
    video, text = both.reuse(torch.zeros(2, 2), torch.zeros(2, 1))
    assert video.tolist() == [[1.0, 1.0], [2.0, 2.0]] and text.tolist() == [[1.0], [2.0]]
    new_chunk = cache.call(2, [(0, 7)])
    assert not new_chunk.skip(emb)  # the step is skipped, but a chunk without a residual computes
    new_chunk.store(torch.zeros(1, 2), torch.zeros(1, 1))
    assert cache.skipped_steps == [1] and cache.evaluations == 2  # and its step counts as computed
