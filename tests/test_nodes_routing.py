"""Routing control on the nodes: masks, per-person strength and steps, recorded routing, routing maps.

Runs without ComfyUI, on the stand-ins and the tiny model (fixtures shared with ``test_nodes``).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_nodes import TINY, graph, nodes, pack, run, sample  # noqa: F401  (fixtures; models_dir is conftest's)

from tests.support import harness

H, W = TINY["height"], TINY["width"]


def halves():
    """Left and right halves of the tiny video (64 x 96), as ComfyUI MASKs (1, H, W)."""
    left, right = torch.zeros(1, H, W), torch.zeros(1, H, W)
    left[..., : W // 2], right[..., W // 2:] = 1, 1
    return left, right


def route(nodes, graph, **inputs):
    values = dict(id_tokens=graph["tokens"], routing_mode="from model", strength=1.0)
    values.update(inputs)
    routed, = run(nodes["IngredientsRouteIDs"], **values)
    return routed


def sample_routing(nodes, graph, routed, **overrides):
    values = dict(model=graph["model"], prompt=graph["prompt"], routed_ids=routed, vae=graph["vae"],
                  steps=2, cfg=6.0, seed=7, scheduler="dpm", dynamic_cfg=False, **TINY)
    values.update(overrides)
    return run(nodes["IngredientsSampler"], **values)


def test_route_ids_hands_every_setting_to_the_core(nodes, graph):
    left, right = halves()
    routed = route(nodes, graph, mask_mode="hard", mask_strength=3.0, mask_1=left, mask_2=right[0],
                   strength=0.5, strength_2=2.0, start_1=0.25, end_2=0.5, strength_3=0.0, start_4=0.9)
    options = routed.routing
    assert options.mask_mode == "hard" and options.mask_strength == 3.0
    assert list(options.strengths) == [0.5, 1.0]            # overall strength x per-person strength
    assert list(options.step_ranges) == [(0.25, 1.0), (0.0, 0.5)]
    assert [tuple(m.shape) for m in options.masks] == [(H, W), (H, W)]  # a 1-frame MASK is static
    default = route(nodes, graph)                            # old workflows: nothing new is set
    assert default.routing.masks is None and default.routing.step_ranges is None
    assert list(default.routing.strengths) == [1.0, 1.0] and default.routing.mask_mode == "soft"


def test_hard_masks_give_routing_maps_equal_to_the_masks(nodes, graph):
    left, right = halves()
    latents, routing = sample_routing(nodes, graph, route(nodes, graph, mask_mode="hard", mask_1=left, mask_2=right))
    config = graph["model"].transformer.config
    assert len(routing.layers) == config.num_routed_layers and routing.frames == TINY["frames"]
    expected = torch.zeros(3, 4, 6, 2)
    expected[:, :, :3, 0], expected[:, :, 3:, 1] = 1, 1
    for steps in ("last", "mean"):
        for layer in (-1, 0, len(routing.layers) - 1):
            torch.testing.assert_close(routing.maps(steps, layer), expected)
    maps, = run(nodes["IngredientsRoutingMaps"], routing=routing, steps="last", layer=-1, opacity=0.55)
    colors = harness.pack_module("ingredients_core.routing.maps").ID_COLORS
    assert maps.shape == (TINY["frames"], H, W, 3)
    torch.testing.assert_close(maps[:, 8, 8], torch.tensor([colors[0]] * TINY["frames"]))   # left: person 1
    torch.testing.assert_close(maps[:, 8, 88], torch.tensor([colors[1]] * TINY["frames"]))  # right: person 2
    frames, = run(nodes["IngredientsDecode"], vae=graph["vae"], latents=latents, tiling=True)
    over, = run(nodes["IngredientsRoutingMaps"], routing=routing, frames=frames, steps="mean", layer=0, opacity=1.0)
    assert over.shape == frames.shape  # opacity 1: the colours only, without the grid's token borders
    torch.testing.assert_close(over[:, :, : W // 2], torch.tensor(colors[0]).expand(TINY["frames"], H, W // 2, 3))
    torch.testing.assert_close(over[:, :, W // 2:], torch.tensor(colors[1]).expand(TINY["frames"], H, W // 2, 3))


def test_strength_zero_leaves_a_person_out_of_the_routing(nodes, graph):
    _, routing = sample_routing(nodes, graph, route(nodes, graph, strength_2=0.0))
    maps = routing.maps("mean", -1)
    assert float(maps[..., 1].abs().max()) == 0.0
    torch.testing.assert_close(maps[..., 0], torch.ones_like(maps[..., 0]))  # softmax over person 1 alone
    _, late = sample_routing(nodes, graph, route(nodes, graph, start_2=0.5))
    assert float(late.maps("last", -1)[..., 1].max()) > 0 and float(late.maps("mean", -1)[..., 1].max()) < 1


def test_recording_does_not_change_the_latents(nodes, graph, monkeypatch):
    sampling = harness.pack_module("nodes.sampling")
    host = harness.pack_module("nodes.host")
    left, right = halves()
    routed = route(nodes, graph, mask_1=left, mask_2=right, mask_strength=2.0)
    latents, routing = sample_routing(nodes, graph, routed)
    assert routing.layers
    put_ids = sampling.put_ids

    def unrecorded(model, routed_ids):
        patched = put_ids(model, routed_ids)
        host.ids_patch(patched).recorder = None
        return patched

    monkeypatch.setattr(sampling, "put_ids", unrecorded)
    plain, nothing = sample_routing(nodes, graph, routed)
    assert nothing.layers == ()
    torch.testing.assert_close(latents.latents, plain.latents, rtol=0, atol=0)


def test_per_frame_masks_and_their_errors(nodes, graph):
    left, right = halves()
    moving = left.expand(TINY["frames"], H, W).clone()  # one mask per video frame
    _, routing = sample_routing(nodes, graph, route(nodes, graph, mask_mode="hard", mask_1=moving, mask_2=right))
    assert routing.maps("last", -1).shape == (3, 4, 6, 2)
    with pytest.raises(ValueError, match=r"routed_ids: mask_2: 5 mask frames fit neither the 3 latent frames "
                                         r"nor the 9 video frames.*Route IDs"):
        sample_routing(nodes, graph, route(nodes, graph, mask_1=left, mask_2=right.expand(5, H, W)))


def test_route_ids_errors_name_the_input(nodes, graph):
    left, _ = halves()
    with pytest.raises(ValueError, match="mask_3 is connected but there are only 2 IDs"):
        route(nodes, graph, mask_3=left)
    with pytest.raises(ValueError, match=r"start_2/end_2: 0.8/0.2"):
        route(nodes, graph, start_2=0.8, end_2=0.2)
    with pytest.raises(ValueError, match=r"mask_1: expected a ComfyUI MASK .* got \(1, 1, 64, 96\)"):
        route(nodes, graph, mask_1=left[None])
    five = dataclasses.replace(graph["tokens"], ids=dataclasses.replace(graph["ids"], faces=graph["ids"].faces * 3))
    with pytest.raises(ValueError, match="1 to 4 people; got 6 IDs"):
        route(nodes, graph, id_tokens=five)


def test_routing_maps_errors_name_the_input(nodes, graph):
    _, routing = sample_routing(nodes, graph, graph["routed"])
    with pytest.raises(ValueError, match=rf"layer: 99 is out of range; .* {len(routing.layers)} routed layers"):
        run(nodes["IngredientsRoutingMaps"], routing=routing, steps="last", layer=99, opacity=0.5)
    with pytest.raises(ValueError, match="frames: expected an IMAGE batch"):
        run(nodes["IngredientsRoutingMaps"], routing=routing, frames=torch.zeros(9, 64, 96), steps="last",
            layer=-1, opacity=0.5)
    nothing = dataclasses.replace(routing, layers=(), last=(), mean=())
    with pytest.raises(ValueError, match="routing: nothing was recorded"):
        run(nodes["IngredientsRoutingMaps"], routing=nothing, steps="last", layer=-1, opacity=0.5)
