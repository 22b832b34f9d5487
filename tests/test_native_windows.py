"""Issue 21: the native MODEL under ComfyUI's context windows (the stand-in follows 0.33.0's
``comfy/context_windows.py``), on the tiny model (9 frames: 3 latent frames per window).

What the model receives is recorded per forward (the canvas latent channels, the window's frames, the
ID patch's step and masks), so the canvas reaching every window is tested by the model's input, not
by the output. A window as long as the video gives exactly the plain run.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from tests.support import harness  # noqa: E402


SEED = 5
STEPS = 3


def comfy(name: str):
    return importlib.import_module(name)


def _case(config, latent_frames: int):
    """Prompts and a canvas latent laid out as Image to Video's: the canvas in frame 0, zeros after."""
    g = torch.Generator().manual_seed(3)
    h, w = config.sample_height, config.sample_width
    text = torch.randn(2, 226, config.text_embed_dim, generator=g)
    canvas = torch.zeros(1, 16, latent_frames, h, w)
    canvas[:, :, 0] = torch.randn(1, 16, h, w, generator=g)
    extra = {"concat_latent_image": canvas}
    return dict(positive=[[text[1:], dict(extra)]], negative=[[text[:1], dict(extra)]], canvas=canvas,
                latent=torch.zeros(1, 16, latent_frames, h, w))


def _with_ids(nodes, payload, model, video_frames: int):
    """Apply IDs with a per-frame mask (a different region in every frame) and a step range."""
    payloads = harness.pack_module("nodes.payloads")
    config = payload.transformer.config
    tokens = torch.randn(2, config.ids.num_tokens, config.ids.token_dim, generator=torch.Generator().manual_seed(4))
    id_tokens = payloads.IngredientsIDTokens(tokens, payloads.IngredientsIDs((0, 1)), payload.folder)
    mask = torch.zeros(video_frames, 64, 96)
    for f in range(video_frames):
        mask[f, :, (f * 5) % 96:(f * 5) % 96 + 30] = 1.0
    routed = harness.pack_module("nodes.ids").RouteIDs.execute(
        id_tokens=id_tokens, routing_mode="official", strength=1.0, mask_1=mask, start_2=0.0, end_2=0.5).args[0]
    return nodes["IngredientsApplyIDs"].execute(model=model, routed_ids=routed).args[0]


def _handler(length: int, overlap: int = 0, fuse: str = "flat", causal: bool = False, schedule: str = "standard_static",
             dim: int = 2):
    cw = comfy("comfy.context_windows")
    return cw.IndexListContextHandler(cw.get_matching_context_schedule(schedule), cw.get_matching_fuse_method(fuse),
                                      context_length=length, context_overlap=overlap, dim=dim,
                                      causal_window_fix=causal)


def _windowed(model, handler):
    clone = model.clone()
    clone.model_options["context_handler"] = handler
    comfy("comfy.context_windows").create_prepare_sampling_wrapper(clone)
    return clone


def ksampler(model, case, steps=STEPS, cfg=3.0):
    noise = comfy("comfy.sample").prepare_noise(case["latent"], SEED)
    return comfy("comfy.sample").sample(model, noise, steps, cfg, "euler", "simple", case["positive"],
                                        case["negative"], case["latent"], seed=SEED)


class Spy:
    """Records what every forward of the transformer receives: the canvas channels, the window, the
    ID patch's step position and token masks."""

    def __init__(self, monkeypatch, model):
        self.calls = []
        base = model.model
        forward = base._diffusion_forward
        model_module = harness.pack_module("nodes.host.model")
        step_inputs = model_module._step_inputs

        def diffusion_forward(xc, timestep, context, control, options):
            window = options.get("context_window")
            self.calls.append(dict(canvas=xc[:, 16:].float().clone(), frames=None if window is None else
                                   list(getattr(window, "index_list")), sigma=float(options["sigmas"][0])))
            return forward(xc, timestep, context, control, options)

        def spy_step_inputs(model_, patch, hidden, options, timestep):
            ids, routing, order = step_inputs(model_, patch, hidden, options, timestep)
            self.calls[-1].update(position=model_module._position(model_, options, timestep),
                                  bias=None if routing.logit_bias is None else routing.logit_bias.clone(),
                                  active=routing.on)
            return ids, routing, order

        monkeypatch.setattr(base, "_diffusion_forward", diffusion_forward)
        monkeypatch.setattr(model_module, "_step_inputs", spy_step_inputs)


