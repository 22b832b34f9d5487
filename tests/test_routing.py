"""Routing control: region masks, per-ID strength, step ranges, routing maps."""

from __future__ import annotations

import pytest
import torch

from ingredients_core.weights.checkpoint import load_transformer
from ingredients_core.routing.plan import RoutingError, RoutingOptions, RoutingPlan, RoutingRecorder, resize_mask
from ingredients_core.sampling.official import rotary_embeddings

GRID = (3, 4, 6)  # tiny model at 9 x 64 x 96: 3 latent frames, 4 x 6 tokens


@pytest.fixture(scope="module")
def model(tiny_transformer_dir):
    return load_transformer(tiny_transformer_dir, dtype=torch.float32)


def _faces(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(1, 1280, generator=g), [torch.randn(1, 9, 64, generator=g) for _ in range(5)])
            for _ in range(n)]


def _forward(model, faces, options, recorder=None, step=(0, 1)):
    g = torch.Generator().manual_seed(5)
    x, text = torch.randn(2, 3, 32, 8, 12, generator=g), torch.randn(2, 226, 32, generator=g)
    ids = model.prepare_ids(model.project_ids(faces))
    plan = RoutingPlan(options, ids.num_ids, GRID, 1.0, torch.device("cpu"), recorder)
    with torch.no_grad():
        return model(x, text, torch.tensor([500, 500]), rotary_embeddings(model.config, 64, 96, 3, "cpu"),
                     ids=ids, routing=plan.step(*step))


def _halves():
    left, right = torch.zeros(64, 96), torch.zeros(64, 96)
    left[:, :48], right[:, 48:64] = 1, 1  # right mask covers only part of the right half
    return left, right


def test_hard_masks_give_routing_maps_equal_to_masks(model):
    left, right = _halves()
    recorder = RoutingRecorder()
    _forward(model, _faces(2), RoutingOptions(masks=[left, right], mask_mode="hard"), recorder)
    maps = recorder.maps("last")  # (F, rows, cols, P)
    assert maps.shape == (3, 4, 6, 2)
    expected = torch.stack([resize_mask(m, GRID, "m") for m in (left, right)], -1).round()
    torch.testing.assert_close(maps, expected)
    assert maps[..., :, 4:, :].sum() == 0  # outside all masks: nobody


def test_soft_masks_move_assignment_toward_masks(model):
    left, right = _halves()
    free, steered = RoutingRecorder(), RoutingRecorder()
    _forward(model, _faces(2), RoutingOptions(), free)
    _forward(model, _faces(2), RoutingOptions(masks=[left, None], mask_strength=3.0), steered)
    inside = resize_mask(left, GRID, "m") > 0.5
    before, after = free.maps()[..., 0][inside], steered.maps()[..., 0][inside]
    assert bool((after > before).all())
    # in the first routed layer (same hidden states in both runs) tokens outside the mask are untouched
    first_free, first_steered = free.maps(layer=0)[..., 0], steered.maps(layer=0)[..., 0]
    torch.testing.assert_close(first_free[~inside], first_steered[~inside])


def test_strength_zero_equals_not_injecting(model):
    faces = _faces(2)
    muted = _forward(model, faces, RoutingOptions(strengths=[1.0, 0.0]))
    alone = _forward(model, faces[:1], RoutingOptions())
    torch.testing.assert_close(muted, alone, rtol=1e-5, atol=1e-5)
    nobody = _forward(model, faces, RoutingOptions(strengths=[0.0, 0.0]))
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        x, text = torch.randn(2, 3, 32, 8, 12, generator=g), torch.randn(2, 226, 32, generator=g)
        plain = model(x, text, torch.tensor([500, 500]), rotary_embeddings(model.config, 64, 96, 3, "cpu"))
    torch.testing.assert_close(nobody, plain)


def test_step_range_switches_an_id_off(model):
    faces = _faces(2)
    options = RoutingOptions(step_ranges=[(0.0, 1.0), (0.5, 1.0)])
    early = _forward(model, faces, options, step=(0, 10))
    alone = _forward(model, faces[:1], RoutingOptions())
    torch.testing.assert_close(early, alone, rtol=1e-5, atol=1e-5)
    late = _forward(model, faces, options, step=(7, 10))
    both = _forward(model, faces, RoutingOptions())
    torch.testing.assert_close(late, both)


def test_per_id_strength_scales_contribution(model):
    faces = _faces(1)
    plain = _forward(model, faces, RoutingOptions(strengths=[0.0]))
    half = _forward(model, faces, RoutingOptions(strengths=[0.5]))
    full = _forward(model, faces, RoutingOptions())
    assert not torch.allclose(half, plain) and not torch.allclose(half, full)


def test_one_id_works(model):
    recorder = RoutingRecorder()
    out = _forward(model, _faces(1), RoutingOptions(), recorder)
    assert out.shape == (2, 3, 16, 8, 12)
    torch.testing.assert_close(recorder.maps(), torch.ones(3, 4, 6, 1))


