"""Routed IDs applied inside a host's sampler (the native ComfyUI MODEL), without the pack's loop.

A host calls the transformer once per model evaluation with a batch of *chunks* (ComfyUI: the
``cond_or_uncond`` list, 0 = cond, 1 = uncond, each chunk ``B / len(chunks)`` rows) at one sigma of a
schedule (``sample_sigmas``). :class:`IDPatch` turns that into what the pack's sampler gives the
transformer at the same step:

- the step: the position of the sigma in the schedule (:func:`step_position`), so step ranges
  apply as in the pack's sampler (step ``i`` of ``n``); without a schedule, the fraction of the
  noise level (see there);
- the official routing mode routes every row with batch row 0 (the official ``[negative,
  positive]`` quirk): the rows are ordered uncond chunk first (:func:`official_order`), which is
  ComfyUI's order already. A call without an uncond chunk (ComfyUI split cond and uncond into
  separate calls, or cfg 1) routes on its own first row: the uncond half is then exact and the cond
  half is routed on itself (as ``per_sample``). ``per_sample`` is exact in every split;
- the ID tokens' per-layer keys/values (``prepare_ids``) once per run: between :meth:`begin_run`
  and :meth:`end_run` (the host's outer-sample hook) they are kept per device/dtype, then dropped;
  outside a run they are computed per call and nothing is kept;
- the routing recorded once per step (:class:`StepRecorder`): the row the pack's sampler records
  (official: the routed uncond row; per_sample: the last cond row), whichever call of the step
  holds it, so split and batched runs record the same maps.

Threads: one patch serves every clone of a patched model (``__deepcopy__`` returns it), and a host
may call it from several threads at once (ComfyUI's *MultiGPU CFG Split* runs the cond and uncond
halves on two devices from a thread pool). The run state is guarded by a lock: each run cache entry
(keys/values per device and dtype, a plan per grid and device) is made once, by the first call that
needs it (a call needing another entry is not held up meanwhile); the recorder arbitrates each
step's offers under its own lock, so a concurrent split records exactly what the same split run one
call after the other records. The tokens and options are never written after Apply IDs.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any, Optional, Sequence

import torch

from .plan import RoutingOptions, RoutingPlan, RoutingRecorder, StepRouting

logger = logging.getLogger(__name__)

COND, UNCOND = 0, 1
#: Recording priority of the row a call offers: the row the pack's sampler records wins over a stand-in.
EXACT, STAND_IN = 2, 1


def step_position(sigma: torch.Tensor, sample_sigmas: Optional[torch.Tensor],
                  timestep: Optional[torch.Tensor] = None, timesteps: int = 1000) -> tuple[int, int]:
    """(step index, step count) of an evaluation at ``sigma`` (all rows share it).

    With the schedule ``sample_sigmas`` (n + 1 values, descending, the last 0 or tiny): the index of
    the schedule interval the sigma lies in (``sample_sigmas[i] >= sigma > sample_sigmas[i + 1]``), of
    n steps; an evaluation between two sigmas (Heun, DPM-2) counts to the step it started from.
    Without it: the noise level's position in the model's ``timesteps`` (``timestep`` t gives step
    ``timesteps - 1 - t`` of ``timesteps``), so a range of 0.5..1.0 means the less noisy half.
    """
    value = float(sigma.reshape(-1)[0])
    if sample_sigmas is not None and sample_sigmas.numel() >= 2:
        schedule = sample_sigmas.detach().float().cpu().reshape(-1)
        total = schedule.numel() - 1
        above = int((schedule[:total] >= value * (1 - 1e-5)).sum())
        return min(max(above - 1, 0), total - 1), total
    if timestep is None:
        raise ValueError("step_position needs the schedule (sample_sigmas) or the timestep")
    t = int(round(float(timestep.reshape(-1)[0])))
    return min(max(timesteps - 1 - t, 0), timesteps - 1), timesteps


def official_order(chunks: Sequence[int], batch: int) -> Optional[torch.Tensor]:
    """Row order that puts the (first) uncond chunk first, or None when it already is first or absent."""
    chunks = list(chunks)
    if UNCOND not in chunks or chunks[0] == UNCOND or batch % len(chunks):
        return None
    size = batch // len(chunks)
    first = chunks.index(UNCOND)
    order = [first] + [i for i in range(len(chunks)) if i != first]
    return torch.cat([torch.arange(i * size, (i + 1) * size) for i in order])


class StepRecorder:
    """Feeds a core :class:`RoutingRecorder` one assignment per layer and step, whichever of the
    step's calls holds the row the pack's sampler records (higher priority wins, a later call wins
    at equal priority). Committed when the step changes and at :meth:`finish`, which also moves
    the recording to the CPU, so nothing stays on the GPU after a run.

    Thread-safe: every method holds the recorder's lock, so calls of one step running at once on
    several devices (threads) offer into one pending record and exactly one assignment per layer
    and step is committed (the priorities, not the threads' timing, pick it). A row offered on
    another device than the layer's running sum is moved to that sum's device when committed."""

    def __init__(self) -> None:
        self.recorder = RoutingRecorder()
        self.finished: Optional[RoutingRecorder] = None
        self._step: Optional[int] = None
        self._pending: dict[int, tuple[int, torch.Tensor]] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            self._restart()

    def at_step(self, step: int, grid: tuple[int, int, int]) -> None:
        with self._lock:
            if step != self._step:
                self._commit()
                self._step = step
            self.recorder.grid = grid

    def offer(self, layer: int, weights: torch.Tensor, priority: int,
              frames: Optional[Sequence[int]] = None) -> None:
        """``weights`` (1, N, P): the row this call offers for ``layer``; ``frames``: the video's latent
        frames the call holds (a host's context window; None: the whole video). Each window of a step
        is kept; they are put together into the whole video's map when the step is committed."""
        key = (layer, None if frames is None else tuple(frames))
        weights = weights.detach()
        with self._lock:
            held = self._pending.get(key)
            if held is None or priority >= held[0]:
                self._pending[key] = (priority, weights)

    def finish(self) -> None:
        with self._lock:
            self._commit()
            done = self.recorder
            done.last = {k: v.cpu() for k, v in done.last.items()}
            done.total = {k: v.cpu() for k, v in done.total.items()}
            self.finished = done if done.last else None  # a run that routed nobody leaves no stale maps
            self._restart()

    def _restart(self) -> None:
        self.recorder = RoutingRecorder()
        self._step, self._pending = None, {}

    def _commit(self) -> None:
        """Adds the pending rows of every layer, windows put together into the whole video (the caller
        holds the lock); a row offered on another device (the calls of a split on two devices) joins
        the device of its layer's running total."""
        layers: dict[int, list] = {}
        for (layer, frames), (_, weights) in self._pending.items():
            held = self.recorder.total.get(layer)
            if held is not None and held.device != weights.device:
                weights = weights.to(held.device)
            layers.setdefault(layer, []).append((frames, weights))
        for layer in sorted(layers):
            self.recorder.add(layer, _whole_video(layers[layer], self.recorder.grid[0]))
        self._pending = {}


def _whole_video(offers: list, video_frames: int) -> torch.Tensor:
    """One step's offers of a layer -> (1, N, P) over the whole video: a whole-video offer as it is;
    windows placed at their frames, frames shared by several windows averaged (as the host fuses
    its windows' outputs, with equal weights)."""
    whole = [w for frames, w in offers if frames is None]
    if whole:
        return whole[-1]
    first = offers[0][1]
    per_frame_tokens = first.shape[1] // len(offers[0][0])
    total = first.new_zeros((1, video_frames, per_frame_tokens, first.shape[-1]), dtype=torch.float32)
    count = torch.zeros(video_frames, dtype=torch.float32, device=first.device)
    for frames, weights in offers:
        index = torch.tensor(frames, device=first.device)
        total.index_add_(1, index, weights.to(first.device).float().view(1, len(frames), per_frame_tokens, -1))
        count.index_add_(0, index, torch.ones(len(frames), device=first.device))
    total = total / count.clamp(min=1).view(1, -1, 1, 1)
    return total.flatten(1, 2).to(first.dtype)


@dataclasses.dataclass
class _CallRecorder:
    """What the transformer calls ``add`` on during one call: picks the row and its priority."""

    target: StepRecorder
    row: int
    priority: int
    frames: Optional[list[int]] = None  # the video's latent frames of this call (a context window)

    def add(self, layer: int, weights: torch.Tensor) -> None:
        self.target.offer(layer, weights[self.row:self.row + 1], self.priority, self.frames)


def _record_row(mode: str, chunks: list[int], batch: int) -> tuple[int, int]:
    """(row of the transformer's assignment to record, priority), rows in the call's (ordered) layout."""
    if mode == "official":  # one routed row: the uncond row when the call has one
        return 0, EXACT if (UNCOND in chunks or not chunks) else STAND_IN
    if COND in chunks and batch % len(chunks) == 0:
        size = batch // len(chunks)
        last_cond = max(i for i, c in enumerate(chunks) if c == COND)
        return (last_cond + 1) * size - 1, EXACT
    return batch - 1, STAND_IN


SPLIT_WARNING = ("Ingredients Apply IDs: ComfyUI ran the cond and uncond halves as separate calls ({why}); in "
                 "official routing the cond half was then routed on itself (as per_sample), so this run differs "
                 "from a one-device batched run. {fix}Routing mode per_sample gives the same result either way.")
WHY_MEMORY = "not enough free memory for both in one"
WHY_DEVICES = "on several devices at once: MultiGPU CFG Split"
FIX_MEMORY = "Free memory, or use per_sample. "


@dataclasses.dataclass(eq=False)
class IDPatch:
    """ID tokens (P, T, token_dim) on the host's intermediate device, how they are routed, and the
    run state (the keys/values per device and dtype, the routing plans per token grid).

    ``model_folder``: the model the tokens were projected with (checked by the node applying it).

    Thread-safe between :meth:`begin_run` and :meth:`end_run` (which the host calls from one
    thread, around the run): :meth:`step_inputs` may be called from several threads at once (see
    the module's docstring); ``_lock`` guards ``_run``."""

    tokens: torch.Tensor
    options: RoutingOptions
    model_folder: Any = None
    recorder: Optional[StepRecorder] = dataclasses.field(default_factory=StepRecorder)
    _run: Optional[dict] = dataclasses.field(default=None, repr=False)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    @property
    def num_ids(self) -> int:
        return int(self.tokens.shape[0])

    def __deepcopy__(self, memo) -> "IDPatch":
        """Shared, never copied: a host's model clone copies its options (ComfyUI 0.3.64 with
        ``copy.deepcopy``; 0.33 shares objects, and its MultiGPU clones deep-copy them), and every
        clone of a patched model must record into, and be read from, the same patch (its tokens are
        not changed after Apply IDs)."""
        return self

    # -- run lifetime ------------------------------------------------------------------------------
    def begin_run(self) -> None:
        with self._lock:
            self._run = {"call kinds": set(), "callers": set()}
        if self.recorder is not None:
            self.recorder.start()

    def end_run(self) -> None:
        """Ends the run: drops its caches, finishes the recording and, for an official-routing run
        whose halves came as separate calls, says so (once per run, whatever the threads)."""
        with self._lock:
            run, self._run = self._run, None
        split = run is not None and {(COND,), (UNCOND,)} <= run["call kinds"]
        if split and self.options.mode == "official":
            several = len(run["callers"]) > 1
            logger.warning(SPLIT_WARNING.format(why=WHY_DEVICES if several else WHY_MEMORY,
                                                fix="" if several else FIX_MEMORY))
        if self.recorder is not None:
            self.recorder.finish()

    def _cached(self, key, make):
        """The run's value for ``key``, made once per run (by the first caller; a concurrent caller
        of the same key waits for it, callers of other keys do not); outside a run made per call."""
        with self._lock:
            run = self._run
            if run is None:
                making = None
            elif key in run:
                return run[key]
            else:
                making = run.setdefault(("making", key), threading.Lock())
        if making is None:
            return make()
        with making:
            with self._lock:
                if key in run:
                    return run[key]
            value = make()
            with self._lock:
                run[key] = value
            return value

    def _note_call(self, chunks: Sequence[int], device: torch.device) -> None:
        """Which halves each call held and from where (thread, device): a split run is named at end_run."""
        with self._lock:
            if self._run is not None:
                self._run["call kinds"].add(tuple(sorted(set(chunks))))
                self._run["callers"].add((threading.get_ident(), str(device)))

    # -- per call ----------------------------------------------------------------------------------
    def step_inputs(self, transformer, latent_shape: Sequence[int], device: torch.device, dtype: torch.dtype,
                    position: tuple[int, int], chunks: Sequence[int],
                    window: Optional[tuple[Sequence[int], int]] = None):
        """(IDState, StepRouting, row order or None) for one call on latents (B, F, C, H, W).

        ``window``: (the video's latent frames this call holds, the video's latent frame count) when
        the host samples the video in windows (ComfyUI's context windows): the routing plan is the
        whole video's, its masks taken at the window's frames; None: the call holds the whole video."""
        config = transformer.config
        batch, frames, _, height, width = latent_shape
        rows, cols = height // config.patch_size, width // config.patch_size
        video_frames = frames if window is None else int(window[1])
        grid = (video_frames, rows, cols)
        ids = self._cached(("ids", device, dtype), lambda: transformer.prepare_ids(self.tokens, device, dtype))
        plan = self._cached(("plan", grid, device), lambda: RoutingPlan(
            self.options, self.num_ids, grid, config.local_face_scale, device))
        chunks = list(chunks)
        self._note_call(chunks, device)
        order = official_order(chunks, batch) if self.options.mode == "official" else None
        if order is not None:
            first = chunks.index(UNCOND)
            chunks = [chunks[first]] + chunks[:first] + chunks[first + 1:]
        window_frames = None if window is None else [int(f) for f in window[0]]
        routing: StepRouting = plan.step(*position, frames=window_frames)
        if self.recorder is not None:
            self.recorder.at_step(position[0], grid)
            row, priority = _record_row(self.options.mode, chunks, batch)
            routing = dataclasses.replace(routing, recorder=_CallRecorder(self.recorder, row, priority, window_frames))
        return ids, routing, order