# -- a window as long as the video is the plain run ------------------------------------------------
@pytest.mark.parametrize("fuse", ["flat", "pyramid"])
def test_one_window_as_long_as_the_video_gives_exactly_the_plain_run(nodes, loaded, monkeypatch, fuse):
    config = loaded["payload"].transformer.config
    model = _with_ids(nodes, loaded["payload"], loaded["model"], config.sample_frames)
    case = _case(config, config.latent_frames)
    plain = ksampler(model, case)
    handler = _handler(config.latent_frames, fuse=fuse)
    monkeypatch.setattr(handler, "should_use_context", lambda *a: True)  # the handler path, one full window
    spy = Spy(monkeypatch, model)
    windowed = ksampler(_windowed(model, handler), case)
    assert {tuple(c["frames"]) for c in spy.calls} == {tuple(range(config.latent_frames))}
    assert torch.equal(windowed, plain)


def test_long_video_node_at_the_checkpoint_length_is_the_plain_run(nodes, loaded):
    config = loaded["payload"].transformer.config
    model = _with_ids(nodes, loaded["payload"], loaded["model"], config.sample_frames)
    case = _case(config, config.latent_frames)
    out = nodes["IngredientsLongVideo"].execute(model=model, frames=config.sample_frames, overlap=0,
                                                fuse_method="pyramid")
    assert out.args[1] == config.sample_frames
    assert torch.equal(ksampler(out.args[0], case), ksampler(model, case))


# -- every window gets the canvas; masks and steps per window ---------------------------------------
def _long_run(nodes, loaded, monkeypatch, latent_frames=5, overlap=1, model=None):
    config = loaded["payload"].transformer.config
    video = (latent_frames - 1) * 4 + 1
    model = model or _with_ids(nodes, loaded["payload"], loaded["model"], video)
    long = nodes["IngredientsLongVideo"].execute(model=model, frames=video, overlap=overlap * 4,
                                                 fuse_method="pyramid").args[0]
    case = _case(config, latent_frames)
    spy = Spy(monkeypatch, long)
    out = ksampler(long, case)
    return config, case, spy, out, long


def test_every_window_gets_the_canvas_latent_in_its_first_frame(nodes, loaded, monkeypatch):
    config, case, spy, out, _ = _long_run(nodes, loaded, monkeypatch)
    canvas = case["canvas"] * 0.7  # the MODEL's process_latent_in (scale 0.7)
    windows = {tuple(c["frames"]) for c in spy.calls}
    assert windows == {(0, 1, 2), (2, 3, 4)} and out.shape == case["latent"].shape
    for call in spy.calls:
        seen = call["canvas"]
        assert seen.shape[2] == config.latent_frames  # the checkpoint's length, every window
        torch.testing.assert_close(seen[:, :, 0], canvas[:, :, 0].expand_as(seen[:, :, 0]), rtol=0, atol=1e-6)
        assert torch.count_nonzero(seen[:, :, 1:]) == 0  # then the window's own (zero) frames


