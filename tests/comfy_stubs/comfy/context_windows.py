"""Stand-in for ``comfy.context_windows`` (ComfyUI 0.33.0): sampling a long latent in windows along
one axis (*Context Windows (Manual)*), as far as a single-modality video model meets it.

Same names and signatures as 0.33.0, same behaviour where the pack meets it:

- ``IndexListContextHandler.execute``: the windows of the step (``context_schedule``), each run
  through ``calc_cond_batch`` on the window's latent, timestep and conds, the outputs fused with the
  ``fuse_method``'s weights (``relative``: running biased average) and divided by the counts;
- ``evaluate_context_windows``: ``causal_window_fix`` (an anchor frame, the one before the window,
  put first in every window but the one starting at 0, stripped from the output);
  ``latent_retain_index_list``; ``model_options["transformer_options"]["context_window"]`` set to
  the window before the call;
- ``get_resized_cond``: per ``model_conds`` entry the ``RESIZE_COND_ITEM`` callbacks, then the model's
  ``resize_cond_for_context_window`` hook, then the default (a tensor or a cond object as long as
  the latent along ``dim`` is cut like the video, with ``cond_retain_index_list``);
- schedules ``standard_static`` and ``batched``; fuse methods ``flat``, ``pyramid``, ``relative``,
  ``overlap-linear``; the ``PREPARE_SAMPLING`` wrapper that budgets memory for one window.

Left out: multimodal latents and guide frames (``WindowingState``), the uniform/looped schedules,
FreeNoise, ``split_conds_to_windows``, ControlNets.
"""

from __future__ import annotations

import collections
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import torch

import comfy.model_management
import comfy.patcher_extension


