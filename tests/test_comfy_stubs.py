"""The ComfyUI stand-ins behave like ComfyUI where the pack meets it: flags, partial loading within
a VRAM budget, eviction, ``comfy.ops`` casting, ``optimized_attention``, and the fake GPU itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

STUBS = Path(__file__).resolve().parent / "comfy_stubs"
from tests.support import fake_gpu  # noqa: E402
from tests.support import harness  # noqa: E402


GPU, CPU = fake_gpu.DEVICE, torch.device("cpu")
MiB = 2 ** 20


@pytest.fixture()
def comfy():
    sys.path.insert(0, str(STUBS))
    import comfy.cli_args
    import comfy.ldm.modules.attention
    import comfy.model_management
    import comfy.model_patcher
    import comfy.ops

    yield comfy
    comfy.model_management.use_cpu()
    harness.unload_pack()


def net(ops):
    """Two ``comfy.ops`` layers (1 MiB, 4 KiB), a plain torch layer (64 KiB) and a parameter of the
    non-leaf root module: what ComfyUI's partial loading treats differently."""
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.big = ops.manual_cast.Linear(512, 512, bias=False)
    model.small = ops.disable_weight_init.Linear(32, 32)
    model.plain = torch.nn.Linear(128, 128)
    model.scale = torch.nn.Parameter(torch.ones(32))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return model.requires_grad_(False)


def place(model) -> dict:
    return {n: "gpu" if isinstance(p, fake_gpu.OnGPU) else "cpu" for n, p in model.named_parameters()}


def forward(model, x):
    return model.small(x[:, :32]) * model.scale, model.big(x), model.plain(x[:, :128])


# -- flags ---------------------------------------------------------------------------------------
def test_unet_flags_give_storage_dtypes_whatever_the_model_supports(comfy):
    mm, flags = comfy.model_management, comfy.cli_args.flags
    mm.use_fake_gpu()
    supported = [torch.bfloat16, torch.float32]
    assert mm.unet_dtype(GPU, supported_dtypes=supported) == torch.bfloat16
    for flag, dtype in (("fp8_e4m3fn_unet", torch.float8_e4m3fn), ("fp8_e5m2_unet", torch.float8_e5m2),
                        ("fp16_unet", torch.float16), ("bf16_unet", torch.bfloat16)):
        with flags(flag):
            assert mm.unet_dtype(GPU, supported_dtypes=supported) == dtype
    assert mm.unet_manual_cast(torch.float8_e4m3fn, GPU, supported) == torch.bfloat16
    assert mm.unet_manual_cast(torch.bfloat16, GPU) is None
    assert mm.unet_manual_cast(torch.bfloat16, CPU) == torch.float32
    assert mm.text_encoder_dtype(GPU) == torch.float16 and mm.vae_dtype(GPU, [torch.bfloat16]) == torch.bfloat16
    with flags("fp8_e4m3fn_text_enc", "fp16_vae"):
        assert mm.text_encoder_dtype(GPU) == torch.float8_e4m3fn
        assert mm.vae_dtype(GPU, [torch.bfloat16]) == torch.float16
    with pytest.raises(AttributeError, match="no ComfyUI flag"):
        flags("fp4_unet").__enter__()


def test_memory_flags_set_devices_and_budgets_as_in_comfyui(comfy):
    mm, flags = comfy.model_management, comfy.cli_args.flags
    assert mm.get_torch_device() == CPU and mm.vram_state == mm.VRAMState.DISABLED  # no GPU: --cpu
    mm.use_fake_gpu()
    assert (mm.get_torch_device(), mm.unet_offload_device(), mm.intermediate_device()) == (GPU, CPU, CPU)
    with flags("gpu_only"):
        assert mm.vram_state == mm.VRAMState.HIGH_VRAM
        assert (mm.unet_offload_device(), mm.text_encoder_offload_device(), mm.intermediate_device()) == (GPU,) * 3
    with flags("cpu"):
        assert mm.get_torch_device() == CPU
    with flags("novram"):
        assert mm.vram_state == mm.VRAMState.NO_VRAM
    with flags("lowvram"):
        assert mm.vram_state == mm.VRAMState.LOW_VRAM
    default = mm.minimum_inference_memory()
    with flags(reserve_vram=2.0):
        assert mm.minimum_inference_memory() == default - 400 * MiB + 2 * 2 ** 30


