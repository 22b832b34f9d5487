"""The identity check's core: scores from embeddings, and the whole check on tiny face models.

The tiny detector finds no faces, so faces are injected as detections (``detections=``); alignment,
ArcFace and CurricularFace run their real code paths on the tiny model files.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ingredients_core.faces import Detection, FaceEncoder, find_face_models
from ingredients_core.identity.curricularface import CURRICULARFACE_FILE
from ingredients_core.faces.detector import align_face
from ingredients_core.identity.check import (
    OFFICIAL_FRAMES,
    IdentityInputError,
    IdentityModels,
    Reference,
    evaluate_identity,
    sample_indices,
)
from ingredients_core.identity.plot import render_identity_plot
from ingredients_core.identity.scores import (
    DEFAULT_THRESHOLD,
    FrameFaces,
    RoutingGrid,
    match_people,
    official_score,
    score_people,
)
from ingredients_core.routing.maps import ID_COLORS
from ingredients_core.testing.tiny_curricularface import write_tiny_curricularface
from ingredients_core.testing.tiny_faces import write_tiny_face_models

SIZE = 256
# Where the face sits in a 256 x 256 photo; a second face 256 px to the right in side-by-side frames.
FACE = Detection(box=(70.0, 60.0, 186.0, 200.0), score=0.99,
                 landmarks=np.array([[100, 110], [156, 110], [128, 140], [106, 170], [150, 170]], np.float32))
RIGHT = Detection(box=(326.0, 60.0, 442.0, 200.0), score=0.99, landmarks=FACE.landmarks + np.float32([256, 0]))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def photo(seed: int) -> np.ndarray:
    """A smooth random 256 x 256 RGB photo."""
    coarse = np.random.default_rng(seed).integers(0, 256, (8, 8, 3)).astype(np.float32)
    image = torch.nn.functional.interpolate(torch.from_numpy(coarse).permute(2, 0, 1)[None], size=(SIZE, SIZE),
                                            mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    return image.round().to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def face_dir(tmp_path_factory):
    folder = write_tiny_face_models(tmp_path_factory.mktemp("face_encoder"))
    write_tiny_curricularface(folder / CURRICULARFACE_FILE)
    return folder


@pytest.fixture(scope="module")
def encoder(face_dir):
    return FaceEncoder.load(find_face_models([face_dir]), device="cpu")


@pytest.fixture(scope="module")
def with_curricularface(encoder, face_dir):
    return IdentityModels.from_encoder(encoder, [face_dir])


@pytest.fixture(scope="module")
def arcface_only(encoder, tmp_path_factory):
    return IdentityModels.from_encoder(encoder, [tmp_path_factory.mktemp("no_curricularface")])


@pytest.fixture(scope="module")
def people(encoder):
    return [encoder.encode(photo(seed), detections=[FACE], source=name) for seed, name in ((1, "Ann"), (2, "Bob"))]


def side_by_side(left: np.ndarray, right: np.ndarray, frames: int) -> np.ndarray:
    return np.stack([np.concatenate([left, right], axis=1)] * frames)


def routing_sides(left_person: int, frames: int) -> RoutingGrid:
    """Routing of a 2-person, 512 px wide video: the left half to ``left_person`` (0-based)."""
    maps = np.zeros((3, 4, 8, 2))
    maps[:, :, :4, left_person] = 1.0
    maps[:, :, 4:, 1 - left_person] = 1.0
    return RoutingGrid(maps, frames)


# -- scores from embeddings ----------------------------------------------------------------------

def _official_by_hand(references, frames) -> float:
    """The official formula written out: per frame the two largest faces by box area, the highest
    cosine over every (reference, face) pair, then the mean over frames (0 for a faceless frame)."""
    values = []
    for frame in frames:
        order = sorted(range(len(frame.boxes)), key=lambda i: (frame.boxes[i][2] - frame.boxes[i][0])
                       * (frame.boxes[i][3] - frame.boxes[i][1]))
        cosines = []
        for reference in references:
            for face in order[-2:]:
                emb = frame.embeddings[face]
                dot = sum(a * b for a, b in zip(reference, emb))
                cosines.append(dot / (math.sqrt(sum(a * a for a in reference)) * math.sqrt(sum(b * b for b in emb))))
        values.append(max(cosines) if cosines else 0.0)
    return sum(values) / len(values)


def test_official_score_is_the_papers_formula_on_the_same_embeddings():
    rng = np.random.default_rng(0)
    references = rng.normal(size=(2, 16))
    frames = []
    for index in range(12):
        count = index % 5                                   # 0 to 4 faces, some frames with none
        corners = rng.uniform(0, 200, (count, 2))
        sizes = rng.uniform(10, 100, (count, 2))
        boxes = np.hstack([corners, corners + sizes])
        embeddings = references[rng.integers(0, 2, count)] + rng.normal(scale=1.5, size=(count, 16))
        frames.append(FrameFaces(index, boxes, embeddings, (400, 300)))
    mean, per_frame = official_score(references, frames)
    assert mean == pytest.approx(_official_by_hand(references, frames), abs=1e-12)
    assert per_frame[0] == 0.0 and len(per_frame) == 12


def test_hungarian_matching_beats_greedy_and_leaves_extra_people_unmatched():
    similarity = np.array([[0.9, 0.8], [0.85, 0.1]])      # greedy: face 0 -> A, face 1 -> B (total 1.0)
    assert match_people(similarity).tolist() == [1, 0]     # one to one: face 1 -> A, face 0 -> B (1.65)
    assert match_people(np.array([[0.2, 0.7, 0.1]])).tolist() == [-1, 0, -1]
    assert match_people(np.zeros((0, 2))).tolist() == [-1, -1]


def test_a_face_equally_close_to_two_people_is_a_merge():
    references = np.array([[1.0, 0.0], [0.0, 1.0]])
    halfway = FrameFaces(7, np.array([[0, 0, 10, 10]]), np.array([[1.0, 1.02]]), (20, 20))
    clear = FrameFaces(8, np.array([[0, 0, 10, 10]]), np.array([[1.0, 0.2]]), (20, 20))
    scores = score_people("test", references, ["A", "B"], [halfway, clear], total=9, threshold=0.5, margin=0.05)
    assert [(m.frame, m.face, m.people) for m in scores.merges] == [(7, 0, (1, 2))]
    assert scores.merges[0].similarities == pytest.approx((0.700, 0.714), abs=1e-3)


def test_routing_shares_follow_the_face_box_and_the_latent_frame():
    maps = np.zeros((3, 2, 4, 2))
    maps[:, :, :2, 0] = 1.0                                # left half: person 1
    maps[2, :, :, :] = [0.0, 1.0]                          # latent frame 2 (video frames 5..8): all person 2
    grid = RoutingGrid(maps, frames=9)
    left_box = (0.0, 0.0, 40.0, 40.0)                      # the left quarter of an 160 x 40 frame
    assert grid.shares(left_box, 0, 9, (160, 40)).tolist() == [1.0, 0.0]
    assert grid.shares(left_box, 8, 9, (160, 40)).tolist() == [0.0, 1.0]
    straddling = (40.0, 0.0, 120.0, 40.0)                  # half in the left half, half in the right
    assert grid.shares(straddling, 0, 9, (160, 40)).tolist() == [0.5, 0.0]
    assert grid.shares(left_box, 16, 17, (160, 40)).tolist() == [0.0, 1.0]  # 17 frames mapped onto 9 by time


def test_frames_are_sampled_as_the_official_metric():
    assert sample_indices(49) == np.linspace(0, 48, OFFICIAL_FRAMES, dtype=int).tolist()
    assert sample_indices(10) == list(range(10))           # shorter than 24: every frame once
    assert sample_indices(0) == [] and sample_indices(100, 3) == [0, 49, 99]


# -- the whole check on tiny models --------------------------------------------------------------

def test_official_score_of_a_video_recomputes_from_its_own_embeddings(encoder, people, arcface_only):
    video = side_by_side(photo(1), photo(3), 30)
    report = evaluate_identity(video, people, arcface_only, detections={i: [FACE, RIGHT] for i in range(30)})
    frame = np.ascontiguousarray(video[0][:, :, ::-1])
    faces = np.stack([encoder.arcface.embedding(align_face(frame, d.landmarks)).numpy()[0] for d in (FACE, RIGHT)])
    references = [p.id_cond[0, :512].numpy() for p in people]
    same = [FrameFaces(i, np.array([FACE.box, RIGHT.box]), faces, (512, 256)) for i in report.frames]
    assert report.frames == tuple(sample_indices(30))
    assert report.arcface.official == pytest.approx(_official_by_hand(references, same), abs=1e-6)


def test_a_video_of_person_a_only_finds_a_everywhere_and_b_nowhere(people, with_curricularface):
    frames = np.stack([photo(1)] * 9)
    report = evaluate_identity(frames, people, with_curricularface, detections={i: [FACE] for i in range(9)})
    ann, bob = report.arcface.people
    assert ann.found == 1.0 and all(ann.found_frames) and ann.mean == pytest.approx(1.0, abs=1e-5)
    assert bob.found == 0.0 and bob.mean == 0.0 and not any(bob.found_frames)
    cur_ann, cur_bob = report.curricularface.people
    assert cur_ann.found == 1.0 and cur_bob.found == 0.0
    assert report.curricularface.official > DEFAULT_THRESHOLD


def test_person_a_shown_twice_scores_well_officially_but_b_is_not_found(people, arcface_only):
    report = evaluate_identity(side_by_side(photo(1), photo(1), 5), people, arcface_only,
                               detections={i: [FACE, RIGHT] for i in range(5)})
    assert report.arcface.official == pytest.approx(1.0, abs=1e-5)   # the official score's blind spot
    assert report.arcface.people[0].found == 1.0 and report.arcface.people[1].found == 0.0


def test_a_face_in_the_region_routed_to_the_other_person_is_a_swap(people, arcface_only):
    video = side_by_side(photo(1), photo(2), 5)              # Ann on the left, Bob on the right
    detections = {i: [FACE, RIGHT] for i in range(5)}
    swapped = evaluate_identity(video, people, arcface_only, detections=detections, routing=routing_sides(1, 5))
    assert [(s.frame, s.person, s.region_of) for s in swapped.arcface.swaps if s.person == 1] == [
        (i, 1, 2) for i in range(5)]
    assert {s.person for s in swapped.arcface.swaps} == {1, 2}
    assert "person 1 in person 2's region: frames 0, 1, 2, 3, 4" in swapped.table()
    kept = evaluate_identity(video, people, arcface_only, detections=detections, routing=routing_sides(0, 5))
    assert kept.arcface.swaps == () and "swaps: none" in kept.table()
    unrouted = evaluate_identity(video, people, arcface_only, detections=detections)
    assert "swaps: not checked" in unrouted.table()


@pytest.mark.parametrize("frames", [np.zeros((6, 64, 96, 3), np.uint8), torch.rand(4, 64, 96, 3),
                                    torch.zeros(0, 64, 96, 3)], ids=["blank", "noise", "no frames"])
def test_a_video_without_faces_gives_zeros_and_not_found(people, with_curricularface, frames):
    report = evaluate_identity(frames, people, with_curricularface)   # the tiny detector finds nothing
    for scores in (report.arcface, report.curricularface):
        assert scores.official == 0.0 and scores.swaps == () and scores.merges == ()
        assert all(p.mean == 0.0 and p.minimum == 0.0 and p.found == 0.0 for p in scores.people)
    assert report.means == (0.0, 0.0)
    assert "0%" in report.table()
    assert render_identity_plot(report, [p.crop for p in people]).shape[2] == 3


def test_without_the_curricularface_file_its_scores_are_absent_and_the_report_says_so(people, arcface_only):
    report = evaluate_identity(np.stack([photo(1)] * 3), people, arcface_only, detections={i: [FACE] for i in range(3)})
    assert report.curricularface is None and f"no {CURRICULARFACE_FILE}" in report.table()
    data = json.loads(json.dumps(report.to_dict()))
    assert data["curricularface"] is None and data["arcface"]["people"][0]["found"] == 1.0
    assert data["arcface"]["people"][1]["per_frame"] == [0.0, 0.0, 0.0] and "two largest" in data["official_definition"]


def test_plot_draws_each_person_in_the_routing_colour_beside_the_crop(people, arcface_only):
    report = evaluate_identity(side_by_side(photo(1), photo(2), 9), people, arcface_only,
                               detections={i: [FACE, RIGHT] for i in range(9)})
    image = render_identity_plot(report, [p.crop for p in people])
    assert image.dtype == np.uint8 and image.shape[1] == 960 and image.shape[0] > 2 * 112
    pixels = {tuple(p) for p in image.reshape(-1, 3)}
    for colour in ID_COLORS[:2]:
        assert tuple(int(round(255 * c)) for c in colour) in pixels


@pytest.mark.parametrize("frames, needle", [
    (torch.rand(64, 96, 3), "frames: expected video frames"),
    ([np.zeros((8, 8, 3))], "frames: expected video frames"),
    (np.full((2, 8, 8, 3), 2.0, np.float32), "frames: frame 0"),
])
def test_frames_that_are_not_a_video_batch_are_a_clear_error(people, arcface_only, frames, needle):
    with pytest.raises(IdentityInputError, match=needle):
        evaluate_identity(frames, people, arcface_only)


def test_no_people_or_mismatched_routing_are_clear_errors(people, arcface_only):
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(IdentityInputError, match="people: no people given"):
        evaluate_identity(frames, [], arcface_only)
    with pytest.raises(IdentityInputError, match="people: person 1 is a str"):
        evaluate_identity(frames, ["Ann"], arcface_only)
    three = RoutingGrid(np.zeros((1, 2, 2, 3)), 2)
    with pytest.raises(IdentityInputError, match="routing: made for 3 people"):
        evaluate_identity(frames, people, arcface_only, routing=three)
    with pytest.raises(IdentityInputError, match="num_frames"):
        evaluate_identity(frames, people, arcface_only, num_frames=0)


def test_reference_takes_the_arcface_part_of_the_features(people):
    reference = Reference.from_features(people[0])
    assert reference.name == "Ann" and reference.arcface.shape == (512,)
    assert np.array_equal(reference.arcface, people[0].id_cond[0, :512].numpy())
