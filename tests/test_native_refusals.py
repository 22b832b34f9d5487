"""Issue 19 item 4 on the stand-ins and the tiny model: what the native MODEL refuses before the first
step (a size the checkpoint does not take, a canvas of other frames, no canvas, a flow-matching
model_sampling, PerturbedAttentionGuidance and patches it cannot honour), and SkipLayerGuidanceDiT's
block replaces, which it honours."""

from __future__ import annotations

import importlib

import pytest
import torch

SEED = 5


def comfy(name: str):
    return importlib.import_module(name)


def _case(config, frames=None, height=None, width=None, canvas_frames=None, canvas=True):
    frames = frames or config.latent_frames
    h, w = height or config.sample_height, width or config.sample_width
    g = torch.Generator().manual_seed(3)
    text = torch.randn(2, 226, config.text_embed_dim, generator=g)
    extra = {}
    if canvas:
        extra = {"concat_latent_image": torch.randn(1, 16, canvas_frames or frames, h, w, generator=g)}
    return dict(positive=[[text[1:], dict(extra)]], negative=[[text[:1], dict(extra)]],
                latent=torch.zeros(1, 16, frames, h, w))


def ksampler(model, case, steps=2, cfg=3.0):
    noise = comfy("comfy.sample").prepare_noise(case["latent"], SEED)
    return comfy("comfy.sample").sample(model, noise, steps, cfg, "euler", "simple", case["positive"],
                                        case["negative"], case["latent"], seed=SEED)


def _no_forward(model, monkeypatch):
    """Fail the test if the transformer runs (the refusal must come before the first step)."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the transformer ran before the refusal")

    monkeypatch.setattr(model.model, "_diffusion_forward", forbidden)


# -- a. sizes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [dict(frames=2), dict(height=4), dict(width=8)])
def test_a_latent_size_the_checkpoint_does_not_take_is_refused_before_sampling(loaded, monkeypatch, size):
    config = loaded["payload"].transformer.config
    w, h, f = config.sample_width * 8, config.sample_height * 8, config.sample_frames
    _no_forward(loaded["model"], monkeypatch)
    with pytest.raises(ValueError) as error:
        ksampler(loaded["model"], _case(config, **size))
    message = str(error.value)
    assert f"this checkpoint takes {w} x {h} x {f} only" in message
    assert f"Set width {w}, height {h}, frames {f} on Ingredients Image to Video" in message
    assert "learned positional embeddings" in message  # the pack sampler's own check (one implementation)


def test_a_canvas_of_other_frames_is_refused_with_the_fix(loaded, monkeypatch):
    config = loaded["payload"].transformer.config
    _no_forward(loaded["model"], monkeypatch)
    for canvas_frames in (1, config.latent_frames + 1):
        with pytest.raises(ValueError, match=r"canvas latent \(concat_latent_image\) is .* frames\), the sampled "
                                             r"latent .*LATENT output of the same Ingredients Image to Video"):
            ksampler(loaded["model"], _case(config, canvas_frames=canvas_frames))


# -- e. no canvas --------------------------------------------------------------------------------
def test_e_no_canvas_is_an_error_on_the_sampler_with_the_fix(loaded, monkeypatch):
    config = loaded["payload"].transformer.config
    _no_forward(loaded["model"], monkeypatch)
    with pytest.raises(ValueError, match=r"the positive conditioning has no canvas latent \(concat_latent_image\).*"
                                         "Put Ingredients Image to Video between the prompts and the sampler"):
        ksampler(loaded["model"], _case(config, canvas=False))


# -- b. model sampling -----------------------------------------------------------------------------
def _with_sampling(model, base: str, kind: str, **parameters):
    """A clone with ComfyUI's ModelSampling* node's object patch (class ModelSamplingAdvanced(base, kind))."""
    model_sampling = comfy("comfy.model_sampling")

    class ModelSamplingAdvanced(getattr(model_sampling, base), getattr(model_sampling, kind)):
        pass

    sampling = ModelSamplingAdvanced(model.model.model_config, **parameters)
    patched = model.clone()
    patched.add_object_patch("model_sampling", sampling)
    return patched


@pytest.mark.parametrize("base, node", [("ModelSamplingDiscreteFlow", "ModelSamplingSD3"),
                                        ("ModelSamplingFlux", "ModelSamplingFlux")])
def test_b_flow_matching_sampling_is_refused_by_name(loaded, monkeypatch, base, node):
    model = _with_sampling(loaded["model"], base, "CONST")
    config = loaded["payload"].transformer.config
    _no_forward(model, monkeypatch)
    with pytest.raises(ValueError, match=f"{node}.* is on this MODEL \\(a flow-matching model_sampling.*v on "
                                         "CogVideoX's discrete 1000-step schedule.*ModelSamplingDiscrete with "
                                         "sampling v_prediction and zsnr on"):
        ksampler(model, _case(config))
    monkeypatch.undo()
    ksampler(loaded["model"], _case(config))  # the loader's MODEL loads without the clone's object patch
    assert not isinstance(loaded["model"].model.model_sampling, type(model.object_patches["model_sampling"]))


def test_b_model_sampling_discrete_v_prediction_zsnr_samples_as_the_models_own(loaded):
    config = loaded["payload"].transformer.config
    case = _case(config)
    want = ksampler(loaded["model"], case)
    got = ksampler(_with_sampling(loaded["model"], "ModelSamplingDiscrete", "V_PREDICTION", zsnr=True), case)
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="predicts EPS .*sampling eps"):
        ksampler(_with_sampling(loaded["model"], "ModelSamplingDiscrete", "EPS", zsnr=True), case)


# -- d. SLG and PAG --------------------------------------------------------------------------------
def _slg_pass(model, x, sigma, cond, layers, single=()):
    """SkipLayerGuidanceDiT's extra pass: calc_cond_batch with ("double_block", i) replaces that return args."""
    patcher = comfy("comfy.model_patcher")

    def skip(args, extra_args):
        return args

    options = {"transformer_options": dict(model.model_options["transformer_options"])}
    for layer in layers:
        options = patcher.set_model_options_patch_replace(options, skip, "dit", "double_block", layer)
    for layer in single:
        options = patcher.set_model_options_patch_replace(options, skip, "dit", "single_block", layer)
    return comfy("comfy.samplers").calc_cond_batch(model.model, [cond], x, sigma, options)[0]