def test_routing_masks_are_the_windows_frames_and_steps_count_as_without_windows(nodes, loaded, monkeypatch):
    config, case, spy, _, long = _long_run(nodes, loaded, monkeypatch)
    routing = harness.pack_module("ingredients_core.routing.plan")
    patch = harness.pack_module("nodes.host").ids_patch(long)
    grid = (5, config.sample_height // config.patch_size, config.sample_width // config.patch_size)
    whole = routing.RoutingPlan(patch.options, patch.num_ids, grid, config.local_face_scale, torch.device("cpu"))
    per_frame = whole.token_masks.view(grid[0], -1, patch.num_ids) * patch.options.mask_strength
    for call in spy.calls:
        want = per_frame[call["frames"]].flatten(0, 1)
        torch.testing.assert_close(call["bias"], want)
    positions = {}
    for call in spy.calls:
        positions.setdefault(call["sigma"], set()).add(call["position"])
    assert sorted(p for s in positions.values() for p in s) == [(i, STEPS) for i in range(STEPS)]
    assert all(len(p) == 1 for p in positions.values())  # every window of a step: the same step of 3
    assert [c["active"] for c in spy.calls if c["position"][0] == 2][0] == (True, False)  # ID 2 ends at 0.5


def test_routing_maps_cover_every_frame(nodes, loaded, monkeypatch):
    _, _, _, out, long = _long_run(nodes, loaded, monkeypatch)
    routing = nodes["IngredientsModelRouting"].execute(model=long, samples={"samples": out}).args[0]
    assert routing.frames == 17
    maps = nodes["IngredientsRoutingMaps"].execute(routing=routing, steps="mean", layer=-1, opacity=0.5).args[0]
    assert maps.shape[0] == 17
    recorded = harness.pack_module("nodes.host").ids_patch(long).recorder.finished
    per_frame = recorded.maps("last")  # (F, rows, cols, P): every frame routed (weights sum to 1 per token)
    torch.testing.assert_close(per_frame.sum(-1), torch.ones(per_frame.shape[:-1]), rtol=0, atol=1e-5)


def test_memory_is_estimated_per_window(nodes, loaded, monkeypatch):
    base = loaded["model"].model
    shapes = []
    original = type(base).memory_required

    def spy(self, input_shape, cond_shapes={}):
        shapes.append(tuple(input_shape))
        return original(self, input_shape, cond_shapes)

    monkeypatch.setattr(type(base), "memory_required", spy)
    _long_run(nodes, loaded, monkeypatch)
    assert shapes and {s[2] for s in shapes} == {3}


# -- 0.3.64: the handler leaves the 5-D canvas latent whole; the model cuts it ------------------------
def test_the_older_handler_that_does_not_cut_the_canvas_still_gives_every_window_the_canvas(nodes, loaded,
                                                                                           monkeypatch):
    cw = comfy("comfy.context_windows")
    monkeypatch.setattr(type(loaded["model"].model), "resize_cond_for_context_window", lambda *a, **k: None)
    monkeypatch.setattr(cw.IndexListContextHandler, "_resize_item",
                        lambda self, key, value, *a: value)  # 0.3.64: cond objects of 5 dims are not cut
    config, case, spy, _, _ = _long_run(nodes, loaded, monkeypatch)
    for call in spy.calls:
        assert call["canvas"].shape[2] == config.latent_frames
        torch.testing.assert_close(call["canvas"][:, :, 0], (case["canvas"][:, :, 0] * 0.7).expand_as(
            call["canvas"][:, :, 0]), rtol=0, atol=1e-6)
        assert torch.count_nonzero(call["canvas"][:, :, 1:]) == 0


# -- refusals -------------------------------------------------------------------------------------
def _refused(model, case, monkeypatch) -> str:
    def forbidden(*args, **kwargs):
        raise AssertionError("the transformer ran before the refusal")

    monkeypatch.setattr(model.model, "_diffusion_forward", forbidden)
    with pytest.raises(ValueError) as error:
        ksampler(model, case)
    return str(error.value)


def test_causal_window_fix_is_refused_with_the_fix_named(loaded, monkeypatch):
    config = loaded["payload"].transformer.config
    model = _windowed(loaded["model"], _handler(config.latent_frames, 1, causal=True))
    message = _refused(model, _case(config, 5), monkeypatch)
    assert "causal_window_fix is on" in message and "Turn causal_window_fix off" in message
    assert "Ingredients Long Video" in message


@pytest.mark.parametrize("kind", ["short window", "batched", "dim"])
def test_windows_that_do_not_fill_the_learned_positions_are_refused(loaded, monkeypatch, kind):
    config = loaded["payload"].transformer.config
    handler = {"short window": _handler(2), "batched": _handler(3, schedule="batched"),
               "dim": _handler(3, dim=3)}[kind]
    message = _refused(_windowed(loaded["model"], handler), _case(config, 5), monkeypatch)
    assert ("dim 2" in message) if kind == "dim" else (
        "windows of exactly 3 latent frames (9 frames)" in message and "Ingredients Long Video" in message)


def test_a_long_latent_without_windows_names_ingredients_long_video(loaded, monkeypatch):
    config = loaded["payload"].transformer.config
    message = _refused(loaded["model"], _case(config, 5), monkeypatch)
    assert "this checkpoint takes 96 x 64 x 9 only" in message and "Ingredients Long Video" in message


# -- the node ---------------------------------------------------------------------------------------
def test_long_video_node_plans_windows_of_the_checkpoints_length():
    windows = harness.pack_module("nodes.native_windows")
    official = type("Config", (), {"sample_frames": 49})()
    plan = windows.plan(official, 193, 16)
    assert (plan.window, plan.overlap, plan.latent, len(plan.windows)) == (13, 4, 49, 5)
    assert plan.windows[-1] == list(range(36, 49)) and all(len(w) == 13 for w in plan.windows)
    assert "193 frames (49 latent frames) in 5 windows of 49 frames" in windows.describe(plan)
    with pytest.raises(ValueError, match="frames: 96 is not 4k\\+1"):
        windows.plan(official, 96, 16)
    with pytest.raises(ValueError, match="overlap: 52 frames; take a multiple of 4 from 0 to 48"):
        windows.plan(official, 97, 52)
