"""The identity check's result: numbers (:class:`IdentityReport`), a text table and JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .scores import ModelScores

OFFICIAL_DEFINITION = (
    "official = the paper's Face Similarity: per sampled frame, the highest cosine between any reference "
    "and either of the frame's two largest faces, averaged over the frames (a frame without faces counts "
    "0). It does not check who is who: one person shown twice scores as well as both people.")


@dataclass(frozen=True)
class IdentityReport:
    """Everything the identity check measured.

    Attributes:
        frames: the sampled video frame indices.
        total_frames: frames in the video.
        faces_per_frame: faces found in each sampled frame.
        threshold: similarity at which a person counts as found.
        margin: merge margin.
        routing_given: whether the sampler's routing was given (swaps are only looked for then).
        arcface: the ArcFace (glintr100) scores.
        curricularface: the CurricularFace scores, or None without the model file.
        curricularface_note: where CurricularFace came from, or why it is absent.
    """

    frames: tuple[int, ...]
    total_frames: int
    faces_per_frame: tuple[int, ...]
    threshold: float
    margin: float
    routing_given: bool
    arcface: ModelScores
    curricularface: ModelScores | None
    curricularface_note: str

    @property
    def means(self) -> tuple[float, ...]:
        """ArcFace mean similarity per person, in slot order."""
        return tuple(p.mean for p in self.arcface.people)

    @property
    def frames_without_faces(self) -> int:
        return sum(1 for n in self.faces_per_frame if n == 0)

    def to_dict(self) -> dict:
        """Plain JSON-ready data (lists, numbers, strings, None)."""
        data = asdict(self)
        data["official_definition"] = OFFICIAL_DEFINITION
        data["found_means"] = f"similarity >= {self.threshold:g} with the face matched to the person in that frame"
        return data

    def table(self) -> str:
        """The report as plain text: a small table per person, then the official score, swaps, merges."""
        lines = [self._header(), *_people_table(self.arcface),
                 f"official face similarity (paper's Table 1): {self.arcface.official:.3f}"]
        if self.curricularface is not None:
            cur = self.curricularface
            means = ", ".join(f"{p.person}: {p.mean:.3f}" for p in cur.people)
            lines.append(f"{cur.model}: official {cur.official:.3f}; per person mean {means}")
        else:
            lines.append(self.curricularface_note)
        lines += self._events()
        lines.append(OFFICIAL_DEFINITION)
        return "\n".join(lines) + "\n"

    def _header(self) -> str:
        if not self.frames:
            return "Identity check: the video has no frames; nothing was found."
        empty = self.frames_without_faces
        faces = f"; {empty} without faces (not found, official 0)" if empty else ""
        return (f"Identity check: {len(self.frames)} of {self.total_frames} frames{faces}. "
                f"{self.arcface.model}; found = similarity >= {self.threshold:g}.")

    def _events(self) -> list[str]:
        scores = self.arcface
        lines = []
        if not self.routing_given:
            lines.append("swaps: not checked (connect the sampler's routing to check them)")
        elif scores.swaps:
            lines.append("swaps: " + "; ".join(_grouped_swaps(scores.swaps)))
        else:
            lines.append("swaps: none")
        if scores.merges:
            lines.append(f"merges (within {self.margin:g}): " + "; ".join(
                f"frame {m.frame}, face {m.face}: persons {m.people[0]} and {m.people[1]} "
                f"({m.similarities[0]:.2f} / {m.similarities[1]:.2f})" for m in scores.merges))
        else:
            lines.append("merges: none")
        return lines


def _grouped_swaps(swaps) -> list[str]:
    """One entry per (person, region owner): "person 1 in person 2's region: frames 0, 12, 24"."""
    groups: dict[tuple[int, int], list[int]] = {}
    for swap in swaps:
        groups.setdefault((swap.person, swap.region_of), []).append(swap.frame)
    return [f"person {person} in person {owner}'s region: frame{'s' if len(frames) > 1 else ''} "
            f"{', '.join(str(f) for f in frames)}" for (person, owner), frames in sorted(groups.items())]


def _people_table(scores: ModelScores) -> list[str]:
    width = max([len("person")] + [len(p.name) + 2 for p in scores.people])
    rows = [f"{'person':<{width}}   mean    min  found  swaps  merges"]
    for p in scores.people:
        swaps = sum(1 for s in scores.swaps if s.person == p.person)
        merges = sum(1 for m in scores.merges if p.person in m.people)
        label = f"{p.person} {p.name}".strip()
        rows.append(f"{label:<{width}}  {p.mean:5.3f}  {p.minimum:5.3f}  {p.found:5.0%}  {swaps:5d}  {merges:6d}")
    return rows