# -- loading -------------------------------------------------------------------------------------
def test_partial_load_keeps_what_does_not_fit_on_the_offload_device_and_casts_it(comfy):
    mm = comfy.model_management
    model = net(comfy.ops)
    x = torch.randn(2, 512)
    expected = forward(model, x)
    mm.use_fake_gpu()
    patcher = comfy.model_patcher.ModelPatcher(model, GPU, CPU)
    with fake_gpu.computing():
        patcher.load(GPU, lowvram_model_memory=200 * 1024)  # room for plain (64 KiB) and small, not big
        assert place(model) == {"big.weight": "cpu", "small.weight": "gpu", "small.bias": "gpu",
                                "plain.weight": "gpu", "plain.bias": "gpu", "scale": "cpu"}
        assert model.big.comfy_cast_weights and not model.small.comfy_cast_weights and model.model_lowvram
        on_gpu = x.to(GPU)
        got = model.big(on_gpu), model.plain(on_gpu[:, :128])  # big casts its CPU weight per call
        with pytest.raises(RuntimeError, match="same device"):  # scale: a non-leaf's parameter, not moved
            forward(model, on_gpu)
    for a, b in zip(got, expected[1:]):
        assert isinstance(a, fake_gpu.OnGPU) and torch.equal(a.cpu(), b)


def test_plain_layers_move_only_when_they_fit_and_detach_restores_the_layers(comfy):
    mm = comfy.model_management
    model = net(comfy.ops)
    x = torch.randn(2, 32)
    mm.use_fake_gpu()
    patcher = comfy.model_patcher.ModelPatcher(model, GPU, CPU)
    with fake_gpu.computing():
        patcher.load(GPU, lowvram_model_memory=2 * 1024)  # nothing fits
        assert set(place(model).values()) == {"cpu"}
        assert model.small.comfy_cast_weights  # offloaded: casts per call
        assert torch.equal(model.small(x.to(GPU)).cpu(), model.small(x))
        with pytest.raises(RuntimeError, match="same device"):  # a plain layer cannot cast: it stays behind
            model.plain(torch.randn(2, 128).to(GPU))
    patcher.detach()
    assert not model.small.comfy_cast_weights and model.big.comfy_cast_weights  # each layer's own default again
    assert model.model_loaded_weight_memory == 0 and not hasattr(model.small, "prev_comfy_cast_weights")


def test_load_models_gpu_loads_partially_within_the_budget_and_fully_when_forced(comfy):
    mm = comfy.model_management
    model = net(comfy.ops)
    mm.use_fake_gpu(total_vram=int(mm.minimum_inference_memory() + 600 * 1024))
    patcher = comfy.model_patcher.ModelPatcher(model, GPU, CPU)
    with fake_gpu.computing():
        mm.load_models_gpu([patcher])
        assert place(model)["big.weight"] == "cpu" and place(model)["plain.weight"] == "gpu"
        assert patcher.loaded_size() < patcher.model_size() and mm.loaded_models() == [patcher]
        mm.load_models_gpu([patcher], force_full_load=True)
        assert set(place(model).values()) == {"gpu"} and patcher.loaded_size() == patcher.model_size()
    with comfy.cli_args.flags("novram"), fake_gpu.computing():
        mm.unload_all_models()
        mm.load_models_gpu([patcher])
        assert place(model)["big.weight"] == "cpu" and place(model)["small.weight"] == "cpu"


@pytest.mark.parametrize("smart", [True, False], ids=["smart memory", "--disable-smart-memory"])
def test_loading_one_model_offloads_another_that_does_not_fit_beside_it(comfy, smart):
    """ComfyUI frees what the new model needs: by unloading part of the other model (smallest
    modules first) or, with --disable-smart-memory, all of it."""
    mm = comfy.model_management
    first, second = net(comfy.ops), net(comfy.ops)
    size = mm.module_size(first)
    mm.use_fake_gpu(total_vram=int(mm.minimum_inference_memory() + 2.05 * size))  # B needs 1.1 x its size
    a = comfy.model_patcher.ModelPatcher(first, GPU, CPU)
    b = comfy.model_patcher.ModelPatcher(second, GPU, CPU)
    small_ones = mm.module_size(first.small) + mm.module_size(first.plain)
    with comfy.cli_args.flags(disable_smart_memory=not smart), fake_gpu.computing():
        mm.load_models_gpu([a], force_full_load=True)
        assert set(place(first).values()) == {"gpu"}
        mm.load_models_gpu([b], force_full_load=True)
        assert set(place(second).values()) == {"gpu"} and place(first)["big.weight"] == ("gpu" if smart else "cpu")
        assert a.loaded_size() == (size - small_ones if smart else 0)
        assert (place(first)["plain.weight"], place(first)["small.weight"]) == ("cpu", "cpu")
        assert mm.loaded_models() == ([b, a] if smart else [b])
        assert mm.get_free_memory(GPU) == mm.machine.total_vram - size - a.loaded_size()


