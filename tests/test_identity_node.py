"""The Ingredients Identity Check node on the ComfyUI stand-ins, with tiny models whose detector reports faces."""

from __future__ import annotations

import asyncio
import re

import pytest
import torch

from tests.support import harness  # noqa: E402
from ingredients_core.testing import tiny_models  # noqa: E402


from ingredients_core.identity.curricularface import CURRICULARFACE_FILE  # noqa: E402
from ingredients_core.identity.check import OFFICIAL_FRAMES  # noqa: E402
from ingredients_core.identity.scores import DEFAULT_THRESHOLD  # noqa: E402
from ingredients_core.testing.tiny_curricularface import write_tiny_curricularface  # noqa: E402

NODE = "IngredientsIdentityCheck"



@pytest.fixture(scope="module")
def nodes(models_dir):
    harness.load_pack(models_dir)
    extension = asyncio.run(harness.pack_module("nodes.extension").IngredientsExtension().get_node_list())
    yield {cls.GET_SCHEMA().node_id: cls for cls in extension}
    harness.unload_pack()


def image(seed: int) -> torch.Tensor:
    """A 128 px photo as a one-image IMAGE batch (the tiny detector is a full-size ResNet-50: keep frames small)."""
    return torch.from_numpy(tiny_models.face_photo(seed, size=128)).float().div(255.0)[None]


@pytest.fixture(scope="module")
def graph(nodes):
    encoder, = nodes["IngredientsFaceEncoderLoader"].execute(model_folder="Ingredients", provider="auto").args
    faces = [nodes["IngredientsEncodeFace"].execute(face_encoder=encoder, image=image(seed), face_choice="best",
                                                    face_index=0, min_face_size=0).args[0] for seed in (1, 2)]
    ids, = nodes["IngredientsIDList"].execute(face_1=faces[0], face_2=faces[1]).args
    return dict(encoder=encoder, ids=ids)


def check(nodes, graph, frames, **extra):
    values = dict(face_encoder=graph["encoder"], ids=graph["ids"], frames=frames, frames_to_sample=OFFICIAL_FRAMES,
                  threshold=DEFAULT_THRESHOLD)
    values.update(extra)
    return nodes[NODE].execute(**values)


def test_schema_has_the_issue_inputs_and_outputs(nodes):
    schema = nodes[NODE].define_schema()
    assert [i.id for i in schema.inputs] == ["face_encoder", "ids", "frames", "routing", "frames_to_sample",
                                             "threshold"]
    assert [o.id for o in schema.outputs] == ["report", "official", "person_1", "person_2", "person_3", "person_4",
                                              "plot"]
    assert [o.get_io_type() for o in schema.outputs] == ["STRING"] + ["FLOAT"] * 5 + ["IMAGE"]
    assert schema.is_output_node and schema.display_name == "Ingredients Identity Check"
    routing = next(i for i in schema.inputs if i.id == "routing")
    assert routing.optional and routing.get_io_type() == "INGREDIENTS_ROUTING"


def test_light_copies_of_the_core_defaults_match_it(nodes):
    from ingredients_core.standalone import evaluate
    from ingredients_core.identity.scores import DEFAULT_MARGIN

    node = harness.pack_module("nodes.identity")
    assert (node.DEFAULT_FRAMES, node.DEFAULT_THRESHOLD) == (OFFICIAL_FRAMES, DEFAULT_THRESHOLD)
    assert (evaluate.DEFAULT_FRAMES, evaluate.DEFAULT_THRESHOLD, evaluate.DEFAULT_MARGIN) == (
        OFFICIAL_FRAMES, DEFAULT_THRESHOLD, DEFAULT_MARGIN)


def test_video_of_person_1_scores_them_found_and_shows_table_and_plot(nodes, graph):
    frames = image(1).repeat(40, 1, 1, 1)                       # person 1's photo as a 40-frame video
    output = check(nodes, graph, frames, frames_to_sample=3)
    report, official, *people, plot = output.args
    assert people[0] == pytest.approx(1.0, abs=1e-5) and people[2] == people[3] == 0.0
    assert isinstance(official, float) and isinstance(people[1], float)  # official: the two LARGEST faces only
    assert re.search(r"^1\s+1\.000\s+1\.000\s+100%", report, re.MULTILINE) and "3 of 40 frames" in report
    assert plot.dim() == 4 and plot.shape[0] == 1 and plot.shape[2] == 960 and plot.shape[3] == 3
    assert output.ui["text"] == (report,) and output.ui["images"]
    assert f"no {CURRICULARFACE_FILE}" in report and "swaps: not checked" in report


