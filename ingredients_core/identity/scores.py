"""Identity scores from face embeddings (pure numpy + scipy; no models, no images).

Two answers to "did every person keep their face?":

- :func:`official_score`, the paper's Face Similarity (``metric/face_sim_fid.py``): per frame, the
  highest cosine over every (reference, face) pair among the frame's two largest faces; the mean over
  the sampled frames. It never asks *which* person a face is, so a video showing person A twice and
  person B never scores as well as one showing both.
- :func:`score_people`, per person: in each frame the detected faces are matched to the people one to
  one (Hungarian assignment on cosine similarity, ``scipy.optimize.linear_sum_assignment``); a person
  is *found* in a frame when the face matched to them reaches ``threshold``. Per person: the mean and
  minimum similarity over the sampled frames (0 in a frame where no face was matched to them) and the
  share of frames where they were found. *Swaps*: a found person whose face lies mostly (over half
  the routing weight inside the face box) in the region the router gave another person. *Merges*: a
  face whose similarities to two people both reach ``threshold`` and differ by less than ``margin``.

A frame without faces scores 0 in the official score and "not found" for every person.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Default similarity at which a person counts as found in a frame (ArcFace cosine).
DEFAULT_THRESHOLD = 0.35
#: Default margin under which a face equally close to two people counts as a merge.
DEFAULT_MARGIN = 0.05
#: The official metric scores only the two largest faces of each frame.
OFFICIAL_FACES_PER_FRAME = 2
#: Share of the routing weight inside a face box above which the box lies "mostly" in that region.
REGION_SHARE = 0.5


@dataclass(frozen=True)
class FrameFaces:
    """The faces found in one sampled frame.

    Attributes:
        index: the frame's index in the video.
        boxes: ``(n, 4)`` float ``(x1, y1, x2, y2)`` in the frame's pixels.
        embeddings: ``(n, D)`` float embeddings (any norm; cosines are taken).
        size: ``(width, height)`` of the frame.
    """

    index: int
    boxes: np.ndarray
    embeddings: np.ndarray
    size: tuple[int, int]

    @property
    def areas(self) -> np.ndarray:
        boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


@dataclass(frozen=True)
class RoutingGrid:
    """What the router gave each video region: ``maps`` ``(latent frames, rows, cols, people)``
    assignment weights (rows of a cell sum to at most 1; the rest went to nobody), for a video of
    ``frames`` frames (the sampler's frame count; evaluated frames are mapped onto it by time)."""

    maps: np.ndarray
    frames: int

    def shares(self, box: Sequence[float], frame: int, total: int, size: tuple[int, int]) -> np.ndarray:
        """``(people,)`` mean assignment weight over the cells a face box covers (area-weighted).

        ``frame`` of ``total`` evaluated frames is mapped to the routed video by time, then to its
        latent frame (frame 0 alone, then groups of four, as the VAE packs them)."""
        from ..routing.maps import latent_index

        latent_frames, rows, cols, _ = self.maps.shape
        routed = round(frame * (self.frames - 1) / (total - 1)) if total > 1 else 0
        cell = self.maps[latent_index(routed, latent_frames)]
        width, height = size
        x = _overlaps(box[0] / width * cols, box[2] / width * cols, cols)
        y = _overlaps(box[1] / height * rows, box[3] / height * rows, rows)
        weights = np.outer(y, x)
        if weights.sum() <= 0:
            return np.zeros(self.maps.shape[-1])
        return np.tensordot(weights, cell, axes=([0, 1], [0, 1])) / weights.sum()


def _overlaps(start: float, end: float, cells: int) -> np.ndarray:
    """Length of ``[start, end]`` inside each unit cell ``[k, k + 1]``, k = 0 .. cells - 1."""
    edges = np.arange(cells, dtype=np.float64)
    return np.clip(np.minimum(end, edges + 1) - np.maximum(start, edges), 0.0, None)


@dataclass(frozen=True)
class PersonScore:
    """One person's result. ``person`` is the 1-based slot; ``per_frame`` the similarity in each
    sampled frame (0 where no face was matched to them), ``found_frames`` where it reached the
    threshold; ``mean``/``minimum`` over ``per_frame``; ``found`` the share of found frames."""

    person: int
    name: str
    mean: float
    minimum: float
    found: float
    per_frame: tuple[float, ...]
    found_frames: tuple[bool, ...]


@dataclass(frozen=True)
class Swap:
    """In video frame ``frame``, the face matched to ``person`` (similarity ``similarity``) lies
    mostly in the region the router gave ``region_of`` (``share`` of the weight inside its box)."""

    frame: int
    person: int
    region_of: int
    share: float
    similarity: float


@dataclass(frozen=True)
class Merge:
    """In video frame ``frame``, face ``face`` (in detector order) is about equally close to two
    people: ``people`` (1-based) with ``similarities``."""

    frame: int
    face: int
    people: tuple[int, int]
    similarities: tuple[float, float]


@dataclass(frozen=True)
class ModelScores:
    """Every score of one face-recognition model (``model`` names it)."""

    model: str
    official: float
    official_per_frame: tuple[float, ...]
    people: tuple[PersonScore, ...]
    swaps: tuple[Swap, ...]
    merges: tuple[Merge, ...]


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(n, m)`` cosine similarities between the rows of ``a`` ``(n, D)`` and ``b`` ``(m, D)``;
    a zero row gives 0, never NaN."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def official_frame_score(references: np.ndarray, faces: FrameFaces) -> float:
    """The official per-frame value: the best cosine between any reference and any of the frame's
    two largest faces (by box area); 0 for a frame without faces (the official script crashes)."""
    if len(faces.embeddings) == 0:
        return 0.0
    largest = np.argsort(faces.areas, kind="stable")[-OFFICIAL_FACES_PER_FRAME:]
    return float(cosine_matrix(references, faces.embeddings[largest]).max())


def official_score(references: np.ndarray, frames: Sequence[FrameFaces]) -> tuple[float, tuple[float, ...]]:
    """(mean over frames, per-frame values) of :func:`official_frame_score`; 0 for no frames."""
    per_frame = tuple(official_frame_score(references, f) for f in frames)
    return (float(np.mean(per_frame)) if per_frame else 0.0), per_frame


def match_people(similarity: np.ndarray) -> np.ndarray:
    """``(people,)``: the face index matched to each person, -1 for none (one to one, maximising the
    summed cosine). ``similarity``: ``(faces, people)``."""
    from scipy.optimize import linear_sum_assignment

    faces, people = similarity.shape
    matched = np.full(people, -1, dtype=np.int64)
    if faces and people:
        rows, cols = linear_sum_assignment(similarity, maximize=True)
        matched[cols] = rows
    return matched


def frame_merges(frame: int, similarity: np.ndarray, threshold: float, margin: float) -> list[Merge]:
    """Faces of one frame whose two closest people both reach ``threshold`` within ``margin``."""
    merges = []
    if similarity.shape[1] < 2:
        return merges
    for face, row in enumerate(similarity):
        second, first = np.argsort(row, kind="stable")[-2:]
        if row[second] >= threshold and row[first] - row[second] < margin:
            pair = tuple(sorted((int(first), int(second))))
            merges.append(Merge(frame, face, (pair[0] + 1, pair[1] + 1),
                                (float(row[pair[0]]), float(row[pair[1]]))))
    return merges


def frame_swaps(faces: FrameFaces, matched: np.ndarray, similarity: np.ndarray, threshold: float,
                routing: RoutingGrid, total: int) -> list[Swap]:
    """Found people of one frame whose face lies mostly in another person's routed region."""
    swaps = []
    for person, face in enumerate(matched):
        if face < 0 or similarity[face, person] < threshold:
            continue
        shares = routing.shares(faces.boxes[face], faces.index, total, faces.size)
        owner = int(np.argmax(shares))
        if owner != person and shares[owner] > REGION_SHARE:
            swaps.append(Swap(faces.index, person + 1, owner + 1, float(shares[owner]),
                              float(similarity[face, person])))
    return swaps


def score_people(model: str, references: np.ndarray, names: Sequence[str], frames: Sequence[FrameFaces],
                 total: int, threshold: float = DEFAULT_THRESHOLD, margin: float = DEFAULT_MARGIN,
                 routing: RoutingGrid | None = None) -> ModelScores:
    """All scores of one model.

    Args:
        references: ``(people, D)`` reference embeddings, in slot order.
        names: one name per person, for the report.
        frames: the sampled frames' faces (embeddings from the same model as ``references``).
        total: number of frames of the evaluated video (maps frames onto ``routing`` by time).
        routing: the sampler's routing, for swaps (none are looked for without it).
    """
    people = len(references)
    sims = np.zeros((len(frames), people))
    found = np.zeros((len(frames), people), dtype=bool)
    swaps: list[Swap] = []
    merges: list[Merge] = []
    for row, faces in enumerate(frames):
        similarity = cosine_matrix(faces.embeddings, references) if len(faces.embeddings) else np.zeros((0, people))
        matched = match_people(similarity)
        for person, face in enumerate(matched):
            if face >= 0:
                sims[row, person] = similarity[face, person]
                found[row, person] = similarity[face, person] >= threshold
        merges += frame_merges(faces.index, similarity, threshold, margin)
        if routing is not None:
            swaps += frame_swaps(faces, matched, similarity, threshold, routing, total)
    official, official_frames = official_score(references, frames)
    scores = tuple(
        PersonScore(person=p + 1, name=names[p], mean=float(sims[:, p].mean()) if len(frames) else 0.0,
                    minimum=float(sims[:, p].min()) if len(frames) else 0.0,
                    found=float(found[:, p].mean()) if len(frames) else 0.0,
                    per_frame=tuple(float(v) for v in sims[:, p]), found_frames=tuple(bool(v) for v in found[:, p]))
        for p in range(people))
    return ModelScores(model, official, official_frames, scores, tuple(swaps), tuple(merges))