def test_mask_resizing():
    mask = torch.zeros(480, 720)
    mask[:240] = 1
    grid = resize_mask(mask, (13, 30, 45), "m")
    assert grid.shape == (13, 30, 45)
    assert grid[:, :15].min() == 1 and grid[:, 15:].max() == 0
    per_frame = torch.zeros(49, 10, 10)
    per_frame[1:5] = 1  # video frames 1..4 form latent frame 1
    grid = resize_mask(per_frame, (13, 2, 2), "m")
    assert grid[1].min() == 1 and grid[0].max() == 0 and grid[2:].max() == 0


def test_bad_masks_and_counts():
    with pytest.raises(RoutingError, match="mask of ID 2: 7 mask frames"):
        RoutingPlan(RoutingOptions(masks=[None, torch.ones(7, 8, 8)]), 2, GRID, 1.0, torch.device("cpu"))
    with pytest.raises(RoutingError, match="masks: got 1 entries for 2 IDs"):
        RoutingOptions(masks=[torch.ones(8, 8)]).check(2)
    with pytest.raises(RoutingError, match="1 to 4 people; got 5"):
        RoutingOptions().check(5)
    with pytest.raises(RoutingError, match="step range of ID 1"):
        RoutingOptions(step_ranges=[(0.8, 0.2)]).check(1)


def test_render_routing_maps():
    from ingredients_core.routing.maps import ID_COLORS, render

    maps = torch.zeros(3, 4, 6, 2)
    maps[..., :3, 0] = 1   # ID 1 on the left half
    maps[..., 3:, 1] = 1   # ID 2 on the right half
    video = torch.zeros(9, 64, 96, 3)
    over = render(maps, frames=video, alpha=1.0)
    assert over.shape == (9, 64, 96, 3)
    torch.testing.assert_close(over[4, 10, 5], torch.tensor(ID_COLORS[0]))
    torch.testing.assert_close(over[8, 10, 90], torch.tensor(ID_COLORS[1]))
    grey = render(torch.zeros(3, 4, 6, 2), size=(64, 96), num_frames=9)
    assert grey.shape == (9, 64, 96, 3) and 0.3 < float(grey.mean()) < 0.55
    with pytest.raises(ValueError, match="size and a frame count"):
        render(maps)


# -- routing evidence at the output level ----------------------------------------------------------
def _forward_tokens(model, tokens, options, mode_batch=2):
    """A forward with precomputed ID tokens (so runs with fewer people reuse the very same tokens)."""
    g = torch.Generator().manual_seed(5)
    x, text = torch.randn(mode_batch, 3, 32, 8, 12, generator=g), torch.randn(mode_batch, 226, 32, generator=g)
    ids = model.prepare_ids(tokens)
    plan = RoutingPlan(options, ids.num_ids, GRID, 1.0, torch.device("cpu"))
    with torch.no_grad():
        return model(x, text, torch.tensor([500] * mode_batch), rotary_embeddings(model.config, 64, 96, 3, "cpu"),
                     ids=ids, routing=plan.step(0, 1))


@pytest.mark.parametrize("mode", ["official", "per_sample"])
def test_whole_frame_hard_mask_gives_the_output_of_that_person_alone(model, mode):
    with torch.no_grad():
        tokens = model.project_ids(_faces(2))
    whole = torch.ones(64, 96)
    masked = _forward_tokens(model, tokens, RoutingOptions(mode=mode, masks=[whole, None], mask_mode="hard"))
    alone = _forward_tokens(model, tokens[:1], RoutingOptions(mode=mode))
    both = _forward_tokens(model, tokens, RoutingOptions(mode=mode))
    assert torch.equal(masked, alone)
    assert not torch.allclose(masked, both)


def test_hard_masks_add_exactly_zero_id_features_outside_every_mask(model):
    left, right = _halves()  # columns 0..47 -> person 1, 48..63 -> person 2, 64..95 -> nobody
    inside = torch.stack([resize_mask(m, GRID, "m") for m in (left, right)]).amax(0).flatten() >= 0.5  # (N,)
    added = []
    original = model.id_features

    def recording(k, video, ids, routing):
        features = original(k, video, ids, routing)
        added.append(features.expand(video.shape[0], -1, -1).clone())
        return features

    model.id_features = recording
    try:
        with torch.no_grad():
            tokens = model.project_ids(_faces(2))
        _forward_tokens(model, tokens, RoutingOptions(masks=[left, right], mask_mode="hard"))
    finally:
        del model.id_features
    assert len(added) == model.config.num_routed_layers
    for features in added:                                  # (B, N, dim) per routed layer
        assert features.shape[1] == inside.numel()
        assert torch.count_nonzero(features[:, ~inside]) == 0
        assert bool((features[:, inside].abs().sum(-1) > 0).all())
