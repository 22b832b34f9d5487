"""The transformer under ComfyUI's memory management: comfy.ops layers, optimized_attention, partial
loading from a memory estimate, fp8 storage, the q-former's own patcher, TeaCache on the node and
Decode's fall-back to tiles. On the stand-in ComfyUI with the fake GPU (see test_two_devices)."""

from __future__ import annotations

import logging

import pytest
import torch
from test_two_devices import TINY, encode_faces, load_all, nodes, run, sampler_inputs  # noqa: F401

from tests.support import fake_gpu  # noqa: E402


GiB = 1024 ** 3


def _stand_ins():
    import comfy.ldm.modules.attention as attention
    import comfy.model_management as mm
    import comfy.ops

    return mm, comfy.ops, attention


@pytest.fixture(scope="module")
def graph(nodes):  # noqa: F811
    """Loaders and faces with the stand-in ComfyUI on the fake GPU (weights on the CPU until a node
    loads them), for the whole module."""
    with fake_gpu.two_devices():
        models = load_all(nodes)
        with fake_gpu.computing():
            faces = encode_faces(nodes, models)
        yield dict(models=models, faces=faces)


def _gpu_with(total_vram: int) -> None:
    """Give the fake GPU another size (unloads every model first, as a restart would)."""
    mm, _, _ = _stand_ins()
    mm.use_fake_gpu(total_vram=total_vram)


def _forward(model_payload, dtype=torch.float32):
    """One forward of the tiny transformer on the fake GPU (inputs made there), as a CPU tensor;
    the q-former is loaded whole first, the rest is where the caller's load left it."""
    transformer = model_payload.transformer
    model_payload.projector.load(fake_gpu.DEVICE, full_load=True)
    g = torch.Generator().manual_seed(2)
    x, text = torch.randn(2, 3, 32, 8, 12, generator=g), torch.randn(2, 226, 32, generator=g)
    faces = [(torch.randn(1, 1280, generator=g), [torch.randn(1, 17, 64, generator=g)] * 5) for _ in range(2)]
    device = fake_gpu.DEVICE
    with torch.no_grad():
        tokens = transformer.project_ids(faces, device, dtype)
        out = transformer(x.to(device, dtype), text.to(device, dtype), torch.tensor([500, 500]).to(device),
                          None, ids=transformer.prepare_ids(tokens, device, dtype))
    model_payload.projector.detach()
    return out.cpu()