def test_a_long_video_is_checked_over_all_its_frames(nodes, graph, monkeypatch):
    """Issue 21: a 97-frame video (Ingredients Long Video's default), person 1 in frames 0-48 and person 2
    in 49-96: the sampled frames span the whole video and each person's curve follows them to the end."""
    plot = harness.pack_module("ingredients_core.identity.plot")
    drawn, draw = [], plot.render_identity_plot
    monkeypatch.setattr(plot, "render_identity_plot", lambda report, crops: drawn.append(report) or draw(report, crops))
    frames = torch.cat([image(1).repeat(49, 1, 1, 1), image(2).repeat(48, 1, 1, 1)])
    report_text, _, *people, picture = check(nodes, graph, frames).args
    report, = drawn
    assert report.total_frames == 97 and len(report.frames) == OFFICIAL_FRAMES
    assert report.frames[0] == 0 and report.frames[-1] == 96 and f"{OFFICIAL_FRAMES} of 97 frames" in report_text
    first, second = report.arcface.people
    late = [i for i, frame in enumerate(report.frames) if frame >= 49]
    assert len(late) == OFFICIAL_FRAMES // 2
    assert all(second.per_frame[i] == pytest.approx(1.0, abs=1e-5) for i in late)
    assert all(first.per_frame[i] == pytest.approx(1.0, abs=1e-5)
               for i in range(OFFICIAL_FRAMES) if i not in late)
    assert people[0] == pytest.approx(people[1], abs=0.05) and picture.shape[2] == 960


def test_curricularface_is_used_when_its_file_is_in_face_encoder(nodes, graph, models_dir):
    path = write_tiny_curricularface(models_dir / "ingredients" / "Ingredients" / "face_encoder" / CURRICULARFACE_FILE)
    try:  # the face encoder loader finds and loads it once; the check then uses it at every run
        encoder, = nodes["IngredientsFaceEncoderLoader"].execute(model_folder="Ingredients", provider="auto").args
    finally:
        path.unlink()
    assert encoder.curricularface is not None and encoder.curricularface_patcher is not None
    report = check(nodes, dict(graph, encoder=encoder), image(1).repeat(2, 1, 1, 1)).args[0]
    assert "CurricularFace (IR-101): official" in report and f"no {CURRICULARFACE_FILE}" not in report


def test_routing_from_the_sampler_enables_the_swap_check(nodes, graph):
    routing_type = harness.pack_module("nodes.payloads").IngredientsRouting
    everyone_to_2 = torch.zeros(3, 32, 32, 2)
    everyone_to_2[..., 1] = 1.0                                 # the router gave the whole frame to person 2
    routing = routing_type(layers=(0,), last=(everyone_to_2,), mean=(everyone_to_2,), height=128, width=128, frames=9)
    report = check(nodes, graph, image(1).repeat(9, 1, 1, 1), routing=routing, frames_to_sample=2).args[0]
    assert "person 1 in person 2's region: frames 0, 8" in report


def test_faceless_video_gives_zeros_not_an_error(nodes, graph, monkeypatch):
    # the tiny detector here sees faces in any image: make it see none
    monkeypatch.setattr(graph["encoder"].encoder, "detect", lambda image, source="": [])
    report, official, *people, plot = check(nodes, graph, torch.ones(4, 64, 64, 3)).args
    assert official == 0.0 and people == [0.0, 0.0, 0.0, 0.0] and "4 without faces" in report


@pytest.mark.parametrize("change, needle", [
    (dict(frames=torch.rand(64, 64, 3)), "frames: expected an IMAGE batch"),
    (dict(frames="video.mp4"), "frames: expected an IMAGE batch"),
    (dict(ids=None), "ids: expected the people from Ingredients IDs"),
])
def test_wrong_inputs_are_clear_errors_naming_the_input(nodes, graph, change, needle):
    with pytest.raises(ValueError, match=needle):
        check(nodes, graph, **{"frames": image(1), **change})