@pytest.fixture()
def one_pass(loaded):
    """The conds as a sampler prepares them, an x and sigma (one model evaluation)."""
    model = loaded["model"]
    config = loaded["payload"].transformer.config
    case = _case(config)
    comfy("comfy.model_management").load_models_gpu([model])
    model.pre_run()
    conds = comfy("comfy.samplers").process_conds(
        model.model, case["latent"], {"positive": comfy("comfy.sampler_helpers").convert_cond(case["positive"])},
        torch.device("cpu"))
    sigma = model.model.model_sampling.sigma(torch.tensor([500.0]))
    x = torch.randn(case["latent"].shape, generator=torch.Generator().manual_seed(1)) * 2.0
    yield model, x, sigma, conds["positive"]
    model.cleanup()


def test_d_slg_skips_the_named_blocks(loaded, one_pass, monkeypatch):
    model, x, sigma, cond = one_pass
    transformer = loaded["payload"].transformer
    with torch.no_grad():
        plain = _slg_pass(model, x, sigma, cond, [])
        ran = []
        for i, block in enumerate(transformer.transformer_blocks):
            monkeypatch.setattr(block, "forward", lambda *a, i=i, f=block.forward: (ran.append(i), f(*a))[1])
        skipped = _slg_pass(model, x, sigma, cond, [1])
    blocks = len(transformer.transformer_blocks)
    assert ran == [i for i in range(blocks) if i != 1]  # exactly block 1 left out
    assert not torch.allclose(skipped, plain)


def test_d_a_replace_that_calls_original_block_is_bit_identical(loaded, one_pass):
    model, x, sigma, cond = one_pass
    patcher = comfy("comfy.model_patcher")

    def through(args, extra):
        return extra["original_block"](args)

    options = {"transformer_options": dict(model.model_options["transformer_options"])}
    for layer in range(len(loaded["payload"].transformer.transformer_blocks)):
        options = patcher.set_model_options_patch_replace(options, through, "dit", "double_block", layer)
    with torch.no_grad():
        plain = comfy("comfy.samplers").calc_cond_batch(model.model, [cond], x, sigma, {"transformer_options": {}})[0]
        replaced = comfy("comfy.samplers").calc_cond_batch(model.model, [cond], x, sigma, options)[0]
    assert torch.equal(replaced, plain)


def test_d_replaces_the_model_cannot_honour_are_refused_by_key(loaded, one_pass):
    model, x, sigma, cond = one_pass
    blocks = len(loaded["payload"].transformer.transformer_blocks)
    with pytest.raises(ValueError, match=r"SkipLayerGuidanceDiT's single_layers name block \(0,\).*clear single_layers"):
        _slg_pass(model, x, sigma, cond, [], single=[0])
    with pytest.raises(ValueError, match=f"names block {blocks}; the model has blocks 0 to {blocks - 1}"):
        _slg_pass(model, x, sigma, cond, [blocks])


def test_d_perturbed_attention_guidance_is_refused_before_sampling(loaded, monkeypatch):
    model = loaded["model"].clone()

    class PerturbedAttentionGuidance:  # the qualname ComfyUI's node gives its post-CFG function
        @staticmethod
        def execute():
            def post_cfg_function(args):
                return args["denoised"]
            return post_cfg_function

    model.set_model_sampler_post_cfg_function(PerturbedAttentionGuidance.execute())
    _no_forward(model, monkeypatch)
    with pytest.raises(ValueError, match=r"PerturbedAttentionGuidance replaces the self-attention of a UNet's middle "
                                         r"block \(patches_replace attn1 \('middle', 0, 0\)\).*remove it"):
        ksampler(model, _case(loaded["payload"].transformer.config))
    attn = loaded["model"].clone()
    attn.set_model_attn1_replace(lambda q, k, v, extra: v, "middle", 0, 0)
    with pytest.raises(ValueError, match=r"patches_replace\['attn1'\]\[\('middle', 0, 0\)\].*cannot honour"):
        ksampler(attn, _case(loaded["payload"].transformer.config))