# -- comfy.ops and attention ---------------------------------------------------------------------
def test_cast_layers_cast_weights_to_the_inputs_device_and_dtype_per_call(comfy):
    ops = comfy.ops
    x = torch.randn(2, 4, 6, 6)
    layers = {"conv": (ops.manual_cast.Conv2d(4, 4, 3), torch.nn.functional.conv2d),
              "group": (ops.manual_cast.GroupNorm(2, 4), lambda x, w, b: torch.nn.functional.group_norm(x, 2, w, b)),
              "layer": (ops.manual_cast.LayerNorm(6), lambda x, w, b: torch.nn.functional.layer_norm(x, (6,), w, b)),
              "rms": (ops.manual_cast.RMSNorm(6), lambda x, w, b: torch.nn.functional.rms_norm(x, (6,), w))}
    with fake_gpu.computing():
        for name, (layer, reference) in layers.items():
            for p in layer.parameters():
                torch.nn.init.normal_(p)
            got = layer(x.to(GPU, torch.bfloat16))  # weights stay fp32 on the CPU
            bias = getattr(layer, "bias", None)
            want = reference(x.bfloat16(), layer.weight.bfloat16(), None if bias is None else bias.bfloat16())
            assert isinstance(got, fake_gpu.OnGPU) and got.dtype == torch.bfloat16, name
            assert torch.equal(got.cpu(), want), name
    linear = ops.disable_weight_init.Linear(3, 2)
    torch.nn.init.ones_(linear.weight), torch.nn.init.zeros_(linear.bias)
    assert not linear.comfy_cast_weights and linear.weight_function == []
    linear.weight_function = [lambda w: w * 2]  # a LoRA-like patch applies to the cast copy
    assert torch.equal(linear(torch.ones(1, 3)), torch.full((1, 2), 6.0))
    assert torch.equal(linear.weight, torch.ones(2, 3))
    embedding = ops.manual_cast.Embedding(5, 3)
    assert embedding(torch.tensor([1, 2]), out_dtype=torch.float16).dtype == torch.float16
    assert ops.pick_operations(torch.bfloat16, None) is ops.disable_weight_init
    assert ops.pick_operations(torch.bfloat16, torch.bfloat16) is ops.disable_weight_init
    assert ops.pick_operations(torch.float8_e4m3fn, torch.bfloat16) is ops.manual_cast
    w, b = ops.cast_bias_weight(linear, torch.ones(1, 3, dtype=torch.float16))
    assert w.dtype == b.dtype == torch.float16 and ops.cast_to_input(linear.bias, w).dtype == torch.float16


def test_optimized_attention_is_sdpa_in_both_layouts_and_counts_its_calls(comfy):
    attention = comfy.ldm.modules.attention
    q, k, v = (torch.randn(2, 5, 4 * 8) for _ in range(3))
    heads = lambda t: t.view(2, -1, 4, 8).transpose(1, 2)  # noqa: E731
    mask = torch.randn(5, 5)
    want = torch.nn.functional.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=mask)
    before = attention.calls
    flat = attention.optimized_attention(q, k, v, 4, mask=mask)
    split = attention.optimized_attention(heads(q), heads(k), heads(v), 4, mask=mask, skip_reshape=True,
                                          skip_output_reshape=True)
    assert attention.calls == before + 2
    assert torch.equal(flat, want.transpose(1, 2).reshape(2, 5, 32)) and torch.equal(split, want)


# -- the fake GPU --------------------------------------------------------------------------------
def test_fake_gpu_tensors_compute_for_real_and_refuse_cpu_tensors_as_cuda_does():
    module = torch.nn.Conv2d(3, 2, 3).requires_grad_(False)
    x = torch.randn(1, 3, 5, 5)
    want = module(x)
    with fake_gpu.computing():
        module.to(GPU)
        got = module(x.to(GPU))
        assert isinstance(got, fake_gpu.OnGPU) and got.device == GPU and torch.equal(got.cpu(), want)
        assert type(got.cpu()) is torch.Tensor and got.sum().item() == pytest.approx(float(want.sum()))
        assert torch.equal((got * torch.tensor(2.0)).cpu(), want * 2)  # 0-dim CPU tensors mix, as with CUDA
        with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
            module(x)
        made = torch.zeros(3, device=GPU) + torch.tensor([1.0, 2.0, 3.0], device=GPU)
        assert made.tolist() == [1.0, 2.0, 3.0]
        generator = torch.Generator(GPU).manual_seed(5)
        assert generator.device == GPU and isinstance(generator, torch.Generator)
        noise = torch.randn(4, generator=generator, device=GPU)
    assert torch.equal(noise.cpu(), torch.randn(4, generator=torch.Generator().manual_seed(5)))
    assert torch.Generator is fake_gpu._RealGenerator
    with pytest.raises(RuntimeError, match="data-less meta tensor"):
        got + torch.zeros(1, 2, 3, 3, device=GPU)  # made outside computing(): torch's own meta tensor
