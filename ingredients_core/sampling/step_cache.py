"""TeaCache for the Ingredients transformer: skip the blocks when the step barely changes them.

TeaCache (Liu et al., 2024, "Timestep Embedding Tells: It's Time to Cache for Video Diffusion
Model") estimates how much a step's output would change from how much the timestep embedding
changed. Per step it adds ``poly(rel_l1(emb, previous emb))`` to an accumulator; while the
accumulator stays under the threshold, the blocks are skipped and the residual they added at the
last computed step (for video and text tokens) is added instead; once it reaches the threshold,
the blocks run again and the accumulator restarts. The first and the last step are always computed.

``poly`` rescales the raw distance with coefficients fitted for the model; the CogVideoX-5B ones
are the published ``[-1.53880483e+03, 8.43202495e+02, -1.34363087e+02, 7.97131516e+00,
-5.23162339e-02]`` (highest power first). That polynomial is positive only between its two real
roots (rel-L1 0.0075 and 0.330 for these coefficients): a step whose distance lies beyond the upper
root is outside what the fit describes and is always computed, and the small negative values below
the lower root count as no change. A cache belongs to one sampling run; it is never stored on the
model.

Decisions are made per *step*, not per forward: the pack's loop runs one forward per step
(:meth:`TeaCache.skip`); a host that may run a step as several calls (ComfyUI: the cond and uncond
halves as separate batches under memory pressure, two evaluations per step for Heun/DPM-2) asks
through a :class:`CacheCall` per call, which names the step and the call's chunks: the first call of
a step decides for all of them, and every chunk (cond, uncond) keeps a residual of its own.
:class:`TeaCachePatch` is the setting a host's model carries: a fresh :class:`TeaCache` per run
(between :meth:`~TeaCachePatch.begin_run` and :meth:`~TeaCachePatch.end_run`), the last run's
report kept without its tensors.

Threads: a host may run the calls of one step at once from several threads (ComfyUI's *MultiGPU
CFG Split*: cond on one device, uncond on another), through one shared :class:`TeaCachePatch`. The
patch makes the run's cache once under its lock; the cache's decisions, residuals and counts are
read and written under the cache's lock, so a step's decision is made once (by whichever call comes
first, on the step's timestep embedding, which every call of the step shares), and each chunk's
residual is its own. The previous step's embedding is compared on the current call's device.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Hashable, Optional, Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

COGVIDEOX_5B_COEFFICIENTS = (-1.53880483e+03, 8.43202495e+02, -1.34363087e+02, 7.97131516e+00, -5.23162339e-02)
WHOLE = "whole batch"  # the chunk key of the pack's own loop: one residual for the whole batch


@dataclass(eq=False)
class TeaCache:
    """Per-run TeaCache state. ``steps``: sampling steps in the run. Thread-safe (``_lock``): see the
    module's docstring; :meth:`skip` (the pack's own loop) is for one thread."""

    threshold: float
    steps: int
    coefficients: tuple[float, ...] = COGVIDEOX_5B_COEFFICIENTS
    _calls: int = 0
    _current: int = 0                                # the step decided last
    _accumulated: float = 0.0
    _previous: Optional[torch.Tensor] = None
    _decisions: dict = field(default_factory=dict)   # step -> skip (made at the step's first call)
    _computed: dict = field(default_factory=dict)    # step -> whether any call of it ran the blocks
    _residuals: dict = field(default_factory=dict)   # chunk key -> (video residual, text residual)
    _fit_limit: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.threshold <= 0:
            raise ValueError(f"TeaCache threshold must be above 0 (0 = no cache); got {self.threshold}")
        if self.steps < 1:
            raise ValueError(f"TeaCache needs the number of steps; got {self.steps}")
        positive = [r.real for r in np.roots(self.coefficients) if abs(r.imag) < 1e-12 and r.real > 0]
        self._fit_limit = max(positive) if positive else float("inf")

    # -- what a run did --------------------------------------------------------------------------
    @property
    def skipped_steps(self) -> list[int]:
        """Steps none of whose calls ran the blocks."""
        return [step for step, ran in sorted(self._computed.items()) if not ran]

    @property
    def skipped(self) -> int:
        return len(self.skipped_steps)

    @property
    def evaluations(self) -> int:
        """Steps whose blocks ran."""
        return sum(1 for ran in self._computed.values() if ran)

    def summary(self) -> str:
        total = self.evaluations + self.skipped
        speedup = total / self.evaluations if self.evaluations else 1.0
        return (f"TeaCache (threshold {self.threshold:g}): {self.skipped} of {total} transformer evaluations "
                f"skipped ({self.evaluations} computed, about {speedup:.2f}x fewer block runs)")

    # -- decisions -------------------------------------------------------------------------------
    def estimate(self, distance: float) -> float:
        """The rescaled change of one step (``inf`` beyond the fitted range: compute that step)."""
        if distance > self._fit_limit:
            return float("inf")
        return max(float(np.polyval(self.coefficients, distance)), 0.0)

    def decide(self, step: int, emb: torch.Tensor) -> bool:
        """Whether step ``step`` may reuse the cached residuals (``emb``: the timestep embedding of
        the step's first call, which decides; later calls of the same step get the same answer)."""
        with self._lock:
            self._current = step
            if step in self._decisions:
                return self._decisions[step]
            self._computed.setdefault(step, False)
            previous, self._previous = self._previous, emb.detach()
            skip = False
            if step == 0 or step >= self.steps - 1 or previous is None or not self._residuals:
                self._accumulated = 0.0
            else:  # the previous step's first call may have run on another device
                previous = previous.to(emb.device)
                distance = ((emb - previous).abs().mean() / previous.abs().mean()).item()
                self._accumulated += self.estimate(distance)
                skip = self._accumulated < self.threshold
                if not skip:
                    self._accumulated = 0.0
            self._decisions[step] = skip
            return skip

    def skip(self, emb: torch.Tensor) -> bool:
        """The pack's own loop: whether this forward (one per step, in order) may reuse the residual."""
        step, self._calls = self._calls, self._calls + 1
        return self.decide(step, emb)

    # -- residuals -------------------------------------------------------------------------------
    def holds(self, keys: Sequence[Hashable]) -> bool:
        """Whether a residual is cached for every chunk in ``keys``."""
        with self._lock:
            return all(key in self._residuals for key in keys)

    def reuse(self, video: torch.Tensor, text: torch.Tensor,
              keys: Sequence[Hashable] = (WHOLE,)) -> tuple[torch.Tensor, torch.Tensor]:
        """The block stack's output estimated as input + the last computed residual of each chunk
        (``keys``: the chunks of the batch in row order, equal numbers of rows)."""
        with self._lock:
            parts = [self._residuals[key] for key in keys]
        if len(parts) == 1:
            video_residual, text_residual = parts[0]
        else:  # chunks computed apart (or on other devices) are put together in this call's order
            video_residual = torch.cat([p[0].to(video.device) for p in parts])
            text_residual = torch.cat([p[1].to(text.device) for p in parts])
        return video + video_residual.to(video.device), text + text_residual.to(text.device)

    def store(self, video_residual: torch.Tensor, text_residual: torch.Tensor,
              keys: Sequence[Hashable] = (WHOLE,), step: Optional[int] = None) -> None:
        """Remember what the blocks added at a computed step, per chunk (``keys`` as for :meth:`reuse`)."""
        if len(keys) > 1 and video_residual.shape[0] % len(keys):
            raise ValueError(f"TeaCache: a batch of {video_residual.shape[0]} rows does not split into "
                             f"{len(keys)} equal chunks")
        parts = ([(video_residual, text_residual)] if len(keys) == 1
                 else list(zip(video_residual.chunk(len(keys)), text_residual.chunk(len(keys)))))
        with self._lock:
            self._computed[self._current if step is None else step] = True
            for key, part in zip(keys, parts):
                self._residuals[key] = part

    def release(self) -> None:
        """Drop the tensors (embedding, residuals); what the run did stays readable."""
        with self._lock:
            self._previous = None
            self._residuals = {}

    def call(self, step: int, keys: Sequence[Hashable]) -> "CacheCall":
        return CacheCall(self, step, tuple(keys))


def chunk_keys(batch: int, chunks: Sequence[int], uuids: Sequence[Hashable] = (),
               order: Optional[torch.Tensor] = None, part: Optional[Hashable] = None) -> list[Hashable]:
    """One key per chunk of a host's batch, in the transformer's row order: (kind, the chunk's uuid)
    (kind: ComfyUI's ``cond_or_uncond``, 0 cond, 1 uncond), or (kind, its count among the call's
    chunks of that kind) without uuids, so a cond keeps its residual whether it ran with the uncond
    or alone. ``order``: the row order the rows were put in (:func:`..native_ids.official_order`).
    Without chunks (or rows that do not split into them): the whole batch, one key. ``part``: which
    part of the latent the call holds (ComfyUI's context windows: the window's frames), so each part
    keeps residuals of its own."""
    chunks = list(chunks)
    if not chunks or batch % len(chunks):
        keys = [WHOLE]
    else:
        keys = [(kind, uuids[i] if len(uuids) == len(chunks) else chunks[:i].count(kind))
                for i, kind in enumerate(chunks)]
        if order is not None:
            size = batch // len(chunks)
            keys = [keys[int(order[i * size]) // size] for i in range(len(chunks))]
    return keys if part is None else [(key, part) for key in keys]


@dataclass
class CacheCall:
    """What the transformer sees for one host call at step ``step`` whose rows are the chunks
    ``keys`` (in row order): the step's decision, and only the residuals of these chunks. A call
    whose step is skipped but whose chunks have no residual yet computes (and counts as computed)."""

    cache: TeaCache
    step: int
    keys: tuple

    def skip(self, emb: torch.Tensor) -> bool:
        return self.cache.decide(self.step, emb) and self.cache.holds(self.keys)

    def reuse(self, video: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.reuse(video, text, self.keys)

    def store(self, video_residual: torch.Tensor, text_residual: torch.Tensor) -> None:
        self.cache.store(video_residual, text_residual, self.keys, self.step)


@dataclass(eq=False)
class TeaCachePatch:
    """TeaCache as a setting a host's model carries. Between :meth:`begin_run` and :meth:`end_run`
    (the host's bounds of one sampling run) :meth:`call` makes the run's :class:`TeaCache` at its
    first call, with the run's step count; outside a run every call computes and nothing is kept.
    ``last``: the last finished run's cache, tensors dropped (``summary()``, ``skipped_steps``).
    Thread-safe: :meth:`call` may come from several threads at once (``_lock`` guards ``_run``, so
    the run has one cache and one warning); :meth:`begin_run`/:meth:`end_run` bound the run from
    the host's thread."""

    threshold: float
    coefficients: tuple[float, ...] = COGVIDEOX_5B_COEFFICIENTS
    last: Optional[TeaCache] = None
    _run: Optional[dict] = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if not self.threshold > 0:
            raise ValueError(f"TeaCache threshold must be above 0 (0 = no cache); got {self.threshold}")

    def __deepcopy__(self, memo) -> "TeaCachePatch":
        """Shared, never copied: every clone of a patched model runs and reports through this one."""
        return self

    def begin_run(self) -> None:
        with self._lock:
            self._run = {"cache": None}

    def end_run(self) -> None:
        with self._lock:
            run, self._run = self._run, None
        cache = run.get("cache") if run is not None else None
        if cache is not None:
            cache.release()
            self.last = cache
            logger.info("%s", cache.summary())

    def call(self, position: Optional[tuple[int, int]], keys: Sequence[Hashable]) -> Optional[CacheCall]:
        """The cache for one call at ``position`` (step index, steps in the run; None: the host gave no
        schedule, so the step is unknown), or None (the call computes): outside a run, or without a
        schedule (named once per run)."""
        with self._lock:
            return self._call(position, keys)

    def _call(self, position: Optional[tuple[int, int]], keys: Sequence[Hashable]) -> Optional[CacheCall]:
        """:meth:`call`, the lock held."""
        if self._run is None:
            return None
        if position is None:
            if not self._run.get("warned"):
                self._run["warned"] = True
                logger.warning("TeaCache: the sampler gave no schedule (ComfyUI: sample_sigmas, set by CFGGuider), "
                               "so the step of a call is unknown: every step is computed. Use KSampler or "
                               "SamplerCustomAdvanced.")
            return None
        step, steps = position
        cache = self._run["cache"]
        if cache is None or cache.steps != steps:
            if cache is not None:
                logger.warning("TeaCache: the run's schedule changed from %d to %d steps; starting a new cache",
                               cache.steps, steps)
            cache = self._run["cache"] = TeaCache(self.threshold, steps, self.coefficients)
        return cache.call(step, keys)
