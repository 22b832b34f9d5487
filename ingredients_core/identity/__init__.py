"""The identity check: does each person in a video still look like their photos?

- :mod:`.check`: the check itself (references, sampled frames, per-person similarity over time).
- :mod:`.curricularface`: the CurricularFace recognition model it scores with (not the one that
  made the video, so the check is not graded by the generator's own encoder).
- :mod:`.scores`, :mod:`.report`, :mod:`.plot`: scores with the routing grid, the text report, the curve.

May import :mod:`ingredients_core.faces`, :mod:`ingredients_core.routing` and the package root.
"""