def test_the_transformer_is_built_from_comfy_ops_and_calls_optimized_attention(nodes, graph):  # noqa: F811
    mm, ops, attention = _stand_ins()
    model = graph["models"]["model"]
    linears = [m for m in model.transformer.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, ops.disable_weight_init.Linear) for m in linears)
    norms = [m for m in model.transformer.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(hasattr(m, "comfy_cast_weights") for m in norms)
    before = attention.calls
    with fake_gpu.computing():
        run(nodes["IngredientsSampler"], **sampler_inputs(nodes, graph["models"], graph["faces"]))
    assert attention.calls - before > 0


def test_a_partial_load_with_half_the_blocks_streamed_equals_the_full_load_exactly(graph):
    mm, _, _ = _stand_ins()
    model = graph["models"]["model"]
    patcher = model.patcher
    with fake_gpu.computing():  # ComfyUI moves the weights inside the run
        patcher.load(fake_gpu.DEVICE, full_load=True)
        full = _forward(model)
        patcher.detach()
        half = patcher.model_size() // 2
        patcher.load(fake_gpu.DEVICE, lowvram_model_memory=half)
        streamed = [n for n, m in model.transformer.transformer_blocks.named_modules()
                    if getattr(m, "comfy_cast_weights", False) and m.weight.device.type == "cpu"]
        assert streamed, "the budget should have left some block layers on the CPU"
        assert 0 < patcher.loaded_size() < patcher.model_size()
        partial = _forward(model)
        patcher.detach()
    assert torch.equal(partial, full)


def test_the_sampler_loads_the_transformer_partially_from_its_memory_estimate(nodes, graph, monkeypatch):  # noqa: F811

    mm, _, _ = _stand_ins()
    calls = []
    original = mm.load_models_gpu

    def recording(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                  force_full_load=False):
        calls.append((list(models), memory_required, minimum_memory_required, force_full_load))
        return original(models, memory_required, force_patch_weights, minimum_memory_required, force_full_load)

    monkeypatch.setattr(mm, "load_models_gpu", recording)
    model = graph["models"]["model"]
    with fake_gpu.computing():
        inputs = sampler_inputs(nodes, graph["models"], graph["faces"])
    # a GPU that holds about 40 % of the transformer beside what the run keeps free: the activation
    # estimate of the forward (both CFG halves) plus ComfyUI's extra reserve, or ComfyUI's inference
    # minimum if that is larger (load_models_gpu's rule)
    # the pack's one estimate (the MODEL's memory_required), for the batch of both CFG halves and for one
    shape = [1, 16, (TINY["frames"] - 1) // 4 + 1, TINY["height"] // 8, TINY["width"] // 8]
    needed = model.patcher.model.memory_required([2] + shape[1:])
    minimum = model.patcher.model.memory_required(shape)
    weights = model.patcher.model_size()
    kept_free = max(mm.minimum_inference_memory(), minimum + mm.extra_reserved_memory())
    _gpu_with(int(kept_free + 0.4 * weights))
    try:
        with fake_gpu.computing():
            latents, _ = run(nodes["IngredientsSampler"], **inputs)
            loaded = model.patcher.loaded_size()
    finally:
        _gpu_with(16 * GiB)
    transformer_calls = [c for c in calls if any(m.model is model.patcher.model for m in c[0])]  # the MODEL or a clone
    assert transformer_calls and not any(force for *_, force in transformer_calls)
    _, required, smallest, _ = transformer_calls[-1]
    # as KSampler: room for both CFG halves in one forward if it fits, at least for one (ComfyUI then
    # runs them one after the other)
    assert (required, smallest) == (needed, minimum) and 0 < minimum < needed
    assert 0 < loaded < weights  # partly on the GPU, the rest streamed
    assert torch.isfinite(latents.latents).all()


def test_project_ids_loads_the_q_former_alone(nodes, graph):  # noqa: F811
    mm, _, _ = _stand_ins()
    model = graph["models"]["model"]
    mm.unload_all_models()
    ids, = run(nodes["IngredientsIDList"], face_1=graph["faces"][0], face_2=graph["faces"][1])
    with fake_gpu.computing():
        run(nodes["IngredientsProjectIDs"], model=model, ids=ids)
    on_gpu = lambda module: all(isinstance(p, fake_gpu.OnGPU) for p in module.parameters())  # noqa: E731
    assert on_gpu(model.transformer.local_facial_extractor)
    assert not any(isinstance(p, fake_gpu.OnGPU) for p in model.transformer.transformer_blocks.parameters())
    main = {id(p) for p in model.patcher.model.diffusion_model.parameters()}
    alone = {id(p) for p in model.projector.model.parameters()}
    assert alone < main and len(main) == len(list(model.transformer.parameters()))  # the MODEL holds all


def test_project_ids_works_after_the_model_patcher_moved_the_q_former(nodes, graph):  # noqa: F811
    """The q-former is in the MODEL (whole state dict) and has its own patcher: when the MODEL's patcher
    unloads it, ComfyUI still counts the q-former's patcher as loaded; Project IDs loads it again."""
    mm, _, _ = _stand_ins()
    model = graph["models"]["model"]
    mm.unload_all_models()
    ids, = run(nodes["IngredientsIDList"], face_1=graph["faces"][0], face_2=graph["faces"][1])
    with fake_gpu.computing():
        first, = run(nodes["IngredientsProjectIDs"], model=model, ids=ids)
        mm.load_models_gpu([model.patcher], force_full_load=True)
        model.patcher.detach()  # moves the whole transformer, q-former included, to the CPU
        again, = run(nodes["IngredientsProjectIDs"], model=model, ids=ids)
    assert all(isinstance(p, fake_gpu.OnGPU) for p in model.transformer.local_facial_extractor.parameters())
    assert torch.equal(first.tokens, again.tokens)


def test_fp8_weight_dtype_on_the_loader_stores_fp8_and_samples(nodes, graph):  # noqa: F811
    from comfy_api.latest import io  # noqa: F401  (the stand-in schema is loaded)

    _, ops, _ = _stand_ins()
    fp8, _ = run(nodes["IngredientsModelLoader"], model_folder="Ingredients", dtype="float32", routing_mode="official",
               weight_dtype="fp8_e4m3fn")
    block = fp8.transformer.transformer_blocks[0]
    assert block.ff.net[2].weight.dtype == torch.float8_e4m3fn and isinstance(block.ff.net[2], ops.manual_cast.Linear)
    assert fp8.transformer.patch_embed.proj.weight.dtype == torch.float32
    plain = graph["models"]["model"]
    ratio = fp8.patcher.model_size() / plain.patcher.model_size()
    assert ratio < 0.4  # fp32 -> fp8 for the large layers
    with fake_gpu.computing():
        fp8.patcher.load(fake_gpu.DEVICE, full_load=True)
        plain.patcher.load(fake_gpu.DEVICE, full_load=True)
        out, reference = _forward(fp8), _forward(plain)
        fp8.patcher.detach()
        plain.patcher.detach()
        latents, _ = run(nodes["IngredientsSampler"], **sampler_inputs(nodes, dict(graph["models"], model=fp8),
                                                                       graph["faces"]))
    assert torch.isfinite(latents.latents).all()
    assert 0 < float((out - reference).abs().max() / reference.abs().max()) < 0.2  # fp8 rounding, bounded


def test_sampler_teacache_input_and_its_report(nodes, graph, monkeypatch):  # noqa: F811
    """0 (the default) is off; a threshold whose cache never skips gives the uncached latents bit for
    bit (the cache path only observes computed steps); one that skips changes them and says so."""
    from tests.support.harness import pack_module

    tea_cache = pack_module("ingredients_core.sampling.step_cache").TeaCache
    teacache = next(i for i in nodes["IngredientsSampler"].define_schema().inputs if i.id == "teacache")
    assert teacache.optional and teacache.default == 0.0  # saved workflows without the input: off
    with fake_gpu.computing():
        inputs = sampler_inputs(nodes, graph["models"], graph["faces"])
        inputs.update(steps=4)
        off = nodes["IngredientsSampler"].execute(**inputs, teacache=0.0)
        # every change counts as beyond the fitted range: the cache runs but computes every step
        monkeypatch.setattr(tea_cache, "estimate", lambda self, d: float("inf"))
        never = nodes["IngredientsSampler"].execute(**inputs, teacache=0.2)
        # the tiny model's timestep embedding moves far beyond the 5B polynomial's range (every step
        # would be computed): let every change count as small, so the middle steps are skipped
        monkeypatch.setattr(tea_cache, "estimate", lambda self, d: 0.0)
        cached = nodes["IngredientsSampler"].execute(**inputs, teacache=0.2)
    assert off.ui.as_dict()["text"] == ("TeaCache off: 4 of 4 transformer evaluations computed",)
    assert never.ui.as_dict()["text"][0].startswith("TeaCache (threshold 0.2): 0 of 4 transformer evaluations skipped")
    assert torch.equal(never.args[0].latents, off.args[0].latents)
    assert cached.ui.as_dict()["text"][0].startswith("TeaCache (threshold 0.2): 2 of 4 transformer evaluations skipped")
    assert not torch.equal(cached.args[0].latents, off.args[0].latents)


def test_decode_falls_back_to_tiles_when_the_untiled_decode_runs_out_of_memory(nodes, graph, monkeypatch,  # noqa: F811
                                                                                caplog):
    from tests.support.harness import pack_module

    vae_module = pack_module("ingredients_core.encoders.vae")
    with fake_gpu.computing():
        latents, _ = run(nodes["IngredientsSampler"], **sampler_inputs(nodes, graph["models"], graph["faces"]))
        tiled, = run(nodes["IngredientsDecode"], vae=graph["models"]["vae"], latents=latents, tiling=True)
    original, tries = vae_module.decode_raw, []

    def decode(vae, x, tiling, slicing):
        tries.append(tiling)
        if not tiling:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(vae, x, tiling=tiling, slicing=slicing)

    monkeypatch.setattr(vae_module, "decode_raw", decode)
    with caplog.at_level(logging.WARNING), fake_gpu.computing():
        frames, = run(nodes["IngredientsDecode"], vae=graph["models"]["vae"], latents=latents, tiling=False)
    assert tries == [False, True] and torch.equal(frames, tiled)
    assert any("retrying with tiling" in r.getMessage() for r in caplog.records)


def test_t5_loads_partially_and_streams_the_rest_with_the_same_embeddings(nodes, graph):  # noqa: F811
    from tests.support.harness import pack_module

    mm, _, _ = _stand_ins()
    t5, = run(nodes["IngredientsT5Loader"], model_folder="Ingredients", dtype="float32")
    encode = nodes["IngredientsEncodePrompt"]
    with fake_gpu.computing():
        full, _, _ = run(encode, t5=t5, prompt="two people", negative_prompt="")
    ids = pack_module("ingredients_core.encoders.text").tokenize_prompts(t5.tokenizer, ["two people", ""])
    needed = pack_module("ingredients_core.sampling.memory").t5_activation_bytes(t5.config, *ids.shape)
    size = t5.patcher.model_size()
    _gpu_with(int(max(mm.minimum_inference_memory(), needed + mm.extra_reserved_memory()) + 0.3 * size))
    try:
        with fake_gpu.computing():
            partial, _, _ = run(encode, t5=t5, prompt="two people", negative_prompt="")
            loaded = t5.patcher.loaded_size()
    finally:
        _gpu_with(16 * GiB)
    assert 0 < loaded < size
    assert torch.equal(partial.positive, full.positive) and torch.equal(partial.negative, full.negative)
    fp8, = run(nodes["IngredientsT5Loader"], model_folder="Ingredients", dtype="float8_e4m3fn")
    assert fp8.encoder.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float8_e4m3fn
    with fake_gpu.computing():
        small, _, _ = run(encode, t5=fp8, prompt="two people", negative_prompt="")
    assert torch.isfinite(small.positive).all() and small.positive.shape == full.positive.shape


def test_sampler_runs_with_the_transformer_left_on_the_cpu_under_novram(nodes, graph):  # noqa: F811
    """--novram: ComfyUI keeps every weight in CPU RAM and streams each layer per call; the sampler's
    result is the one of a full load."""
    import comfy.cli_args

    mm, _, _ = _stand_ins()
    model = graph["models"]["model"]
    with fake_gpu.computing():
        inputs = sampler_inputs(nodes, graph["models"], graph["faces"])
        full, _ = run(nodes["IngredientsSampler"], **inputs)
    with comfy.cli_args.flags("novram"):
        _gpu_with(16 * GiB)
        try:
            with fake_gpu.computing():
                streamed, _ = run(nodes["IngredientsSampler"], **inputs)
                on_gpu = sum(isinstance(p, fake_gpu.OnGPU) for p in model.transformer.transformer_blocks.parameters())
        finally:
            mm.unload_all_models()
    _gpu_with(16 * GiB)
    assert on_gpu == 0  # nothing of the blocks was put on the GPU
    assert torch.equal(streamed.latents, full.latents)