class ContextWindowABC(ABC):
    @abstractmethod
    def get_tensor(self, full: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("Not implemented.")

    @abstractmethod
    def add_window(self, full: torch.Tensor, to_add: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("Not implemented.")


class ContextHandlerABC(ABC):
    @abstractmethod
    def should_use_context(self, model, conds, x_in, timestep, model_options) -> bool:
        raise NotImplementedError("Not implemented.")

    @abstractmethod
    def get_resized_cond(self, cond_in, x_in, window, device=None) -> list:
        raise NotImplementedError("Not implemented.")

    @abstractmethod
    def execute(self, calc_cond_batch, model, conds, x_in, timestep, model_options):
        raise NotImplementedError("Not implemented.")


class IndexListContextWindow(ContextWindowABC):
    def __init__(self, index_list: list[int], dim: int = 0, total_frames: int = 0, modality_windows: dict = None,
                 context_overlap: int = 0):
        self.index_list = index_list
        self.context_length = len(index_list)
        self.context_overlap = context_overlap
        self.dim = dim
        self.total_frames = total_frames
        self.center_ratio = (min(index_list) + max(index_list)) / (2 * total_frames)
        self.modality_windows = modality_windows

    def get_tensor(self, full: torch.Tensor, device=None, dim=None, retain_index_list=[]) -> torch.Tensor:
        if dim is None:
            dim = self.dim
        if dim == 0 and full.shape[dim] == 1:
            return full
        indices = self.index_list
        anchor_idx = getattr(self, "causal_anchor_index", None)
        if anchor_idx is not None and anchor_idx >= 0:
            indices = [anchor_idx] + list(indices)
        window = full[tuple([slice(None)] * dim + [indices])]
        if retain_index_list:
            idx = tuple([slice(None)] * dim + [retain_index_list])
            window[idx] = full[idx]
        return window.to(device)

    def add_window(self, full: torch.Tensor, to_add: torch.Tensor, dim=None) -> torch.Tensor:
        if dim is None:
            dim = self.dim
        full[tuple([slice(None)] * dim + [self.index_list])] += to_add
        return full


class IndexListCallbacks:
    EVALUATE_CONTEXT_WINDOWS = "evaluate_context_windows"
    COMBINE_CONTEXT_WINDOW_RESULTS = "combine_context_window_results"
    EXECUTE_START = "execute_start"
    EXECUTE_CLEANUP = "execute_cleanup"
    RESIZE_COND_ITEM = "resize_cond_item"


@dataclass
class ContextSchedule:
    name: str
    func: Callable


@dataclass
class ContextFuseMethod:
    name: str
    func: Callable


ContextResults = collections.namedtuple("ContextResults", ["window_idx", "sub_conds_out", "sub_conds", "window"])


class IndexListContextHandler(ContextHandlerABC):
    def __init__(self, context_schedule: ContextSchedule, fuse_method: ContextFuseMethod, context_length: int = 1,
                 context_overlap: int = 0, context_stride: int = 1, closed_loop: bool = False, dim: int = 0,
                 freenoise: bool = False, cond_retain_index_list: list[int] = [], split_conds_to_windows: bool = False,
                 latent_retain_index_list: list[int] = [], causal_window_fix: bool = True):
        self.context_schedule = context_schedule
        self.fuse_method = fuse_method
        self.context_length = context_length
        self.context_overlap = context_overlap
        self.context_stride = context_stride
        self.closed_loop = closed_loop
        self.dim = dim
        self._step = 0
        self.freenoise = freenoise
        self.cond_retain_index_list = _indices(cond_retain_index_list)
        self.split_conds_to_windows = split_conds_to_windows
        self.latent_retain_index_list = _indices(latent_retain_index_list)
        self.causal_window_fix = causal_window_fix
        self.callbacks = {}
        self._model = None

    def should_use_context(self, model, conds, x_in, timestep, model_options) -> bool:
        return x_in.size(self.dim) > self.context_length

    def get_resized_cond(self, cond_in, x_in, window, device=None) -> list:
        if cond_in is None:
            return None
        resized = []
        for actual_cond in cond_in:
            new = actual_cond.copy()
            for key, item in actual_cond.items():
                if isinstance(item, torch.Tensor):
                    new[key] = (window.get_tensor(item) if self.dim < item.ndim and item.size(self.dim)
                                == x_in.size(self.dim) else item).to(device)
                elif isinstance(item, dict):
                    new[key] = {k: self._resize_item(k, v, window, x_in, device, item) for k, v in item.items()}
            resized.append(new)
        return resized

    def _resize_item(self, cond_key, cond_value, window, x_in, device, cond_item):
        for callback in comfy.patcher_extension.get_all_callbacks(IndexListCallbacks.RESIZE_COND_ITEM, self.callbacks):
            result = callback(cond_key, cond_value, window, x_in, device, cond_item)
            if result is not None:
                return result
        if self._model is not None:
            result = self._model.resize_cond_for_context_window(cond_key, cond_value, window, x_in, device,
                                                                retain_index_list=self.cond_retain_index_list)
            if result is not None:
                return result
        tensor = cond_value if isinstance(cond_value, torch.Tensor) else getattr(cond_value, "cond", None)
        if not isinstance(tensor, torch.Tensor) or not (self.dim < tensor.ndim and tensor.size(self.dim)
                                                        == x_in.size(self.dim)):
            return cond_value
        if isinstance(cond_value, torch.Tensor):
            return window.get_tensor(cond_value, device)
        return cond_value._copy_with(window.get_tensor(tensor, device, retain_index_list=self.cond_retain_index_list))

    def set_step(self, timestep: torch.Tensor, model_options: dict):
        sample_sigmas = model_options["transformer_options"]["sample_sigmas"]
        matches = torch.nonzero(torch.isclose(sample_sigmas, timestep[0].to(sample_sigmas.dtype), rtol=0.0001))
        if torch.numel(matches) == 0:
            return  # substep from multi-step sampler: keep self._step from the last full step
        self._step = int(matches[0].item())

    def get_context_windows(self, model, x_in: torch.Tensor, model_options: dict) -> list[IndexListContextWindow]:
        full_length = x_in.size(self.dim)
        windows = self.context_schedule.func(full_length, self, model_options)
        return [IndexListContextWindow(w, dim=self.dim, total_frames=full_length, context_overlap=self.context_overlap)
                for w in windows]

    def execute(self, calc_cond_batch, model, conds, x_in, timestep, model_options):
        self._model = model
        self.set_step(timestep, model_options)
        windows = list(enumerate(self.get_context_windows(model, x_in, model_options)))
        accum = [torch.zeros_like(x_in) for _ in conds]
        fill = torch.ones if self.fuse_method.name == ContextFuseMethods.RELATIVE else torch.zeros
        counts = [fill(get_shape_for_dim(x_in, self.dim), device=x_in.device) for _ in conds]
        biases = [[0.0] * x_in.shape[self.dim] for _ in conds]
        for callback in comfy.patcher_extension.get_all_callbacks(IndexListCallbacks.EXECUTE_START, self.callbacks):
            callback(self, model, x_in, conds, timestep, model_options)
        try:
            for enum_window in windows:
                for result in self.evaluate_context_windows(calc_cond_batch, model, x_in, conds, timestep,
                                                            [enum_window], model_options, total_windows=len(windows)):
                    self.combine_context_window_results(x_in, result.sub_conds_out, result.sub_conds, result.window,
                                                        result.window_idx, len(windows), timestep, accum, counts,
                                                        biases)
            if self.fuse_method.name != ContextFuseMethods.RELATIVE:
                for i in range(len(accum)):
                    accum[i] /= counts[i]
            return accum
        finally:
            for callback in comfy.patcher_extension.get_all_callbacks(IndexListCallbacks.EXECUTE_CLEANUP,
                                                                      self.callbacks):
                callback(self, model, x_in, conds, timestep, model_options)

    def evaluate_context_windows(self, calc_cond_batch, model, x_in, conds, timestep, enumerated_context_windows,
                                 model_options, window_state=None, total_windows: int = None, device=None,
                                 first_device=None):
        results = []
        for window_idx, window in enumerated_context_windows:
            comfy.model_management.throw_exception_if_processing_interrupted()
            anchor_applied = False
            if self.causal_window_fix:
                anchor_idx = window.index_list[0] - 1
                if 0 <= anchor_idx < x_in.size(self.dim):
                    window.causal_anchor_index = anchor_idx
                    anchor_applied = True
            sub_x = window.get_tensor(x_in, device, retain_index_list=self.latent_retain_index_list)
            for callback in comfy.patcher_extension.get_all_callbacks(IndexListCallbacks.EVALUATE_CONTEXT_WINDOWS,
                                                                      self.callbacks):
                callback(self, model, x_in, conds, timestep, model_options, window_idx, window, model_options, device,
                         first_device)
            model_options["transformer_options"]["context_window"] = window
            sub_timestep = window.get_tensor(timestep, dim=0)
            sub_conds = [self.get_resized_cond(cond, x_in, window) for cond in conds]
            sub_conds_out = calc_cond_batch(model, sub_conds, sub_x, sub_timestep, model_options)
            if anchor_applied:
                sub_conds_out = [t.narrow(self.dim, 1, t.shape[self.dim] - 1) for t in sub_conds_out]
            results.append(ContextResults(window_idx, sub_conds_out, sub_conds, window))
        return results

    def combine_context_window_results(self, x_in, sub_conds_out, sub_conds, window, window_idx, total_windows,
                                       timestep, conds_final, counts_final, biases_final):
        if self.fuse_method.name == ContextFuseMethods.RELATIVE:
            first, last = window.index_list[0], window.index_list[-1]
            for pos, idx in enumerate(window.index_list):
                bias = max(1e-2, 1 - abs(idx - (first + last) / 2) / ((last - first + 1e-2) / 2))
                for i in range(len(sub_conds_out)):
                    total = biases_final[i][idx]
                    at_idx = tuple([slice(None)] * self.dim + [idx])
                    at_pos = tuple([slice(None)] * self.dim + [pos])
                    conds_final[i][at_idx] = (conds_final[i][at_idx] * (total / (total + bias))
                                              + sub_conds_out[i][at_pos] * (bias / (total + bias)))
                    biases_final[i][idx] = total + bias
            return
        weights = get_context_weights(window.context_length, x_in.shape[self.dim], window.index_list, self,
                                      sigma=timestep, context_overlap=window.context_overlap)
        weights_tensor = match_weights_to_dim(weights, x_in, self.dim, device=x_in.device)
        for i in range(len(sub_conds_out)):
            window.add_window(conds_final[i], sub_conds_out[i] * weights_tensor)
            window.add_window(counts_final[i], weights_tensor)


def _indices(value) -> list[int]:
    if isinstance(value, str):
        return [int(x.strip()) for x in value.split(",")] if value else []
    return list(value or [])


def _prepare_sampling_wrapper(executor, model, noise_shape, conds, *args, **kwargs):
    handler = kwargs.get("model_options", {}).get("context_handler", None)
    if handler is not None:
        noise_shape = list(noise_shape)
        if handler.dim < len(noise_shape) and noise_shape[handler.dim] > handler.context_length:
            noise_shape[handler.dim] = handler.context_length
    return executor(model, noise_shape, conds, *args, **kwargs)


def create_prepare_sampling_wrapper(model):
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, "ContextWindows_prepare_sampling",
                               _prepare_sampling_wrapper)


def match_weights_to_dim(weights, x_in: torch.Tensor, dim: int, device=None) -> torch.Tensor:
    weights_tensor = torch.Tensor(weights).to(device=device)
    for _ in range(dim):
        weights_tensor = weights_tensor.unsqueeze(0)
    for _ in range(len(x_in.shape) - dim - 1):
        weights_tensor = weights_tensor.unsqueeze(-1)
    return weights_tensor


def get_shape_for_dim(x_in: torch.Tensor, dim: int) -> list[int]:
    return [1] * dim + [x_in.shape[dim]] + [1] * (len(x_in.shape) - dim - 1)


class ContextSchedules:
    UNIFORM_LOOPED = "looped_uniform"
    UNIFORM_STANDARD = "standard_uniform"
    STATIC_STANDARD = "standard_static"
    BATCHED = "batched"


def create_windows_static_standard(num_frames: int, handler, model_options: dict):
    if num_frames <= handler.context_length:
        return [list(range(num_frames))]
    windows = []
    delta = handler.context_length - handler.context_overlap
    for start_idx in range(0, num_frames, delta):
        ending = start_idx + handler.context_length
        if ending >= num_frames:
            final_start_idx = start_idx - (ending - num_frames)
            windows.append(list(range(final_start_idx, final_start_idx + handler.context_length)))
            break
        windows.append(list(range(start_idx, start_idx + handler.context_length)))
    return windows


def create_windows_batched(num_frames: int, handler, model_options: dict):
    if num_frames <= handler.context_length:
        return [list(range(num_frames))]
    return [list(range(start, min(start + handler.context_length, num_frames)))
            for start in range(0, num_frames, handler.context_length)]


CONTEXT_MAPPING = {
    ContextSchedules.STATIC_STANDARD: create_windows_static_standard,
    ContextSchedules.BATCHED: create_windows_batched,
}


def _matching(mapping: dict, name: str, what: str):
    if name not in mapping:
        raise ValueError(f"Unknown {what} '{name}'.")
    return mapping[name]


def get_matching_context_schedule(context_schedule: str) -> ContextSchedule:
    return ContextSchedule(context_schedule, _matching(CONTEXT_MAPPING, context_schedule, "context_schedule"))


def get_context_weights(length, full_length, idxs, handler, sigma=None, context_overlap=None):
    context_overlap = handler.context_overlap if context_overlap is None else context_overlap
    return handler.fuse_method.func(length, sigma=sigma, handler=handler, full_length=full_length, idxs=idxs,
                                    context_overlap=context_overlap)


def create_weights_flat(length: int, **kwargs) -> list[float]:
    return [1.0] * length


def create_weights_pyramid(length: int, **kwargs) -> list[float]:
    if length % 2 == 0:
        max_weight = length // 2
        return list(range(1, max_weight + 1, 1)) + list(range(max_weight, 0, -1))
    max_weight = (length + 1) // 2
    return list(range(1, max_weight, 1)) + [max_weight] + list(range(max_weight - 1, 0, -1))


def create_weights_overlap_linear(length: int, full_length: int, idxs: list[int], context_overlap: int, **kwargs):
    weights_torch = torch.ones((length))
    if min(idxs) > 0:
        weights_torch[:context_overlap] = torch.linspace(1e-37, 1, context_overlap)
    if max(idxs) < full_length - 1:
        weights_torch[-context_overlap:] = torch.linspace(1, 1e-37, context_overlap)
    return weights_torch


class ContextFuseMethods:
    FLAT = "flat"
    PYRAMID = "pyramid"
    RELATIVE = "relative"
    OVERLAP_LINEAR = "overlap-linear"

    LIST = [PYRAMID, FLAT, OVERLAP_LINEAR]
    LIST_STATIC = [PYRAMID, RELATIVE, FLAT, OVERLAP_LINEAR]


FUSE_MAPPING = {
    ContextFuseMethods.FLAT: create_weights_flat,
    ContextFuseMethods.PYRAMID: create_weights_pyramid,
    ContextFuseMethods.RELATIVE: create_weights_pyramid,
    ContextFuseMethods.OVERLAP_LINEAR: create_weights_overlap_linear,
}


def get_matching_fuse_method(fuse_method: str) -> ContextFuseMethod:
    return ContextFuseMethod(fuse_method, _matching(FUSE_MAPPING, fuse_method, "fuse_method"))
